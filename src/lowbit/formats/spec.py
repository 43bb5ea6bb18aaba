"""Number formats as data.

A format is a frozen dataclass: the bit fields (and what the all-ones exponent means) are
given, everything else (max, smallest normal, smallest subnormal, the decode table) is
derived. Adding a format is adding one line to ``registry.py``.

Three families:

* ``IntFormat``   two's complement or unsigned integers; ``narrow`` drops the most negative
  code (``ternary`` is a narrow int2: -1, 0, +1).
* ``FloatFormat`` sign / exponent / mantissa with a bias; ``specials`` says what the
  all-ones exponent holds (IEEE Inf/NaN, only NaN at the all-ones code as in e4m3fn, or
  nothing at all as in fp6/fp4). ``e8m0`` is an unsigned float with no mantissa.
* ``BinaryFormat`` one bit, {-1, +1}: code 1 is +1 and zero counts as positive.

Codes are the bit patterns as non-negative integers: uint8 for widths <= 8, int32 for
16 bits, int64 for 32 bits. Values are float32.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

import torch

from .rounding import Rounding, round_to_integer

__all__ = ["BinaryFormat", "FloatFormat", "Format", "IntFormat", "Specials"]


def _code_dtype(bits: int) -> torch.dtype:
    return torch.uint8 if bits <= 8 else torch.int32 if bits <= 16 else torch.int64


def _as_float(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x, dtype=torch.float32)
    if not x.is_floating_point():
        raise TypeError(f"{name}: x must be a floating tensor (float16/bfloat16/float32); "
                        f"got {x.dtype}")
    return x.float()


def _check_codes(codes: torch.Tensor, bits: int, name: str) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"{name}.decode: codes must be an integer tensor; got {got}")
    c = codes.long()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"{name}.decode: codes must lie in [0, {(1 << bits) - 1}] for a "
                         f"{bits}-bit format; got [{int(c.min())}, {int(c.max())}]")
    return c


_MAX_TABLE_BITS = 16


class _TableDecode:
    """Decoding by table lookup for formats of 16 bits or fewer; wider ones (fp32) decode
    the bit fields directly, since their table would hold 2**32 entries."""

    bits: int
    name: str

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Bit patterns -> float32 values (NaN/Inf where the format has them)."""
        c = _check_codes(codes, self.bits, self.name)
        if self.bits > _MAX_TABLE_BITS:
            return self._values(c).float()
        return self._table().to(c.device)[c]

    @functools.cache  # noqa: B019 (formats are a few immortal, hashable singletons)
    def _table(self) -> torch.Tensor:
        self._check_table_size()
        return self._values(torch.arange(1 << self.bits, dtype=torch.int64)).float()

    def _check_table_size(self) -> None:
        if self.bits > _MAX_TABLE_BITS:
            raise ValueError(f"{self.name}: a table of all 2**{self.bits} codes is too large; "
                             f"tables exist for formats of <= {_MAX_TABLE_BITS} bits")

    def table(self) -> torch.Tensor:
        """The value of every code, float32, indexed by code (a fresh copy: safe to modify).

        Formats of <= 16 bits only (ValueError for fp32).
        """
        return self._table().clone()

    def values(self) -> torch.Tensor:
        """Every finite representable value, sorted ascending, without duplicates (+0/-0)."""
        t = self._table()
        return torch.unique(t[torch.isfinite(t)])


