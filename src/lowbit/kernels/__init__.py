"""GEMMs over every operand format: one API, a reference for each pair, fast CPU paths.

>>> import lowbit as lb, lowbit.kernels as K
>>> w = lb.quantize(torch.randn(256, 512), "int4:g128")          # [N, K], nn.Linear layout
>>> pw = K.prepare(w, act="int8:token")                           # once per layer
>>> y = K.linear(torch.randn(4, 512), pw, bias)                    # A8W4, fp32 [4, 256]
>>> K.backend(torch.randn(4, 512), pw, op="linear")               # 'cpu.a8w4.avx512_vnni'
>>> K.matmul(a_bf16, b_bf16, out_dtype=torch.float16, rounding="toward_zero")

* :func:`matmul` ``a @ b``: a [..., M, K], b [K, N]; each a Tensor or QTensor.
* :func:`linear` ``x @ w.T + bias``: w [N, K] a Tensor, QTensor or :class:`PackedWeight`;
  ``act`` quantizes the activations on the fly (see :func:`parse_act` for the forms:
  ``"int8:token"`` dynamic per row, ``(scheme, QParams)`` static).
* :func:`backend` the name of the implementation that would run.
* :func:`prepare` a :class:`PackedWeight`: the weight plus its activation scheme, with
  each backend's packed form built once on first use and rebuilt if the weight changes.
  Pass it to ``linear`` for speed; a raw QTensor works too but is repacked every call.

Dispatch: :mod:`lowbit.kernels.registry` maps (activation kind, weight kind) to an
ordered list of implementations ending with the reference (:mod:`.reference`); outputs go
through :func:`lowbit.kernels.mixed.round_output` for the output dtype and rounding mode.
Every backend computes in fp32 from exact integer (or exactly decoded) operands; see each
module's docstring for what it computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..quant import PerChannel, PerTensor, QTensor
from . import cpu_int4, cpu_int8, mixed, reference, registry
from .layouts import from_aligned_int4, from_fractal_nz, to_aligned_int4, to_fractal_nz
from .problem import PackedWeight, Problem, parse_act, prepare
from .registry import Impl, implementations, register

__all__ = ["Impl", "PackedWeight", "backend", "from_aligned_int4", "from_fractal_nz",
           "implementations", "linear", "matmul", "parse_act", "prepare", "register",
           "to_aligned_int4", "to_fractal_nz"]


# -- registration: fast paths first, the reference last --------------------------------------

def _register_all():
    reg = registry.register
    reg("float", "float", "cpu.bf16.onednn", mixed.bf16_linear, mixed.bf16_supports,
        rounds_output=True)
    reg("float", "int8", "cpu.w8.int8pack", cpu_int4.w8_linear, cpu_int4.w8_supports,
        rounds_output=True)
    reg("float", "int8", "cpu.w8.dequant", cpu_int4.dequant_linear, cpu_int4.dequant_supports,
        rounds_output=True)
    reg("float", "int4", "cpu.w4.int4pack", cpu_int4.w4_linear, cpu_int4.w4_supports,
        rounds_output=True)
    reg("float", "int4", "cpu.w4.dequant", cpu_int4.dequant_linear, cpu_int4.dequant_supports,
        rounds_output=True)
    reg("int8", "int8", "cpu.a8w8", cpu_int8.a8w8_linear, cpu_int8.a8w8_supports,
        scales_input=True)
    reg("int8", "int8", "cpu.int8.int_mm", cpu_int8.int_mm_linear, cpu_int8.int_mm_supports)
    reg("int8", "int4", "cpu.a8w4", cpu_int4.a8w4_linear, cpu_int4.a8w4_supports,
        scales_input=True)
    for w in ("float", "int8", "int4", "int"):
        reg("float", w, "reference", reference.float_reference, reference=True)
    for a in ("int8", "int"):
        for w in ("int8", "int4", "int"):
            reg(a, w, "reference", reference.integer_reference, reference=True)
    for a in registry.ACT_KINDS:
        for w in registry.WEIGHT_KINDS:
            if "emulated" in (a, w) or (a != "float" and w == "float"):
                reg(a, w, "emulated", reference.emulated, reference=True)


_register_all()


def _name(impl: Impl) -> str:
    names = {"cpu.a8w4": cpu_int4.a8w4_name, "cpu.a8w8": cpu_int8.a8w8_name}
    return names[impl.name]() if impl.name in names else impl.name


# -- the API -----------------------------------------------------------------------------------

def _transposed(b: QTensor) -> QTensor | None:
    """b [K, N] as a weight [N, K] when its scales allow (per tensor, per column)."""
    from ..formats import pack

    g = b.scheme.granularity
    if g == PerTensor():
        scheme = b.scheme
    elif isinstance(g, PerChannel) and g.axis in (1, -1):
        scheme = b.scheme.with_(granularity=PerChannel(0))
    else:
        return None
    bits = b.scheme.format.bits
    codes = b.unpacked_codes().T.contiguous()
    if bits < 8:
        codes = pack(codes, bits)

    def per_row(v):  # scales [1, N] -> [N, 1]; per tensor [1, 1] stays
        return None if v is None else v.reshape(-1, 1).contiguous()

    return QTensor(codes, per_row(b.scale), scheme, (b.shape[1], b.shape[0]),
                   zero_point=per_row(b.zero_point))


def _matmul_problem(a, b, out_dtype, rounding) -> Problem:
    if not isinstance(b, (Tensor, QTensor)) or len(b.shape) != 2:
        raise ValueError(f"b: a 2-D [K, N] Tensor or QTensor is required; got "
                         f"{getattr(b, 'shape', type(b).__name__)}")
    if isinstance(b, Tensor):
        return Problem(a, PackedWeight(b.T), None, None, out_dtype, rounding)
    bt = _transposed(b)
    if bt is not None:
        return Problem(a, PackedWeight(bt), None, None, out_dtype, rounding)
    if out_dtype is None:
        out_dtype = a.dtype if isinstance(a, Tensor) else torch.float32
    p = Problem(a, PackedWeight(b.dequantize().T), None, None, out_dtype, rounding)
    p.key = ("emulated", "emulated")  # scales vary along K: decode b exactly first
    return p


def _linear_problem(x, w, bias, act, out_dtype, rounding) -> Problem:
    if isinstance(w, PackedWeight):
        if act is not None:
            raise ValueError(f"act: w is a PackedWeight prepared with act={w.act}; give the "
                             "activation scheme to prepare(), not to linear()")
        return Problem(x, w, bias, None, out_dtype, rounding)
    return Problem(x, PackedWeight(w), bias, act, out_dtype, rounding)


def _run(p: Problem) -> Tensor:
    impl = registry.select(p)
    if not impl.scales_input:
        p.apply_x_mul()
    y = impl.fn(p)
    if not impl.rounds_output:
        y = mixed.round_output(y, p.out_dtype, p.rounding)
    return y if len(p.lead) == 1 else y.reshape(*p.lead, p.n)


def matmul(a, b, *, out_dtype=None, rounding="nearest_even") -> Tensor:
    """``a @ b`` for a [..., M, K] and b [K, N], each a Tensor or QTensor.

    Args:
        out_dtype: float32, float16 or bfloat16; default: the float operands' promoted
            dtype, fp32 when an operand is quantized.
        rounding: how the fp32 result is rounded to out_dtype: nearest_even, nearest_away,
            toward_zero, floor, ceil, odd.
    """
    return _run(_matmul_problem(a, b, out_dtype, rounding))


def linear(x, w, bias=None, *, act=None, out_dtype=None, rounding="nearest_even") -> Tensor:
    """``x @ w.T + bias`` with w [N, K] (nn.Linear layout).

    Args:
        x: float Tensor [..., K] or an activation QTensor.
        w: Tensor, QTensor or PackedWeight (from :func:`prepare`; carries ``act``).
        bias: None or float [N], added in fp32 before the output rounding.
        act: activation quantization: None, a scheme (``"int8:token"``: dynamic per row)
            or ``(scheme, QParams)`` for static parameters.
        out_dtype, rounding: as in :func:`matmul`.
    """
    return _run(_linear_problem(x, w, bias, act, out_dtype, rounding))


def backend(a, b, bias=None, *, act=None, out_dtype=None, rounding="nearest_even",
            op: str = "matmul") -> str:
    """Name of the implementation ``matmul(a, b)`` (``op="matmul"``) or ``linear(a, b, bias,
    act=...)`` (``op="linear"``, implied when b is a PackedWeight) would run, e.g.
    ``cpu.a8w8.avx512_vnni``, ``cpu.int8.int_mm``, ``cpu.a8w4.avx512_vnni``, ``reference``, ``emulated``."""
    if op not in ("matmul", "linear"):
        raise ValueError(f"op: 'matmul' or 'linear'; got {op!r}")
    if op == "linear" or isinstance(b, PackedWeight):
        p = _linear_problem(a, b, bias, act, out_dtype, rounding)
    else:
        if act is not None or bias is not None:
            raise ValueError("backend: act and bias apply to op='linear'")
        p = _matmul_problem(a, b, out_dtype, rounding)
    return _name(registry.select(p))
