"""Pure-torch reference of the A8W4 linear: exact, slow, obviously right.

It works from the canonical weight (not the kernel's repacked layout) and performs the
float operations in the same order as the native kernel, so the two agree bit for bit:

    s_x[m]  = amax|x[m, :]| / 127, replaced by 1 when it is 0
    qx      = clamp(round_half_even(x / s_x), -127, 127)            int8
    acc_g   = sum_{k in group g} qx[m, k] * (w[n, k] - z[n, g])     int32, exact
    t       = 0;  t = t + float(acc_g) * s_w[n, g]  for g = 0..G-1  fp32, in order
    y       = t * s_x[m]  (then + bias[n])                          fp32

Example: x = [0.5, -1.0], amax 1.0, s_x = 1/127 = 0.007874016; 0.5 / s_x = 63.5 -> 64
(tie to even), -1.0 / s_x = -127.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["quantize_activations", "reference_a8w4_accumulators", "reference_a8w4_linear"]


def quantize_activations(x: Tensor) -> tuple[Tensor, Tensor]:
    """Dynamic symmetric int8 per-row quantization of fp32 x [M, K].

    Returns:
        (qx int8 [M, K], s_x fp32 [M]).
    """
    amax = x.abs().amax(dim=1)
    s = amax / 127
    s = torch.where(s == 0, torch.ones_like(s), s)
    q = torch.round(x / s[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, s


def _signed_codes(weight: Tensor, zeros: Tensor | None, k: int, g: int) -> Tensor:
    """w - z as int32 [N, K] from canonical packed uint8 [N, K/2] (or codes [N, K])."""
    if weight.dtype == torch.uint8 and weight.shape[1] * 2 == k:
        w = weight.to(torch.int32)
        c = torch.stack((w & 0x0F, w >> 4), dim=-1).reshape(w.shape[0], k)
        if zeros is None:
            c = torch.where(c >= 8, c - 16, c)  # two's complement nibble
    else:
        c = weight.to(torch.int32)
    if zeros is not None:
        c = c - zeros.to(torch.int32).repeat_interleave(g, dim=1)
    return c


def _accumulators(qx: Tensor, wz: Tensor, g: int) -> Tensor:
    """int32 [M, N, G]; float64 matmuls are exact here (|sums| < 2^53)."""
    m, k = qx.shape
    groups = k // g
    out = torch.empty(m, wz.shape[0], groups, dtype=torch.int32)
    qd, wd = qx.to(torch.float64), wz.to(torch.float64)
    for j in range(groups):
        sl = slice(j * g, (j + 1) * g)
        out[:, :, j] = (qd[:, sl] @ wd[:, sl].T).to(torch.int32)
    return out


def _check_x(x: Tensor, k: int) -> Tensor:
    if not isinstance(x, Tensor) or x.dtype != torch.float32:
        raise TypeError(f"x: expected a torch.float32 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x: last dimension must be in_features K={k}, got {list(x.shape)}")
    return x.reshape(-1, k)


def reference_a8w4_accumulators(x: Tensor, weight: Tensor, scales: Tensor,
                                zeros: Tensor | None = None, *, group_size: int) -> Tensor:
    """The exact int32 group sums acc[m, n, g] (see module docstring).

    Args:
        x: fp32 [..., K].  weight: canonical packed uint8 [N, K/2] or codes [N, K].
        scales: fp32 [N, G] (only its shape is used here).  zeros: None or [N, G].
        group_size: g.

    Returns:
        int32 [M, N, G] with M the product of x's leading dimensions.
    """
    k = scales.shape[1] * group_size
    qx, _ = quantize_activations(_check_x(x, k))
    return _accumulators(qx, _signed_codes(weight, zeros, k, group_size), group_size)


def reference_a8w4_linear(x: Tensor, weight: Tensor, scales: Tensor,
                          zeros: Tensor | None = None, *, group_size: int,
                          bias: Tensor | None = None) -> Tensor:
    """y = linear(x, W) with fused int8 activation quantization, in the kernel's float order.

    Args:
        x: fp32 [..., K].
        weight: canonical packed uint8 [N, K/2] (symmetric: two's-complement nibbles;
            asymmetric: unsigned) or integer codes [N, K].
        scales: fp32 [N, G].  zeros: None (symmetric) or integer [N, G].
        group_size: g (K itself for per channel).  bias: None or fp32 [N].

    Returns:
        fp32 [..., N].
    """
    k, n = scales.shape[1] * group_size, scales.shape[0]
    x2 = _check_x(x, k)
    qx, sx = quantize_activations(x2)
    acc = _accumulators(qx, _signed_codes(weight, zeros, k, group_size), group_size)
    t = torch.zeros(x2.shape[0], n, dtype=torch.float32)
    for j in range(acc.shape[2]):
        t = t + acc[:, :, j].to(torch.float32) * scales[:, j]
    y = t * sx[:, None]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], n)
