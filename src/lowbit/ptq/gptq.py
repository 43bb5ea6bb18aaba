"""GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers", ICLR 2023): quantize a weight one input column at a time and
spread each column's rounding error over the columns not yet quantized, weighted by the
inverse Hessian of the layer's reconstruction loss, H = 2/n * sum x x^T.

This follows the published algorithm (and its reference implementation's conventions):
dead inputs (H_jj == 0) zeroed, dampening 1% of mean(diag H), the upper Cholesky factor of
H^-1, lazy batch updates in blocks of 128 columns, and group parameters chosen from the
partially updated weights when a group starts. Scales and zero points come from lowbit's
own qparams (min-max, or MSE-searched), so the result is an ordinary QTensor.
"""

from __future__ import annotations

import torch

from ..quant import PerChannel, PerGroup, QParams, Scheme, choose_qparams, dequantize, quantize

__all__ = ["Hessian", "gptq"]


class Hessian:
    """Streaming H = 2/n * sum over rows x of x x^T for a layer's inputs [..., K]."""

    def __init__(self):
        self.h: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if not torch.isfinite(x).all():
            raise ValueError("GPTQ: a calibration input holds NaN/Inf")
        n = x.shape[0]
        if self.h is None:
            self.h = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
        self.h *= self.count / (self.count + n)
        self.count += n
        self.h += (2.0 / self.count) * (x.T @ x)

    def value(self) -> torch.Tensor:
        if self.h is None:
            raise RuntimeError("Hessian: no inputs seen (count == 0)")
        return self.h.clone()


def gptq(weight: torch.Tensor, hessian: torch.Tensor, scheme: Scheme | str, *,
         block: int = 128, damp: float = 0.01, clip: str = "minmax"
         ) -> tuple[torch.Tensor, QParams]:
    """GPTQ for a weight [N, K] with a per-channel (``:channel``) or group-wise integer
    scheme; ``clip`` chooses each group's range: ``minmax`` or ``mse``.

    Returns ``(w_q, qparams)``: the quantized weight (float32, on the scheme's grid) and its
    qparams, so ``lb.quantize(w_q, scheme, qparams)`` gives exactly its codes.

    As in the reference implementation, a group's parameters are taken when its first
    column comes up, from the weights as updated by the previous blocks of ``block`` columns.
    """
    scheme = Scheme.parse(scheme)
    g = scheme.granularity
    if not (isinstance(g, PerGroup) and not scheme.is_block_scaled) and g != PerChannel(0):
        raise ValueError(f"GPTQ needs a per-channel (axis 0) or group-wise scheme; got {scheme}")
    if weight.dim() != 2:
        raise ValueError(f"GPTQ: weight must be 2-D [N, K]; got shape {tuple(weight.shape)}")
    w = weight.detach().double().clone()
    n, k = w.shape
    group = g.size if isinstance(g, PerGroup) else k
    if k % group:
        raise ValueError(f"GPTQ: K={k} is not a multiple of the group size {group}")
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"hessian must be [{k}, {k}] for a weight [{n}, {k}]; got "
                         f"{tuple(hessian.shape)}")
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(k, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    per_row = scheme.with_(granularity=PerChannel(0), pad=False)
    q = torch.zeros_like(w)
    params: list[QParams] = []
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1, err1 = w[:, i1:i2].clone(), torch.zeros(n, i2 - i1, dtype=w.dtype)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group == 0:
                params.append(_params(w[:, col:col + group].float(), per_row, clip))
            qcol = dequantize(quantize(w1[:, i:i + 1].float(), per_row, params[-1]))
            q[:, col] = qcol.double().flatten()
            e = (w1[:, i] - q[:, col]) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) @ h1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    scale = torch.cat([p.scale for p in params], 1)
    zp = None if params[0].zero_point is None else torch.cat([p.zero_point for p in params], 1)
    return q.float(), QParams(scale, zp)


def _params(w: torch.Tensor, per_row: Scheme, clip: str) -> QParams:
    if clip == "mse":
        from ..calib import mse_search

        return mse_search(w, per_row)
    return choose_qparams(w, per_row)
