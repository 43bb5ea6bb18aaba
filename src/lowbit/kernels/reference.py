"""Reference GEMMs: exact, slow, obviously right. Every registry key ends with one.

Integer operands (``reference``). Both operands are split into K-blocks of
``gb = gcd(ga, gw)`` elements, ``ga``/``gw`` being the K extent that shares one scale
(K for per-tensor/per-row/per-channel, ``g`` for groups). Then, exactly::

    a_c = qa - za,   w_c = qw - zw                         (integer, zero points removed)
    acc[m, n, b] = sum_{k in block b} a_c[m, k] * w_c[n, k]
                   int32 while gb * max|a_c| * max|w_c| <= 2^31 - 1, else int64

and in fp32, in this order (the order of the native A8W4 kernel, so they agree bit for
bit)::

    per-row activations (one scale per row):  t = 0; t = t + float(acc_b) * sw[n, b] for
                                              b = 0, 1, ...;  y = t * sa[m]
    activations grouped along K too:          y = sum_b (float(acc_b) * sw[n, b]) * sa[m, b]
    then y = y + bias.

Example (int8 sym, K=128, per channel): the bound is 128 * 127 * 127 = 2,064,512, far
below 2^31 - 1; int8 with asym activations (|a_c| <= 255) stays in int32 up to
K = 33,025; a per-channel uint8 x uint8 asym problem with K > 33,025 accumulates in int64.

Float operands (``reference``): operands upcast to fp32 (bf16 and fp16 products are
exact in fp32), multiplied and accumulated in fp32 (torch's fp32 GEMM), bias added in fp32.

Emulated operands (``emulated``): fp8/fp6/fp4 elements, MX, NVFP4 and anything whose scales
vary along K element by element are decoded exactly to fp32 (``q.dequantize()``) and go the
float way.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..quant import QTensor
from .problem import Problem

__all__ = ["INT32_MAX", "accumulators", "emulated", "float_reference", "integer_reference"]

INT32_MAX = 2**31 - 1
_F64_EXACT = 2**53


def _rows(q: QTensor) -> tuple[Tensor, Tensor, int]:
    """(centered int32 values [R, K], fp32 scales [R, K/g'], K extent g' of one scale)."""
    s = q.scheme
    ps = tuple(q.padded_shape)
    block = s.granularity.block_shape(ps)
    vals = q.int_values().to(torch.int32)
    scale, zp = q.scale_values().float(), q.zero_point
    for i in range(len(ps) - 1):  # expand scales along the leading axes only
        scale = scale.repeat_interleave(block[i], dim=i)
        zp = zp.repeat_interleave(block[i], dim=i) if zp is not None else None
    g = block[-1]
    if zp is not None:
        vals = vals - zp.to(torch.int32).repeat_interleave(g, dim=-1)
    k = q.shape[-1]
    vals = vals[..., :k]
    return vals.reshape(-1, k), scale.reshape(-1, scale.shape[-1]), min(g, k)


def _max_abs(q: QTensor) -> int:
    fmt = q.scheme.format
    return int(fmt.max - fmt.min) if not q.scheme.symmetric else int(max(-fmt.min, fmt.max))


def accumulators(a: QTensor, w: QTensor) -> tuple[Tensor, int, Tensor, Tensor]:
    """Exact integer block sums of ``a [.., K] @ w[N, K].T``.

    Returns:
        (acc [M, N, B] int32 (int64 past the int32 bound), block size gb,
         activation scales [M, 1] when one per row, else per block [M, B] (fp32),
         weight scales per block [N, B] fp32).
    """
    ac, sa, ga = _rows(a)
    wc, sw, gw = _rows(w)
    k = ac.shape[1]
    gb = math.gcd(ga, gw)
    nb = -(-k // gb)
    bound = gb * _max_abs(a) * _max_abs(w)
    if nb * gb != k:
        ac = torch.nn.functional.pad(ac, (0, nb * gb - k))
        wc = torch.nn.functional.pad(wc, (0, nb * gb - k))
    m, n = ac.shape[0], wc.shape[0]
    a3 = ac.reshape(m, nb, gb).transpose(0, 1)
    w3 = wc.reshape(n, nb, gb).permute(1, 2, 0)
    if bound < _F64_EXACT:  # float64 sums of integers below 2^53 are exact
        acc = torch.bmm(a3.double(), w3.double()).to(torch.int64)
    else:
        acc = torch.bmm(a3.long(), w3.long())
    acc = acc.permute(1, 2, 0)
    if bound <= INT32_MAX:
        acc = acc.to(torch.int32)
    blocks = torch.arange(nb) * gb
    sa = sa[:, :1] if ga >= k else sa[:, blocks // ga]
    return acc.contiguous(), gb, sa, sw[:, blocks // gw]


def integer_reference(p: Problem) -> Tensor:
    """fp32 [M, N] for integer activations and weights (see the module docstring)."""
    acc, _, sa, sw = accumulators(p.xq, p.w.weight)
    if sa.shape[1] == 1:
        t = torch.zeros(acc.shape[0], acc.shape[1], dtype=torch.float32)
        for b in range(acc.shape[2]):
            t = t + acc[:, :, b].float() * sw[:, b]
        y = t * sa[:, :1]
    else:
        y = sum((acc[:, :, b].float() * sw[:, b]) * sa[:, b:b + 1] for b in range(acc.shape[2]))
    return _add_bias(y, p.bias)


def float_reference(p: Problem) -> Tensor:
    """fp32 [M, N]: fp32 operands (weights dequantized exactly), fp32 GEMM, fp32 bias."""
    w = p.w.weight
    wf = w.dequantize() if isinstance(w, QTensor) else w.float()
    x = p.x.dequantize().reshape(p.m, p.k) if isinstance(p.x, QTensor) else p.x.float()
    return _add_bias(x @ wf.T, p.bias)


def emulated(p: Problem) -> Tensor:
    """fp32 [M, N]: both operands decoded to fp32 (activations quantized first if asked)."""
    if p.act is not None:
        x = p.xq.dequantize()
    elif isinstance(p.x, QTensor):
        x = p.x.dequantize().reshape(p.m, p.k)
    else:
        x = p.x.float()
    w = p.w.weight
    wf = w.dequantize() if isinstance(w, QTensor) else w.float()
    return _add_bias(x @ wf.T, p.bias)


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    return y if bias is None else y + bias.float()
