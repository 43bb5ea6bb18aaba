"""QTensor: a quantized tensor as it is stored (packed codes, encoded scales, zero points)."""

from __future__ import annotations

import json
import math

import torch

from ..formats import pack, packed_length, unpack
from .granularity import PerGroup
from .scheme import Scheme

__all__ = ["QTensor"]

_PARTS = ("codes", "scale", "zero_point", "micro_exponent", "tensor_scale")


class QTensor:
    """Codes, scales and zero points of one quantized tensor, plus its scheme and shape.

    * ``codes``: uint8 bit patterns, packed along the last axis for formats narrower than
      8 bits (element 0 in the low bits); the last axis is padded to the group size when
      the scheme pads.
    * ``scale``: float32 for plain schemes; e8m0 codes (uint8) for MX; e4m3 codes for NVFP4.
      Shape: the tensor's shape divided by the granularity's block, e.g. [N, K/128].
    * ``zero_point``: int32 values within the format's range (asymmetric only), shape of
      ``scale``; stored in one byte each.
    * ``micro_exponent``: MX9/6/4, one bit per sub-block (0/1, bit-packed when stored).
    * ``tensor_scale``: NVFP4's fp32 tensor scale.
    """

    def __init__(self, codes, scale, scheme: Scheme, shape, zero_point=None,
                 micro_exponent=None, tensor_scale=None):
        self.codes = codes
        self.scale = scale
        self.scheme = scheme
        self.shape = torch.Size(shape)
        self.zero_point = zero_point
        self.micro_exponent = micro_exponent
        self.tensor_scale = tensor_scale

    # -- shape of the stored codes ------------------------------------------------------

    @property
    def padded_shape(self) -> torch.Size:
        """Logical shape with the last axis padded to a whole number of groups."""
        if not self.shape:
            return self.shape
        g = self.scheme.granularity
        last = g.padded_last(self.shape[-1]) if isinstance(g, PerGroup) else self.shape[-1]
        return torch.Size((*self.shape[:-1], last))

    def unpacked_codes(self) -> torch.Tensor:
        """uint8 codes of ``padded_shape``, one per element."""
        bits = self.scheme.format.bits
        if bits >= 8:
            return self.codes.reshape(self.padded_shape)
        n = self.padded_shape[-1] if self.shape else 1
        return unpack(self.codes, bits, n).reshape(self.padded_shape)

    def int_values(self) -> torch.Tensor:
        """The integer codes as numbers (int8 view for signed 8-bit, int16 otherwise)."""
        fmt = self.scheme.format
        c = self.unpacked_codes()
        if fmt.bits == 8 and fmt.signed:
            return c.view(torch.int8)
        return fmt.decode(c).to(torch.int16)

    def scale_values(self) -> torch.Tensor:
        """Scales decoded to float32 (MX: 2^e; NVFP4: the e4m3 block scales)."""
        from .. import formats

        return formats.get(self.scheme.scale_format).decode(self.scale) \
            if self.scale.dtype == torch.uint8 else self.scale

    def dequantize(self) -> torch.Tensor:
        from .functional import dequantize

        return dequantize(self)

    # -- storage ------------------------------------------------------------------------

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every stored tensor by part name (micro-exponents bit-packed)."""
        out = {}
        for part in _PARTS:
            t = getattr(self, part)
            if t is None:
                continue
            if part == "zero_point":
                t = t.to(torch.int8 if self.scheme.format.signed else torch.uint8)
            elif part == "micro_exponent":
                t = pack(t, 1)
            out[part] = t.contiguous()
        return out

    def metadata(self) -> dict:
        meta = {"scheme": str(self.scheme), "shape": list(self.shape)}
        if self.micro_exponent is not None:
            meta["micro_exponent_count"] = self.micro_exponent.shape[-1]
        return meta

    @property
    def nbytes(self) -> int:
        """Every stored byte: codes, scales, zero points, micro-exponents, tensor scale, and
        the JSON metadata (scheme string and shape)."""
        data = sum(t.numel() * t.element_size() for t in self.tensors().values())
        return data + len(json.dumps(self.metadata()))

    def state(self, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
        """Flat ``{prefix + part: tensor}`` for safetensors, and JSON-able metadata."""
        return {prefix + k: v for k, v in self.tensors().items()}, self.metadata()

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = ""):
        """Rebuild from ``state()``, validating every part against the scheme and shape."""
        try:
            scheme = Scheme.parse(meta["scheme"])
            shape = torch.Size(int(s) for s in meta["shape"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{prefix or 'QTensor'}: bad metadata {meta!r}: {e}") from None
        parts = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if "micro_exponent" in parts:
            n = int(meta.get("micro_exponent_count", 0))
            parts["micro_exponent"] = unpack(parts["micro_exponent"], 1, n)
        if "zero_point" in parts:
            parts["zero_point"] = parts["zero_point"].to(torch.int32)
        q = cls(parts.get("codes"), parts.get("scale"), scheme, shape,
                parts.get("zero_point"), parts.get("micro_exponent"), parts.get("tensor_scale"))
        q.validate(prefix or "QTensor")
        return q

    def validate(self, name: str = "QTensor") -> None:
        """Raise ValueError unless the stored parts fit the scheme and logical shape."""
        from .functional import expected_scale_shape

        s = self.scheme
        if self.codes is None or self.scale is None:
            raise ValueError(f"{name}: codes and scale are required")
        bits = s.format.bits
        ps = self.padded_shape
        want = (*ps[:-1], packed_length(ps[-1], bits)) if bits < 8 and ps else tuple(ps)
        if self.codes.dtype != torch.uint8 or tuple(self.codes.shape) != tuple(want):
            raise ValueError(f"{name}: codes must be uint8 of shape {tuple(want)} for scheme "
                             f"{s} and shape {tuple(self.shape)}; got {self.codes.dtype} "
                             f"{tuple(self.codes.shape)}")
        sshape = expected_scale_shape(ps, s)
        sdtype = torch.float32 if s.scale_format.name == "fp32" else torch.uint8
        if self.scale.dtype != sdtype or tuple(self.scale.shape) != sshape:
            raise ValueError(f"{name}: scale must be {sdtype} of shape {sshape}; got "
                             f"{self.scale.dtype} {tuple(self.scale.shape)}")
        if s.symmetric and self.zero_point is not None:
            raise ValueError(f"{name}: a symmetric scheme has no zero point")
        if not s.symmetric and self.zero_point is None:
            raise ValueError(f"{name}: an asymmetric scheme needs a zero point")
        if self.zero_point is not None and tuple(self.zero_point.shape) != sshape:
            raise ValueError(f"{name}: zero_point must have shape {sshape}; got "
                             f"{tuple(self.zero_point.shape)}")
        if s.micro_block:
            n = ps[-1] // s.micro_block
            if self.micro_exponent is None or self.micro_exponent.shape[-1] != n:
                raise ValueError(f"{name}: {s} needs {n} micro-exponents per row")
        if s.scale_format.name == "fp8_e4m3fn" and (
            self.tensor_scale is None or self.tensor_scale.numel() != 1
        ):
            raise ValueError(f"{name}: {s} needs a scalar fp32 tensor_scale")

    def __repr__(self) -> str:
        n = math.prod(self.shape) or 1
        return (f"QTensor(shape={tuple(self.shape)}, scheme='{self.scheme}', "
                f"nbytes={self.nbytes}, bits/elem={8 * self.nbytes / n:.2f})")
