"""LSQ: fake quantization with a learnable step size (Esser et al., ICLR 2020).

Forward, for a plain symmetric scheme with step ``s`` (one per block of the scheme's
granularity): exactly ``lb.fake_quantize(x, scheme, QParams(s))``, i.e. quantize then
dequantize with the lowbit arithmetic, so a converted model sees the same codes.

Backward, with ``r = x / s`` and ``v`` the grid value ``x_hat / s`` (an integer for int
formats, an fp8/fp4 value for float formats, +-1 for binary):

* ``dL/dx = dL/dx_hat`` where ``qmin * s <= x <= qmax * s`` (inside the clipping range,
  the straight-through estimator) and 0 outside;
* ``dL/ds = g * sum over the block of dL/dx_hat * (v - r if inside else v)`` with the
  gradient scale ``g = 1 / sqrt(N * Qp)``, ``N`` the number of elements sharing the step
  in this call and ``Qp = qmax`` (int4: 7, int8: 127, ternary and binary: 1).

Worked example (int4, s = 0.5, g = 1, upstream gradient 1): x = [0.3, -1.2, 5.0] gives
r = [0.6, -2.4, 10], v = [1, -2, 7] (5.0 is clipped to 7 * 0.5 = 3.5), so
dL/dx = [1, 1, 0] and dL/ds = (1 - 0.6) + (-2 + 2.4) + 7 = 7.8.

Initialisation (from the first batch): ``s = 2 * mean|x| / sqrt(Qp)`` per block.
"""

from __future__ import annotations

import math

import torch

from ..quant import QParams, Scheme, dequantize, expected_scale_shape, quantize
from ..quant.granularity import blocked_view

__all__ = ["check_lsq_scheme", "lsq_fake_quantize", "lsq_grad_scale", "lsq_init"]

_MIN_STEP = 1e-8  # steps are clamped here in the forward pass (a step must stay positive)


def check_lsq_scheme(scheme: Scheme) -> Scheme:
    """``scheme`` if a step can be learned for it, else ValueError saying why."""
    if scheme.is_block_scaled or scheme.is_dynamic:
        raise ValueError(f"{scheme}: its scales are computed from each input (block-scaled or "
                         "per-token), so there is no step to learn; use a plain scheme")
    if not scheme.symmetric:
        raise ValueError(f"{scheme}: LSQ learns a symmetric step; use a symmetric scheme or "
                         "ranges='ema'")
    if scheme.pad:
        raise ValueError(f"{scheme}: padded groups are not supported with LSQ")
    return scheme


def _block_of(x: torch.Tensor, scheme: Scheme):
    block = scheme.granularity.block_shape(tuple(x.shape))
    return block, tuple(range(1, 2 * x.dim(), 2))


def _expand(step: torch.Tensor) -> torch.Tensor:
    """[n0, n1, ...] -> [n0, 1, n1, 1, ...], broadcasting over ``blocked_view``."""
    return step.reshape([d for n in step.shape for d in (n, 1)]) if step.dim() else step


def lsq_grad_scale(x: torch.Tensor, scheme: Scheme) -> float:
    """``1 / sqrt(N * Qp)``: N elements share one step (one block), Qp = the format's max."""
    block = scheme.granularity.block_shape(tuple(x.shape))
    return 1.0 / math.sqrt(math.prod(block) * float(scheme.format.max))


@torch.no_grad()
def lsq_init(x: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The LSQ initial step ``2 * mean|x| / sqrt(Qp)`` per block, shaped like the scale.

    >>> lsq_init(torch.tensor([[1.0, -3.0]]), Scheme.parse("int4"))   # 2 * 2 / sqrt(7)
    tensor([[1.5119]])
    """
    scheme = check_lsq_scheme(Scheme.parse(scheme))
    xf = x.detach().float()
    block, dims = _block_of(xf, scheme)
    mean = blocked_view(xf, block).abs().mean(dims)
    step = 2.0 * mean / math.sqrt(float(scheme.format.max))
    step = torch.where(step > 0, step, torch.ones_like(step))  # an all-zero block: step 1
    return step.reshape(expected_scale_shape(xf.shape, scheme))


class _LSQ(torch.autograd.Function):
    """The one autograd Function of LSQ: quantize/dequantize forward, STE + step gradient."""

    @staticmethod
    def forward(ctx, x, step, scheme, grad_scale):
        s = step.detach().float().clamp(min=_MIN_STEP)
        q = quantize(x, scheme, QParams(s))
        y = dequantize(q)
        ctx.scheme, ctx.grad_scale = scheme, grad_scale
        ctx.save_for_backward(x.detach().float(), s, y)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, s, y = ctx.saved_tensors
        scheme, fmt = ctx.scheme, ctx.scheme.format
        block, dims = _block_of(x, scheme)
        xb, yb, gb = (blocked_view(t, block) for t in (x, y, grad.float()))
        sb = _expand(s)
        inside = (xb >= fmt.min * sb) & (xb <= fmt.max * sb)
        grad_x = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_x = (gb * inside).reshape(x.shape).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            v = yb / sb
            dyds = torch.where(inside, v - xb / sb, v)
            grad_s = (gb * dyds).sum(dims).reshape(s.shape) * ctx.grad_scale
        return grad_x, grad_s, None, None


def lsq_fake_quantize(x: torch.Tensor, step: torch.Tensor, scheme: Scheme | str,
                      grad_scale: float | None = None) -> torch.Tensor:
    """Fake-quantize ``x`` with the learnable ``step`` (shaped like the scheme's scale).

    Args:
        x: float tensor.
        step: positive float32 tensor of ``expected_scale_shape(x.shape, scheme)`` (a
            ``torch.nn.Parameter`` to learn it); values below 1e-8 act as 1e-8.
        scheme: a plain symmetric scheme (``int4:channel``, ``int8``, ``ternary:channel``,
            ``fp8_e4m3fn``...).
        grad_scale: multiplies the step's gradient; default ``lsq_grad_scale(x, scheme)``.
    Returns:
        The fake-quantized tensor, x's dtype and shape.
    """
    scheme = check_lsq_scheme(Scheme.parse(scheme))
    want = expected_scale_shape(x.shape, scheme)
    if tuple(step.shape) != want:
        raise ValueError(f"step must have shape {want} for {scheme} on x of shape "
                         f"{tuple(x.shape)}; got {tuple(step.shape)}")
    g = lsq_grad_scale(x, scheme) if grad_scale is None else float(grad_scale)
    return _LSQ.apply(x, step, scheme, g)