@dataclass(frozen=True)
class IntFormat(_TableDecode):
    """An integer format: ``bits`` wide, signed (two's complement) or unsigned.

    int4: codes 0..15, values -8..7, code 0xF is -1. Ternary (narrow int2): -1, 0, 1.
    A narrow format never produces its most negative code (0b10 for ternary): ``table()``
    holds NaN there and ``decode`` rejects it.
    """

    name: str
    bits: int
    signed: bool = True
    narrow: bool = False

    is_float = False

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1)) + int(self.narrow) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    min_normal = 1
    min_subnormal = 1
    has_nan = False
    has_inf = False

    def _values(self, codes: torch.Tensor) -> torch.Tensor:
        v = codes.double()
        if self.signed:
            v = torch.where(codes >= 1 << (self.bits - 1), v - (1 << self.bits), v)
        return torch.where(v < self.min, torch.nan, v)  # the unused code of a narrow format

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Bit patterns -> float32 integer values; ValueError for a narrow format's unused code."""
        y = super().decode(codes)
        if self.narrow and torch.isnan(y).any():
            raise ValueError(f"{self.name}.decode: code {1 << (self.bits - 1)} is unused (values "
                             f"{self.min}..{self.max} only)")
        return y

    def round(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN, saturate: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Nearest representable integer (as float32) under ``rounding``.

        NaN raises ValueError. Out of range: clamped when ``saturate``, else ValueError.
        """
        x = _as_float(x, self.name)
        if torch.isnan(x).any():
            raise ValueError(f"{self.name} cannot represent NaN ({int(torch.isnan(x).sum())} "
                             "NaN values in x)")
        r = round_to_integer(x, Rounding.parse(rounding), generator)
        if not saturate and ((r < self.min) | (r > self.max)).any():
            bad = r[(r < self.min) | (r > self.max)][0].item()
            raise ValueError(f"{self.name}: value {bad} is outside [{self.min}, {self.max}]; "
                             "pass saturate=True to clamp")
        return r.clamp_(self.min, self.max)

    def encode(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN, saturate: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Round then return the two's complement bit patterns (uint8)."""
        q = self.round(x, rounding, saturate, generator).to(torch.int16)
        return (q & ((1 << self.bits) - 1)).to(torch.uint8)


class Specials(enum.Enum):
    """What a float format does with its all-ones exponent field."""

    IEEE = "ieee"  # all-ones exponent: Inf (mantissa 0) or NaN (fp16, bf16, fp32, e5m2)
    NAN_ONLY = "fn"  # only the all-ones code (per sign) is NaN; no Inf (e4m3fn, e8m0)
    NONE = "none"  # every code is a finite number (fp6, fp4)


@dataclass(frozen=True)
class FloatFormat(_TableDecode):
    """A binary floating-point format.

    value = (-1)^s * 2^(e - bias) * 1.m for a normal exponent field e, and
    (-1)^s * 2^(1 - bias) * 0.m for e == 0 when ``subnormals``.
    Example e4m3fn: bias 7, max 0b0.1111.110 = 1.75 * 2^8 = 448, min normal 2^-6,
    min subnormal 2^-9; 0x7F / 0xFF are NaN.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    specials: Specials
    signed: bool = True
    subnormals: bool = True
    torch_dtype: torch.dtype | None = field(default=None, compare=False)

    is_float = True

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def has_nan(self) -> bool:
        return self.specials is not Specials.NONE

    @property
    def has_inf(self) -> bool:
        return self.specials is Specials.IEEE

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number."""
        return (1 if self.subnormals else 0) - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite number (OCP's emax_elem for MX elements)."""
        top = (1 << self.exponent_bits) - 1
        if self.specials is Specials.IEEE or (
            self.specials is Specials.NAN_ONLY and self.mantissa_bits == 0
        ):
            top -= 1
        return top - self.bias

    @property
    def max(self) -> float:
        m = self.mantissa_bits
        top_mantissa = (1 << m) - 1
        if self.specials is Specials.NAN_ONLY and m > 0 and self.emax == (
            (1 << self.exponent_bits) - 1 - self.bias
        ):
            top_mantissa -= 1  # the all-ones code is NaN
        return (1 + top_mantissa / (1 << m)) * 2.0**self.emax

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        if not self.subnormals or self.mantissa_bits == 0:
            return self.min_normal
        return 2.0 ** (self.emin - self.mantissa_bits)

    @property
    def min(self) -> float:
        """Most negative finite value (the smallest positive value if unsigned)."""
        return -self.max if self.signed else self.min_normal

    def _values(self, codes: torch.Tensor) -> torch.Tensor:
        m, e = self.mantissa_bits, self.exponent_bits
        sign = (codes >> (m + e)) & 1 if self.signed else torch.zeros_like(codes)
        ef = (codes >> m) & ((1 << e) - 1)
        mf = (codes & ((1 << m) - 1)).double()
        top = (1 << e) - 1
        if self.subnormals:
            mag = torch.where(ef == 0, mf * 2.0 ** (self.emin - m),
                              (1 + mf / (1 << m)) * torch.exp2((ef - self.bias).double()))
        else:
            mag = (1 + mf / (1 << m)) * torch.exp2((ef - self.bias).double())
        if self.specials is Specials.IEEE:
            mag = torch.where(ef == top, torch.where(mf == 0, torch.inf, torch.nan), mag)
        elif self.specials is Specials.NAN_ONLY:
            mag = torch.where((ef == top) & (mf == (1 << m) - 1), torch.nan, mag)
        return torch.where(sign == 1, -mag, mag)

    # -- rounding ---------------------------------------------------------------------------

    def round(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN, saturate: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Nearest representable value of each element (float32), under ``rounding``.

        Overflow (|result| > max): clamped to +-max when ``saturate`` (Inf too), else Inf
        (IEEE formats), NaN (e4m3fn, e8m0: the OCP rule) or ValueError (fp6/fp4, which have
        neither); directed modes that round toward zero give max, as IEEE 754 says
        (``odd`` is not one of them: past max it overflows like nearest).
        NaN stays NaN where the format has NaN, otherwise ValueError.
        Inputs are taken as float32 (float64 inputs are rounded to float32 first).

        Formats with no mantissa bits (e8m0) round between 2**k and 2**(k+1) on a one-bit
        significand: "even" is 2**(k+1), so ties go up (3.0 -> 4.0, as ml_dtypes) and
        ``odd`` takes 2**k. e8m0 has no zero: 0 and anything below 2**-127 give 2**-127, its
        nearest value (ml_dtypes gives NaN for 0), and negative x is a ValueError.

        Example (fp4_e2m1): 2.5 -> 2, 3.5 -> 4, 5.0 -> 4 (ties to even); 7.0 -> 6 saturated.
        """
        x = _as_float(x, self.name)
        mode = Rounding.parse(rounding)
        if not self.has_nan and torch.isnan(x).any():
            raise ValueError(f"{self.name} has no NaN: x holds {int(torch.isnan(x).sum())} "
                             "NaN values")
        if not self.signed and (x < 0).any():
            raise ValueError(f"{self.name} is unsigned: x must be >= 0")
        if self.bits == 32:  # float32 to float32 is exact in every mode; only Inf can change
            return x.clamp(-self.max, self.max) if saturate else x.clone()
        fast = self.torch_dtype is not None and mode is Rounding.NEAREST_EVEN
        if fast and saturate:  # torch's cast is round-to-nearest-even; clamping first saturates
            return x.clamp(-self.max, self.max).to(self.torch_dtype).float()
        return self._round_exact(x, mode, saturate, generator).float()

    def _round_exact(self, x, mode, saturate, generator) -> torch.Tensor:
        # float64 holds every quantum of every format here exactly, so the scaling by
        # powers of two below never rounds: the only rounding is round_to_integer's.
        xd = x.double()
        _, e = torch.frexp(xd.abs())
        e = (e - 1).clamp(min=self.emin)  # floor(log2|x|), subnormal range shares emin's step
        step = torch.exp2((e - self.mantissa_bits).double())
        y = round_to_integer(xd / step, mode, generator) * step
        if not self.subnormals:
            y = torch.where(y == 0, torch.full_like(y, self.min_normal), y)
        over = y.abs() > self.max  # Inf included
        if over.any():
            clamped = torch.copysign(torch.full_like(y, self.max), xd)
            if saturate:
                fill = clamped
            else:
                # IEEE 754 7.4: a directed mode that rounds toward zero gives max, never Inf.
                to_max = mode.rounds_toward_zero(torch.signbit(xd)) & ~torch.isinf(xd)
                special_needed = over & ~to_max
                if self.specials is Specials.NONE and special_needed.any():
                    bad = xd[special_needed][0].item()
                    raise ValueError(f"{self.name} has no Inf or NaN: {int(special_needed.sum())} "
                                     f"values of x overflow max {self.max} (e.g. {bad}); pass "
                                     "saturate=True to clamp")
                special = torch.inf if self.has_inf else torch.nan
                fill = torch.where(to_max, clamped,
                                   torch.copysign(torch.full_like(y, special), xd))
            y = torch.where(over, fill, y)
        return y  # NaN went through every step above as NaN

    # -- bit patterns -----------------------------------------------------------------------

    def encode(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN, saturate: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Round, then return the bit patterns. NaN encodes as sign | all-ones exponent |
        quiet bit (IEEE: 0x7E for e5m2) or the all-ones code (e4m3fn: 0x7F, e8m0: 0xFF)."""
        y = self.round(x, rounding, saturate, generator)
        if self.torch_dtype is None or self.bits > 16:
            return self._bits_of(y)
        # y is exact in torch_dtype, so the cast only re-stores it (one pass, not twenty).
        codes = y.to(self.torch_dtype).view(torch.uint8 if self.bits == 8 else torch.int16)
        codes = codes if self.bits == 8 else codes.to(torch.int32) & 0xFFFF
        nan = torch.isnan(y)
        if nan.any():  # torch's NaN bit pattern varies by dtype: use this format's own
            codes[nan] = self._bits_of(y[nan])
        return codes

    def _bits_of(self, y: torch.Tensor) -> torch.Tensor:
        """Codes of float32 values that this format holds exactly (or NaN/Inf it has).

        Read off y's own float32 bit fields: re-bias the exponent and keep the top
        ``mantissa_bits`` of the mantissa; below min_normal the code is y / min_subnormal.
        """
        m, eb, bits = self.mantissa_bits, self.exponent_bits, self.bits
        u = y.view(torch.int32)
        mag = u & 0x7FFFFFFF
        code = (((mag >> 23) - 127 + self.bias) << m) | ((mag & 0x7FFFFF) >> (23 - m))
        if self.subnormals:
            a = y.abs()
            scale = 2.0 ** (m - self.emin)  # 1 / min_subnormal: 2**133 for bf16, so float64
            sub = (a.double() * scale if scale > 2.0**127 else a * scale).to(torch.int32)
            code = torch.where(a < self.min_normal, sub, code)
        top = (1 << eb) - 1
        if self.has_inf:
            code = torch.where(torch.isinf(y), top << m, code)
        if self.has_nan:
            nan_code = (top << m) | ((1 << (m - 1)) if self.has_inf else (1 << m) - 1)
            code = torch.where(torch.isnan(y), nan_code, code)
        if self.signed:
            code = code | ((u >> 31) & 1) << (bits - 1)
        if bits == 32:
            return code.long() & 0xFFFFFFFF
        return code.to(_code_dtype(bits))


@dataclass(frozen=True)
class BinaryFormat(_TableDecode):
    """One bit holding -1 (code 0) or +1 (code 1); zero rounds to +1 (sign with sign(0)=+1)."""

    name: str = "binary"
    bits: int = 1
    min: int = -1
    max: int = 1
    min_normal = 1
    min_subnormal = 1
    has_nan = False
    has_inf = False
    is_float = False
    signed = True

    def _values(self, codes):
        return codes * 2 - 1

    def round(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN, saturate: bool = True,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """sign(x) with sign(0) = +1; stochastic: +1 with probability (clamp(x,-1,1)+1)/2."""
        x = _as_float(x, self.name)
        if torch.isnan(x).any():
            raise ValueError("binary cannot represent NaN")
        mode = Rounding.parse(rounding)
        if mode is Rounding.STOCHASTIC:
            u = torch.rand(x.shape, generator=generator, device=x.device)
            return torch.where(u < (x.clamp(-1, 1) + 1) / 2, 1.0, -1.0)
        if mode is not Rounding.NEAREST_EVEN:
            raise ValueError("binary supports rounding nearest_even (sign) or stochastic; "
                             f"got {mode.value}")
        return torch.where(x >= 0, 1.0, -1.0)

    def encode(self, x, rounding: Rounding | str = Rounding.NEAREST_EVEN, saturate: bool = True,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return (self.round(x, rounding, saturate, generator) > 0).to(torch.uint8)


Format = IntFormat | FloatFormat | BinaryFormat
