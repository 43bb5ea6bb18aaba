"""Rounding modes, and rounding of real numbers to integers under each of them.

Every number format rounds the same way: it scales a value so that one unit in the last
place becomes 1, rounds that to an integer here, and scales back. So this is the only
place that knows what "nearest-even" or "round-to-odd" mean.
"""

from __future__ import annotations

import enum

import torch

__all__ = ["Rounding", "round_to_integer"]


class Rounding(enum.Enum):
    """How a value between two representable neighbours is resolved.

    Ascend names in brackets: NEAREST_EVEN (CAST_RINT), NEAREST_AWAY (CAST_ROUND),
    TOWARD_ZERO (CAST_TRUNC), FLOOR (CAST_FLOOR), CEIL (CAST_CEIL), ODD (CAST_ODD).
    """

    NEAREST_EVEN = "nearest_even"
    NEAREST_AWAY = "nearest_away"
    TOWARD_ZERO = "toward_zero"
    FLOOR = "floor"
    CEIL = "ceil"
    ODD = "odd"
    STOCHASTIC = "stochastic"

    @classmethod
    def parse(cls, value: Rounding | str) -> Rounding:
        """Accept a Rounding or its name ("nearest-even", "nearest_even", "rne", ...)."""
        if isinstance(value, cls):
            return value
        key = str(value).strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        try:
            return cls(key)
        except ValueError:
            allowed = ", ".join(m.value for m in cls)
            raise ValueError(f"rounding must be one of {allowed}; got {value!r}") from None

    def rounds_toward_zero(self, negative: torch.Tensor) -> torch.Tensor:
        """Where this directed mode moves values toward zero (for overflow: IEEE 754 7.4)."""
        if self is Rounding.TOWARD_ZERO:
            return torch.ones_like(negative)
        if self is Rounding.FLOOR:
            return ~negative
        if self is Rounding.CEIL:
            return negative
        return torch.zeros_like(negative)


_ALIASES = {
    "rne": "nearest_even", "rint": "nearest_even", "nearest": "nearest_even",
    "round": "nearest_away", "rna": "nearest_away", "trunc": "toward_zero",
    "rtz": "toward_zero", "round_to_odd": "odd", "rto": "odd", "sr": "stochastic",
}


def round_to_integer(
    r: torch.Tensor, mode: Rounding, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Round each element of the floating tensor ``r`` to an integer value (same dtype).

    Exact for every mode: the fractional part ``r - trunc(r)`` of a float is exact, so no
    mode relies on adding 0.5 (which itself rounds once ``|r| >= 2**(p-1)``).

    Examples (nearest_even / nearest_away / odd): 2.5 -> 2 / 3 / 3; -0.5 -> -0 / -1 / -1.
    Stochastic rounding goes up with probability equal to the fraction, so it is unbiased,
    and only ever returns ``floor(r)`` or ``ceil(r)``. Every mode keeps the sign of a zero
    result (-0.3 -> -0.0) and leaves +-Inf as they are.
    """
    if mode is Rounding.NEAREST_EVEN:
        return torch.round(r)
    if mode is Rounding.TOWARD_ZERO:
        return torch.trunc(r)
    if mode is Rounding.FLOOR:
        return torch.floor(r)
    if mode is Rounding.CEIL:
        return torch.ceil(r)
    if mode is Rounding.STOCHASTIC:
        low = torch.floor(r)
        u = torch.rand(r.shape, generator=generator, dtype=r.dtype, device=r.device)
        # copysign keeps the sign of a zero result (-0.3 -> -0, never +0), as every other mode.
        return torch.copysign(low + (u < (r - low)).to(r.dtype), r)
    t = torch.trunc(r)
    frac = (r - t).abs()
    away = torch.copysign(torch.ones_like(r), r)
    if mode is Rounding.NEAREST_AWAY:
        return torch.where(frac >= 0.5, t + away, t)
    # ODD: an inexact result takes the odd neighbour (never creates a false tie later).
    bump = (frac != 0) & (torch.remainder(t, 2) == 0)
    return torch.where(bump, t + away, t)
