"""Which quantized module replaces which float module, and how to find a class by its kind.

``@register(torch.nn.Linear)`` on a quantized class records both maps; conversion walks a
model once and looks each module's type up here. The ``lowbit_kind`` string is what a
saved model's manifest names.
"""

from __future__ import annotations

import torch

__all__ = ["KINDS", "QUANTIZED", "quantized_class", "register"]

QUANTIZED: dict[type, type] = {}  # float module type -> quantized module class
KINDS: dict[str, type] = {}  # lowbit_kind -> quantized module class


def register(*float_types: type):
    """Class decorator: the class quantizes modules of ``float_types`` (may be none)."""

    def wrap(cls):
        kind = cls.__dict__.get("lowbit_kind")
        if not isinstance(kind, str):
            raise TypeError(f"{cls.__qualname__} needs a class attribute lowbit_kind")
        if kind in KINDS and KINDS[kind] is not cls:
            raise ValueError(f"lowbit_kind {kind!r} is already taken by {KINDS[kind].__qualname__}")
        KINDS[kind] = cls
        for t in float_types:
            QUANTIZED[t] = cls
        return cls

    return wrap


def quantized_class(module: torch.nn.Module) -> type | None:
    """The quantized class for ``module`` (exact type first, then its bases), or None."""
    for t in type(module).__mro__:
        if t in QUANTIZED:
            return QUANTIZED[t]
    return None
