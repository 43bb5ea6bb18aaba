"""Scheme: what a tensor is quantized to, and the one parser of scheme strings.

A scheme is data: the element format, the granularity, symmetric or not, the format the
scales are stored in, the rounding mode, and for MX-style block formats the scale rule
and the shared micro-exponent sub-block. Strings appear only at the edges
(``Scheme.parse``/``str(scheme)``, used by the CLI and recipe files).

Grammar: ``<base>[:<option>]...`` where base is a format name (``int8``, ``fp8_e4m3fn``)
or a block-format name (``mxfp4``, ``nvfp4``, ``mx6``), and options are a granularity
(``tensor``, ``channel``, ``channel1``, ``token``, ``g128``, ``b32``), ``sym``/``asym``,
a rounding mode (``stochastic``, ``toward_zero``...), an MX scale rule (``floor``,
``ceil``, ``even``, ``rceil``) or ``pad`` (pad the last axis to the group size).
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass, replace

from .. import formats
from ..formats import FloatFormat, Format, IntFormat, Rounding
from .granularity import Granularity, PerBlock, PerChannel, PerGroup, PerTensor, PerToken

__all__ = ["BLOCK_FORMATS", "ScaleMode", "Scheme"]


class ScaleMode(enum.Enum):
    """How an MX block's power-of-two scale is derived from the block's amax (torchao names).

    FLOOR: OCP MX v1.0, 2^(floor(log2 amax) - emax_elem) from amax's exponent bits.
    CEIL:  as FLOOR, plus one when amax is not a power of two (never clips).
    EVEN:  amax's mantissa rounded to the element's mantissa width first.
    RCEIL: 2^ceil(log2(amax / max_elem)), the rule of NVIDIA's cvt.rp (never clips).
    """

    FLOOR = "floor"
    CEIL = "ceil"
    EVEN = "even"
    RCEIL = "rceil"


_FP32 = formats.get("fp32")
_E8M0 = formats.get("e8m0")


@dataclass(frozen=True)
class Scheme:
    """How to quantize one tensor.

    Args:
        format: element format (``lb.formats.get("int4")``).
        granularity: PerTensor(), PerChannel(axis), PerToken(), PerGroup(n) or PerBlock(n).
        symmetric: zero point fixed at 0 (integer formats may be asymmetric).
        scale_format: fp32 (plain), e8m0 (MX: power-of-two scales) or fp8_e4m3fn (NVFP4:
            e4m3 block scales under one fp32 tensor scale).
        rounding: rounding of the elements.
        scale_mode: the MX scale rule (e8m0 scales only).
        micro_block: sub-block size sharing a 1-bit micro-exponent (MX9/MX6/MX4: 2), 0 = none.
        pad: pad the last axis with zeros up to a multiple of the group/block size.
    """

    format: Format
    granularity: Granularity = PerTensor()  # noqa: RUF009 (frozen, immutable)
    symmetric: bool = True
    scale_format: FloatFormat = _FP32
    rounding: Rounding = Rounding.NEAREST_EVEN
    scale_mode: ScaleMode = ScaleMode.FLOOR
    micro_block: int = 0
    pad: bool = False

    def __post_init__(self):
        fmt = formats.get(self.format)
        object.__setattr__(self, "format", fmt)
        object.__setattr__(self, "scale_format", formats.get(self.scale_format))
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding))
        if not self.symmetric and not isinstance(fmt, IntFormat):
            raise ValueError(f"asymmetric quantization needs an integer format; {fmt.name} is "
                             "not one (use a symmetric scheme)")
        if self.scale_format.name not in ("fp32", "e8m0", "fp8_e4m3fn"):
            raise ValueError("scale_format must be fp32, e8m0 (MX) or fp8_e4m3fn (NVFP4); got "
                             f"{self.scale_format.name}")
        if self.is_block_scaled and not isinstance(self.granularity, PerGroup):
            raise ValueError(f"{self.scale_format.name} scales need PerBlock granularity; got "
                             f"{self.granularity}")
        if self.is_block_scaled and not self.symmetric:
            raise ValueError("block-scaled (MX/NVFP4) schemes are symmetric")
        if self.micro_block and self.scale_format.name != "e8m0":
            raise ValueError("micro_block (shared micro-exponents) needs e8m0 scales")
        if self.micro_block and self.granularity.size % self.micro_block:
            raise ValueError(f"micro_block {self.micro_block} must divide the block size "
                             f"{self.granularity.size}")

    @property
    def is_block_scaled(self) -> bool:
        """MX (e8m0 scales) or NVFP4 (e4m3 scales under a tensor scale)."""
        return self.scale_format.name != "fp32"

    @property
    def is_dynamic(self) -> bool:
        """Parameters are computed from each input at run time (per-token activations)."""
        return isinstance(self.granularity, PerToken)

    @property
    def bits(self) -> int:
        return self.format.bits

    def with_(self, **changes) -> Scheme:
        """A copy with some fields changed: ``scheme.with_(symmetric=False)``."""
        return replace(self, **changes)

    # -- strings at the edge ------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | Scheme) -> Scheme:
        """``Scheme.parse("int4:g128:asym")``; see the module docstring for the grammar."""
        if isinstance(text, Scheme):
            return text
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a scheme string is required, e.g. 'int8:channel'; got {text!r}")
        base, *options = [p for p in text.strip().lower().split(":")]
        if base in BLOCK_FORMATS:
            fields = dict(BLOCK_FORMATS[base])
        elif base in formats.FORMATS or base in _format_aliases():
            fields = {"format": formats.get(base)}
        else:
            known = list(BLOCK_FORMATS) + formats.names()
            close = difflib.get_close_matches(base, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown scheme {text!r}: {base!r} is not a format. Accepted: "
                             f"{', '.join(known)}, each optionally followed by "
                             f":channel, :token, :g<N>, :asym, ...{hint}")
        for opt in options:
            fields.update(_parse_option(opt, text))
        return cls(**fields)

    def __str__(self) -> str:
        for name, fields in BLOCK_FORMATS.items():
            ref = Scheme(**fields)
            if (ref.format, ref.scale_format, ref.micro_block) == (
                self.format, self.scale_format, self.micro_block
            ):
                parts = [name]
                if self.granularity != ref.granularity:
                    parts.append(str(self.granularity))
                break
        else:
            parts = [self.format.name]
            if self.granularity != PerTensor():
                parts.append(str(self.granularity))
        if not self.symmetric:
            parts.append("asym")
        if self.scale_mode is not ScaleMode.FLOOR:
            parts.append(self.scale_mode.value)
        if self.rounding is not Rounding.NEAREST_EVEN:
            parts.append(self.rounding.value)
        if self.pad:
            parts.append("pad")
        return ":".join(parts)


def _format_aliases():
    from ..formats.registry import _ALIASES

    return _ALIASES


def _parse_option(opt: str, text: str) -> dict:
    if opt in ("sym", "symmetric"):
        return {"symmetric": True}
    if opt in ("asym", "asymmetric"):
        return {"symmetric": False}
    if opt == "tensor":
        return {"granularity": PerTensor()}
    if opt == "token":
        return {"granularity": PerToken()}
    if opt == "pad":
        return {"pad": True}
    if opt.startswith("channel"):
        axis = opt[len("channel"):]
        if axis == "" or axis.lstrip("-").isdigit():
            return {"granularity": PerChannel(int(axis or 0))}
    if opt[:1] in ("g", "b") and opt[1:].isdigit() and int(opt[1:]) > 0:
        return {"granularity": (PerGroup if opt[0] == "g" else PerBlock)(int(opt[1:]))}
    if opt in {m.value for m in ScaleMode}:
        return {"scale_mode": ScaleMode(opt)}
    try:
        return {"rounding": Rounding.parse(opt)}
    except ValueError:
        pass
    raise ValueError(f"unknown option {opt!r} in scheme {text!r}; options: tensor, channel, "
                     "channel<axis>, token, g<N>, b<N>, sym, asym, pad, floor, ceil, even, "
                     "rceil, or a rounding mode (stochastic, toward_zero, ...)")


def _mx(elem: str, block: int = 32, micro: int = 0, scale: str = "e8m0") -> dict:
    return {"format": formats.get(elem), "granularity": PerBlock(block),
            "scale_format": formats.get(scale), "micro_block": micro}


# Block formats by name. MX9/MX6/MX4 (Rouhani et al., ISCA 2023): blocks of 16 with a shared
# 8-bit exponent and a 1-bit micro-exponent per pair; elements are sign + 7/4/2 magnitude
# bits, i.e. narrow two's complement int8/int5/int3 read as fixed point 1.(bits-2).
BLOCK_FORMATS: dict[str, dict] = {
    "mxfp8": _mx("fp8_e4m3fn"),
    "mxfp8_e4m3": _mx("fp8_e4m3fn"),
    "mxfp8_e5m2": _mx("fp8_e5m2"),
    "mxfp6_e3m2": _mx("fp6_e3m2"),
    "mxfp6_e2m3": _mx("fp6_e2m3"),
    "mxfp4": _mx("fp4_e2m1"),
    "mxint8": _mx("int8"),
    "nvfp4": _mx("fp4_e2m1", 16, scale="fp8_e4m3fn"),
    "mx9": _mx("int8", 16, 2),
    "mx6": _mx("int5", 16, 2),
    "mx4": _mx("int3", 16, 2),
}
