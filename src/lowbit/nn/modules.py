"""Quantized modules: Linear, Conv2d and Embedding with QTensor weights, and a wrapper that
keeps a module in fp16/bf16.

Weights are stored as QTensors (really packed: an int4 layer holds half a byte per weight
plus its scales). Activations are quantized on the fly by the kernel: dynamically per token
(``int8:token``, MX/NVFP4 blocks) or statically with calibrated per-tensor qparams.
Every matrix product runs through ``lowbit.kernels``; ``module.backend`` names the path.

Each class implements the save/load protocol of ``lowbit.io``: ``lowbit_kind``,
``lowbit_state() -> (tensors, meta)`` and ``from_lowbit_state(float_module, tensors, meta)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from ..quant import QParams, QTensor, Scheme, quantize
from .registry import register

__all__ = ["KeepPrecision", "QuantConv2d", "QuantEmbedding", "QuantLinear"]


def _act_meta(act: Scheme | None, qp: QParams | None) -> dict:
    meta = {"act": None if act is None else str(act)}
    if qp is not None:
        meta["act_scale"] = qp.scale.flatten().tolist()
        meta["act_zero_point"] = None if qp.zero_point is None else qp.zero_point.flatten().tolist()
    return meta


def _act_from_meta(meta: dict) -> tuple[Scheme | None, QParams | None]:
    act = None if meta.get("act") is None else Scheme.parse(meta["act"])
    if "act_scale" not in meta:
        return act, None
    scale = torch.tensor(meta["act_scale"], dtype=torch.float32).reshape(1, 1)
    zp = meta.get("act_zero_point")
    zp = None if zp is None else torch.tensor(zp, dtype=torch.int32).reshape(1, 1)
    return act, QParams(scale, zp)


def _smoothed(w: torch.Tensor, input_scale: torch.Tensor | None) -> torch.Tensor:
    return w if input_scale is None else w * input_scale.to(w.dtype)


def _bias(mod) -> torch.Tensor | None:
    return None if getattr(mod, "bias", None) is None else mod.bias.detach().float().clone()


class _QuantMatmul(torch.nn.Module):
    """Shared by Linear and Conv2d: a 2-D [out, reduction] QTensor weight run by kernels."""

    def __init__(self, weight: QTensor, bias, act: Scheme | None, act_qparams: QParams | None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"weight must be a 2-D QTensor [out, in]; got shape {tuple(weight.shape)}")
        if act is not None and not act.is_dynamic and not act.is_block_scaled and act_qparams is None:
            raise ValueError(f"static activation scheme {act} needs act_qparams (calibrate first)")
        if input_scale is not None and tuple(input_scale.shape) != (weight.shape[1],):
            raise ValueError(f"input_scale must have shape ({weight.shape[1]},); got "
                             f"{tuple(input_scale.shape)}")
        self.weight_q = weight
        self.register_buffer("bias", bias)
        # SmoothQuant: the weight was multiplied by input_scale, inputs are multiplied by
        # 1 / input_scale (in the kernel's activation quantization when it fuses that).
        self.register_buffer("input_scale", input_scale)
        self.act, self.act_qparams = act, act_qparams
        self._packed, self._packed_stamp = None, None

    @property
    def packed(self) -> kernels.PackedWeight:
        """The weight and activation scheme prepared for the kernels (packed forms are
        built by each backend on first use)."""
        s = self.input_scale  # a buffer: load_state_dict may replace it or write into it
        stamp = None if s is None else (id(s), s.data_ptr(), s._version)
        if self._packed is None or stamp != self._packed_stamp:
            act = self.act if self.act_qparams is None else (self.act, self.act_qparams)
            self._packed = kernels.prepare(self.weight_q, act=act, input_scale=s)
            self._packed_stamp = stamp
        return self._packed

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x2, self.packed, self.bias)  # x2 * (1 / input_scale) inside

    @property
    def backend(self) -> str:
        """Name of the kernel this module runs (e.g. ``cpu.a8w4.avx512_vnni``)."""
        return kernels.backend(torch.zeros(1, self.weight_q.shape[1]), self.packed, self.bias)

    @property
    def nbytes(self) -> int:
        extra = [t for t in (self.bias, self.input_scale) if t is not None]
        return self.weight_q.nbytes + sum(t.numel() * t.element_size() for t in extra)

    def _state(self) -> tuple[dict, dict]:
        tensors, wmeta = self.weight_q.state("weight.")
        for name in ("bias", "input_scale"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        return tensors, {"weight": wmeta, **_act_meta(self.act, self.act_qparams)}

    def extra_repr(self) -> str:
        return (f"weight={self.weight_q.scheme}, act={self.act}, "
                f"{self.weight_q.shape[1]} -> {self.weight_q.shape[0]}")


@register(torch.nn.Linear)
class QuantLinear(_QuantMatmul):
    """``y = x @ w.T + b`` with a quantized weight [out_features, in_features]."""

    lowbit_kind = "linear"

    @classmethod
    def from_float(cls, mod: torch.nn.Linear, weight: Scheme | str, act=None, *,
                   weight_qparams: QParams | None = None, act_qparams: QParams | None = None,
                   input_scale: torch.Tensor | None = None):
        """Quantize ``mod``'s weight (times ``input_scale`` per input channel, SmoothQuant)
        with ``weight``; ``act`` quantizes inputs (static schemes need ``act_qparams``)."""
        w = _smoothed(mod.weight.detach(), input_scale)
        w = quantize(w, Scheme.parse(weight), weight_qparams)
        act = None if act is None else Scheme.parse(act)
        return cls(w, _bias(mod), act, act_qparams, input_scale)

    @property
    def in_features(self) -> int:
        return self.weight_q.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight_q.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._matmul(x).to(x.dtype)

    def lowbit_state(self):
        return self._state()

    @classmethod
    def from_lowbit_state(cls, float_module, tensors, meta):
        w = QTensor.from_state(tensors, meta["weight"], "weight.")
        want = (float_module.out_features, float_module.in_features)
        if tuple(w.shape) != want:
            raise ValueError(f"saved weight has shape {tuple(w.shape)}, the model's Linear "
                             f"expects {want}")
        act, qp = _act_from_meta(meta)
        return cls(w, tensors.get("bias"), act, qp, tensors.get("input_scale"))


@register(torch.nn.Conv2d)
class QuantConv2d(_QuantMatmul):
    """Conv2d as unfold + quantized matmul: the weight [out, in, kh, kw] is stored as
    [out, in*kh*kw], so groups of a group-wise scheme run along the reduction axis."""

    lowbit_kind = "conv2d"

    def __init__(self, weight, bias, act, act_qparams, geometry: dict):
        super().__init__(weight, bias, act, act_qparams)
        self.geometry = geometry

    @staticmethod
    def _geometry(mod: torch.nn.Conv2d) -> dict:
        if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise ValueError("QuantConv2d supports groups=1, zero padding given as numbers; got "
                             f"groups={mod.groups}, padding={mod.padding!r}, "
                             f"padding_mode={mod.padding_mode!r}")
        return {"in_channels": mod.in_channels, "kernel_size": list(mod.kernel_size),
                "stride": list(mod.stride), "padding": list(mod.padding),
                "dilation": list(mod.dilation)}

    @classmethod
    def from_float(cls, mod: torch.nn.Conv2d, weight, act=None, *, weight_qparams=None,
                   act_qparams=None):
        geometry = cls._geometry(mod)
        w2 = mod.weight.detach().reshape(mod.out_channels, -1)
        w = quantize(w2, Scheme.parse(weight), weight_qparams)
        act = None if act is None else Scheme.parse(act)
        return cls(w, _bias(mod), act, act_qparams, geometry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        n, _, h, w = x.shape
        cols = F.unfold(x.float(), g["kernel_size"], g["dilation"], g["padding"], g["stride"])
        y = self._matmul(cols.transpose(1, 2))  # [n, L, out]
        oh = (h + 2 * g["padding"][0] - g["dilation"][0] * (g["kernel_size"][0] - 1) - 1) \
            // g["stride"][0] + 1
        ow = (w + 2 * g["padding"][1] - g["dilation"][1] * (g["kernel_size"][1] - 1) - 1) \
            // g["stride"][1] + 1
        return y.transpose(1, 2).reshape(n, -1, oh, ow).to(x.dtype)

    def lowbit_state(self):
        tensors, meta = self._state()
        return tensors, {**meta, "geometry": self.geometry}

    @classmethod
    def from_lowbit_state(cls, float_module, tensors, meta):
        geometry = cls._geometry(float_module)
        if meta.get("geometry") != geometry:
            raise ValueError(f"saved conv geometry {meta.get('geometry')} does not match the "
                             f"model's {geometry}")
        w = QTensor.from_state(tensors, meta["weight"], "weight.")
        act, qp = _act_from_meta(meta)
        if "input_scale" in tensors:
            raise ValueError("QuantConv2d takes no input_scale (SmoothQuant is for Linear)")
        return cls(w, tensors.get("bias"), act, qp, geometry)


@register(torch.nn.Embedding)
class QuantEmbedding(torch.nn.Module):
    """Embedding lookup from a quantized table: only the looked-up rows are dequantized.
    Row-wise schemes (``int8:channel``, groups, MX blocks) slice their scales with the rows."""

    lowbit_kind = "embedding"

    def __init__(self, weight: QTensor, padding_idx=None):
        super().__init__()
        if len(weight.shape) != 2:
            raise ValueError(f"embedding weight must be 2-D; got {tuple(weight.shape)}")
        self.weight_q = weight
        self.padding_idx = padding_idx

    @classmethod
    def from_float(cls, mod: torch.nn.Embedding, weight="int8:channel", act=None, *,
                   weight_qparams=None, act_qparams=None):
        if act is not None:
            raise ValueError("an embedding has no input activations to quantize; drop act")
        return cls(quantize(mod.weight.detach(), Scheme.parse(weight), weight_qparams),
                   mod.padding_idx)

    def _rows(self, t: torch.Tensor | None, idx: torch.Tensor):
        if t is None or t.shape[0] != self.weight_q.shape[0]:
            return t  # per-tensor parts are shared by every row
        return t[idx]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        q = self.weight_q
        flat = ids.reshape(-1)
        rows = QTensor(q.codes[flat], self._rows(q.scale, flat), q.scheme,
                       (flat.numel(), q.shape[1]), self._rows(q.zero_point, flat),
                       self._rows(q.micro_exponent, flat), q.tensor_scale)
        return rows.dequantize().reshape(*ids.shape, q.shape[1])

    @property
    def nbytes(self) -> int:
        return self.weight_q.nbytes

    @property
    def backend(self) -> str:
        return "gather+dequantize"

    def extra_repr(self) -> str:
        return f"{self.weight_q.shape[0]}, {self.weight_q.shape[1]}, weight={self.weight_q.scheme}"

    def lowbit_state(self):
        tensors, wmeta = self.weight_q.state("weight.")
        return tensors, {"weight": wmeta}

    @classmethod
    def from_lowbit_state(cls, float_module, tensors, meta):
        w = QTensor.from_state(tensors, meta["weight"], "weight.")
        if tuple(w.shape) != tuple(float_module.weight.shape):
            raise ValueError(f"saved embedding has shape {tuple(w.shape)}, the model's has "
                             f"{tuple(float_module.weight.shape)}")
        return cls(w, float_module.padding_idx)


_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@register()
class KeepPrecision(torch.nn.Module):
    """Runs ``module`` in fp16/bf16 (its parameters stored so), with fp32 in and out.

    Where torch's CPU kernel for the op accumulates in fp32 (LayerNorm, softmax, matmul),
    the computation keeps fp32 accumulation; only storage and elementwise math are narrow.
    """

    lowbit_kind = "keep"

    def __init__(self, module: torch.nn.Module, dtype: str):
        super().__init__()
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}")
        self.dtype_name = dtype
        self.module = module.to(_DTYPES[dtype])

    def forward(self, *args, **kwargs):
        dt = _DTYPES[self.dtype_name]
        cast = [a.to(dt) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        out = self.module(*cast, **kwargs)
        return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.module.state_dict().values())

    @property
    def backend(self) -> str:
        return f"torch.{self.dtype_name}"

    def lowbit_state(self):
        return dict(self.module.state_dict()), {"dtype": self.dtype_name}

    @classmethod
    def from_lowbit_state(cls, float_module, tensors, meta):
        import copy

        out = cls(copy.deepcopy(float_module), meta["dtype"])
        missing, unexpected = out.module.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"saved {meta['dtype']} module does not match the model: missing "
                             f"{missing}, unexpected {unexpected}")
        return out
