"""QAT modules: Linear and Conv2d that fake-quantize their weight and input.

Each is the float module (same parameters, same ``state_dict`` keys for weight and bias)
plus two optional ``FakeQuant`` children, ``weight_fq`` and ``act_fq``. They compute what
``lowbit.nn.QuantLinear`` / ``QuantConv2d`` compute, in float32:

* Linear: ``F.linear(act_fq(x), weight_fq(W), b)``.
* Conv2d: the weight is quantized in its GEMM form ``[out, in*kh*kw]`` (as ``QuantConv2d``
  stores it), so groups and MX blocks run along the reduction axis. A per-tensor
  activation scheme quantizes ``x`` element-wise before ``F.conv2d`` (the same codes the
  unfolded patches would get); a per-token or block-scaled one quantizes the unfolded
  patches ``[n, L, in*kh*kw]``, row by row, exactly as ``QuantConv2d`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..quant import PerTensor
from .fake_quant import FakeQuant

__all__ = ["QAT_MODULES", "QATConv2d", "QATLinear"]


def _copy_float(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Share ``src``'s parameters (the same Parameter objects: an optimizer keeps working)."""
    dst.weight = src.weight
    dst.bias = src.bias
    dst.train(src.training)


class QATLinear(torch.nn.Linear):
    """``nn.Linear`` with fake-quantized weight and input (either may be None)."""

    def __init__(self, in_features, out_features, bias=True, *, weight_fq=None, act_fq=None):
        super().__init__(in_features, out_features, bias)
        self.weight_fq: FakeQuant | None = weight_fq
        self.act_fq: FakeQuant | None = act_fq

    @classmethod
    def from_float(cls, mod: torch.nn.Linear, weight_fq=None, act_fq=None) -> QATLinear:
        new = cls(mod.in_features, mod.out_features, mod.bias is not None,
                  weight_fq=weight_fq, act_fq=act_fq)
        _copy_float(new, mod)
        return new

    def quantized_weight(self) -> torch.Tensor:
        """The weight as the forward pass uses it ([out, in], fake-quantized)."""
        w = self.weight
        return w if self.weight_fq is None else self.weight_fq(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fq is not None:
            x = self.act_fq(x)
        return F.linear(x, self.quantized_weight(), self.bias)

    def to_float(self) -> torch.nn.Linear:
        """A plain ``nn.Linear`` sharing this module's parameters (no fake quantization)."""
        mod = torch.nn.Linear(self.in_features, self.out_features, self.bias is not None)
        _copy_float(mod, self)
        return mod


class QATConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (groups=1, numeric zero padding) with fake-quantized weight and input."""

    def __init__(self, *args, weight_fq=None, act_fq=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("QATConv2d supports groups=1 and zero padding given as numbers "
                             "(what lowbit.nn.QuantConv2d runs); got groups="
                             f"{self.groups}, padding={self.padding!r}, "
                             f"padding_mode={self.padding_mode!r}")
        self.weight_fq: FakeQuant | None = weight_fq
        self.act_fq: FakeQuant | None = act_fq

    @classmethod
    def from_float(cls, mod: torch.nn.Conv2d, weight_fq=None, act_fq=None) -> QATConv2d:
        new = cls(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
                  mod.dilation, mod.groups, mod.bias is not None, mod.padding_mode,
                  weight_fq=weight_fq, act_fq=act_fq)
        _copy_float(new, mod)
        return new

    def gemm_weight(self) -> torch.Tensor:
        """The weight in GEMM form ``[out, in*kh*kw]``, fake-quantized."""
        w2 = self.weight.reshape(self.out_channels, -1)
        return w2 if self.weight_fq is None else self.weight_fq(w2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.gemm_weight()
        fq = self.act_fq
        if fq is None or fq.scheme.granularity == PerTensor():
            if fq is not None:
                x = fq(x)
            return F.conv2d(x, w.reshape(self.weight.shape), self.bias, self.stride,
                            self.padding, self.dilation)
        n, _, h, wd = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        y = F.linear(fq(cols.transpose(1, 2)), w, self.bias)  # [n, L, out]
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) \
            // self.stride[0] + 1
        ow = (wd + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) \
            // self.stride[1] + 1
        return y.transpose(1, 2).reshape(n, -1, oh, ow)

    def to_float(self) -> torch.nn.Conv2d:
        """A plain ``nn.Conv2d`` sharing this module's parameters (no fake quantization)."""
        mod = torch.nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size,
                              self.stride, self.padding, self.dilation, self.groups,
                              self.bias is not None, self.padding_mode)
        _copy_float(mod, self)
        return mod


# float type -> QAT type, most specific first
QAT_MODULES: dict[type, type] = {torch.nn.Linear: QATLinear, torch.nn.Conv2d: QATConv2d}
