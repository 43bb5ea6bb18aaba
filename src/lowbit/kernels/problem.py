"""What one GEMM call is: operands, their kinds, the activation scheme, the output.

``linear(x, w)`` and ``matmul(a, b)`` both become a :class:`Problem` over a weight in
nn.Linear layout ``[N, K]``, which the registry dispatches on ``problem.key``.

Operand kinds (the registry keys):

==========  =====================================================================
"float"     a float Tensor (fp32, fp16, bf16)
"int8"      a plain 8-bit integer QTensor (int8/uint8, fp32 scales, sym or asym)
"int4"      a plain 4-bit integer QTensor (weights only; int4/uint4)
"int"       any other plain integer QTensor (int2, int3, int5...; int4 activations)
"emulated"  anything decoded to fp32 first: fp8/fp6/fp4 elements, MX, NVFP4, binary,
            and integer QTensors whose scales vary along K element by element
==========  =====================================================================

An integer operand must keep one scale per row-block of K (PerTensor, PerToken,
PerChannel on a non-reduction axis, PerGroup along K): that is what lets the integer
codes be summed exactly before any scale is applied.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import IntFormat, Rounding
from ..quant import PerChannel, QParams, QTensor, Scheme, quantize

__all__ = ["PackedWeight", "Problem", "operand_kind", "parse_act", "prepare"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_NEAREST_EVEN = Rounding.NEAREST_EVEN


def _k_factorable(scheme: Scheme, ndim: int) -> bool:
    g = scheme.granularity
    if isinstance(g, PerChannel):
        return g.axis % max(ndim, 1) != ndim - 1
    return True  # PerTensor, PerToken, PerGroup (incl. PerBlock) keep scales per K-block


def scheme_kind(scheme: Scheme, ndim: int = 2, role: str = "weight") -> str:
    """The kind of an operand quantized with ``scheme`` (see the module table)."""
    fmt = scheme.format
    if scheme.is_block_scaled or not isinstance(fmt, IntFormat) or not _k_factorable(scheme, ndim):
        return "emulated"
    if fmt.bits == 8:
        return "int8"
    if fmt.bits == 4 and role != "act":
        return "int4"
    return "int"


def operand_kind(t, role: str = "weight") -> str:
    """"float", "int8", "int4", "int" or "emulated" for a Tensor or QTensor operand (``role``
    names it in errors; "x" and "act" mark activations, which have no "int4" kind)."""
    if isinstance(t, Tensor):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{role}: a float tensor (float32, float16, bfloat16) or a QTensor "
                            f"is required; got a {t.dtype} tensor")
        return "float"
    if isinstance(t, QTensor):
        return scheme_kind(t.scheme, len(t.shape), "act" if role in ("x", "a") else role)
    raise TypeError(f"{role}: expected a torch.Tensor or lowbit QTensor; got {type(t).__name__}")


def parse_act(act) -> tuple[Scheme | None, QParams | None]:
    """``act`` -> (scheme, qparams). Accepted forms:

    * ``None``: activations stay as they are (float, or the QTensor passed in).
    * a Scheme or string, e.g. ``"int8:token"``: quantized on the fly, parameters computed
      from each input (dynamic; ``"int8"`` alone is dynamic per-tensor).
    * ``(scheme, qparams)``: static parameters, e.g.
      ``("uint8:asym", QParams(torch.tensor(0.02), torch.tensor(128)))``.
    """
    if act is None:
        return None, None
    if isinstance(act, tuple):
        if len(act) != 2 or not isinstance(act[1], QParams):
            raise ValueError("act: a tuple must be (scheme, QParams); got "
                             f"{tuple(type(a).__name__ for a in act)}")
        scheme, qp = Scheme.parse(act[0]), act[1]
        if scheme.is_dynamic:
            raise ValueError(f"act: {scheme} is dynamic (per token); it takes no qparams")
        return scheme, qp
    if isinstance(act, (str, Scheme)):
        return Scheme.parse(act), None
    raise TypeError(f"act: expected None, a Scheme/str or (scheme, QParams); got "
                    f"{type(act).__name__}")


class PackedWeight:
    """A weight ``[N, K]`` prepared once for :func:`lowbit.kernels.linear`.

    Holds the weight (a float Tensor or QTensor), the activation scheme it is used with,
    SmoothQuant's per-input-channel ``input_scale`` s if any (the weight was multiplied by
    s; inputs are multiplied by ``x_mul`` = 1 / s, computed once in fp32, before anything
    else: the fast int8 paths fuse that into their activation quantization), and the
    backend-specific packed forms (oneDNN prepacked int8, the native A8W4 layout,
    torch's int4pack...), each built the first time its backend runs. A quantized module
    keeps one of these per Linear.

    Invalidation: the packed forms are dropped and rebuilt whenever one of the weight's
    tensors is replaced or modified in place (checked through its data pointer and torch's
    version counter on every call), so a stale packing is never used.
    """

    def __init__(self, weight, act=None, input_scale: Tensor | None = None):
        kind = operand_kind(weight, "w")
        if len(weight.shape) != 2:
            raise ValueError(f"w: the weight must be 2-D [N, K] (nn.Linear layout); got shape "
                             f"{tuple(weight.shape)}")
        self.weight = weight
        self.x_mul = None if input_scale is None else _reciprocal(input_scale, weight.shape[1])
        self.kind = kind
        self.act, self.act_qparams = parse_act(act)
        if self.act is not None and kind == "float":
            raise ValueError("act: activation quantization needs a quantized weight (QTensor); "
                             "w is a float tensor")
        self.act_kind = None if self.act is None else scheme_kind(self.act, 2, "act")
        self._forms: dict[str, object] = {}
        self._stamp = self._current_stamp()

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.weight.shape)

    def _parts(self):
        w = self.weight
        if isinstance(w, Tensor):
            return (w,)
        return tuple(t for t in (w.codes, w.scale, w.zero_point, w.micro_exponent,
                                 w.tensor_scale) if t is not None)

    def _current_stamp(self):
        return tuple((id(t), t.data_ptr(), t._version) for t in self._parts())

    def form(self, name: str, build):
        """The packed form for backend ``name``, built by ``build(weight)`` on first use."""
        stamp = self._current_stamp()
        if stamp != self._stamp:
            self._forms.clear()
            self._stamp = stamp
        if name not in self._forms:
            self._forms[name] = build(self.weight)
        return self._forms[name]

    def __repr__(self):
        w = self.weight
        what = str(w.scheme) if isinstance(w, QTensor) else str(w.dtype)
        return (f"PackedWeight(shape={tuple(self.shape)}, weight={what}, act="
                f"{self.act if self.act is None else str(self.act)}, forms={list(self._forms)})")


def _reciprocal(input_scale, k: int) -> Tensor:
    if not isinstance(input_scale, Tensor) or not input_scale.dtype.is_floating_point \
            or tuple(input_scale.shape) != (k,):
        raise ValueError(f"input_scale: expected a float tensor of shape [{k}] (one per input "
                         f"channel); got {getattr(input_scale, 'shape', type(input_scale))}")
    s = input_scale.detach().float().cpu()
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise ValueError("input_scale: every value must be finite and > 0")
    return (1.0 / s).contiguous()


def prepare(w, act=None, input_scale: Tensor | None = None) -> PackedWeight:
    """Prepare a weight ``[N, K]`` (Tensor or QTensor) and activation scheme for ``linear``;
    ``input_scale`` [K]: SmoothQuant's scale, inputs are multiplied by 1 / input_scale."""
    return PackedWeight(w, act, input_scale)


class Problem:
    """One ``y = x @ w.T (+ bias)`` call, with ``x`` flattened to 2-D ``[M, K]``.

    Attributes:
        x: float Tensor [M, K], or the activation QTensor as given (any leading shape).
        x_mul: None or fp32 [K]: x's columns are still to be multiplied by it (the
            weight's SmoothQuant 1 / s); :meth:`apply_x_mul` does it, fused paths do not.
        w: the PackedWeight [N, K].  act / act_qparams: the activation scheme, if any.
        bias: None or float [N].  out_dtype: torch dtype.  rounding: Rounding of the output.
        m, k, n: sizes.  lead: leading shape of the output.  key: (act kind, weight kind).
    """

    def __init__(self, x, w: PackedWeight, bias=None, act=None, out_dtype=None,
                 rounding="nearest_even"):
        self.w = w
        act_given = act is not None
        self.act, self.act_qparams = parse_act(act) if act_given else (w.act, w.act_qparams)
        x_kind = operand_kind(x, "x")
        if x_kind != "float" and self.act is not None:
            raise ValueError("act: x is already quantized; pass act=None")
        if self.act is not None and w.kind == "float":
            raise ValueError("act: activation quantization needs a quantized weight (QTensor)")
        n, k = w.shape
        if len(x.shape) < 1 or x.shape[-1] != k:
            raise ValueError(f"x: the last axis must be K={k} to match w of shape [N, K] = "
                             f"{[n, k]}; got x of shape {tuple(x.shape)}")
        self.lead = tuple(x.shape[:-1])
        self.m, self.k, self.n = int(torch.Size(self.lead).numel()), k, n
        # reshape costs ~1 us a call: skip it for the usual 2-D x (M = 1 calls take ~100 us)
        self.x = x.reshape(self.m, k) if isinstance(x, Tensor) and x.dim() != 2 else x
        self.x_mul = w.x_mul
        if self.x_mul is not None and x_kind != "float":
            raise ValueError("x: the weight was prepared with an input_scale (SmoothQuant); "
                             "pass float activations, not a QTensor")
        if self.act is None:
            act_kind = x_kind
        elif not act_given:
            act_kind = w.act_kind
        else:
            act_kind = scheme_kind(self.act, 2, "act")
        self.key = (act_kind, w.kind)
        if bias is not None:
            if not isinstance(bias, Tensor) or bias.dtype not in _FLOATS:
                raise TypeError("bias: expected a float tensor [N]")
            if tuple(bias.shape) != (n,):
                raise ValueError(f"bias: expected shape [{n}]; got {tuple(bias.shape)}")
        self.bias = bias
        if out_dtype is None:
            out_dtype = x.dtype if isinstance(x, Tensor) else torch.float32
            if isinstance(w.weight, Tensor) and isinstance(x, Tensor):
                out_dtype = torch.promote_types(x.dtype, w.weight.dtype)
        if out_dtype not in _FLOATS:
            raise ValueError(f"out_dtype: one of float32, float16, bfloat16; got {out_dtype}")
        self.out_dtype = out_dtype
        self.rounding = _NEAREST_EVEN if rounding == "nearest_even" else Rounding.parse(rounding)
        if self.rounding is Rounding.STOCHASTIC:
            raise ValueError("rounding: stochastic rounding is not an output mode; use "
                             "nearest_even, nearest_away, toward_zero, floor, ceil or odd")
        self._xq = None

    def apply_x_mul(self) -> None:
        """Multiply x by x_mul now (paths that do not fuse it); x keeps its dtype."""
        if self.x_mul is not None:
            self.x = (self.x.float() * self.x_mul).to(self.x.dtype)
            self.x_mul = None
            self._xq = None  # quantized from the unscaled x by a supports() check

    @property
    def xq(self) -> QTensor:
        """The quantized activations [M, K] (the given QTensor, or x quantized with act)."""
        if self._xq is None:
            if isinstance(self.x, QTensor):
                self._xq = self.x
            else:
                self._xq = quantize(self.x, self.act, self.act_qparams)
        return self._xq

    @property
    def act_scheme(self) -> Scheme | None:
        return self.x.scheme if isinstance(self.x, QTensor) else self.act
