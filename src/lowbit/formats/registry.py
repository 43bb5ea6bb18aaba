"""Every named format, one line each, and lookup by name."""

from __future__ import annotations

import difflib

import torch

from .spec import BinaryFormat, FloatFormat, Format, IntFormat, Specials

__all__ = ["FORMATS", "get", "names"]

_F = FloatFormat
FORMATS: dict[str, Format] = {
    f.name: f
    for f in [
        *(IntFormat(f"int{b}", b) for b in range(2, 9)),
        *(IntFormat(f"uint{b}", b, signed=False) for b in range(1, 9)),
        IntFormat("ternary", 2, narrow=True),
        BinaryFormat(),
        _F("fp8_e4m3fn", 4, 3, 7, Specials.NAN_ONLY, torch_dtype=torch.float8_e4m3fn),
        _F("fp8_e5m2", 5, 2, 15, Specials.IEEE, torch_dtype=torch.float8_e5m2),
        _F("fp6_e3m2", 3, 2, 3, Specials.NONE),
        _F("fp6_e2m3", 2, 3, 1, Specials.NONE),
        _F("fp4_e2m1", 2, 1, 1, Specials.NONE),
        _F("fp16", 5, 10, 15, Specials.IEEE, torch_dtype=torch.float16),
        _F("bf16", 8, 7, 127, Specials.IEEE, torch_dtype=torch.bfloat16),
        _F("fp32", 8, 23, 127, Specials.IEEE, torch_dtype=torch.float32),
        _F("e8m0", 8, 0, 127, Specials.NAN_ONLY, signed=False, subnormals=False),
    ]
}

# The names torch and ml_dtypes use for the same formats.
_ALIASES = {
    "float8_e4m3fn": "fp8_e4m3fn", "float8_e5m2": "fp8_e5m2", "float6_e3m2fn": "fp6_e3m2",
    "float6_e2m3fn": "fp6_e2m3", "float4_e2m1fn": "fp4_e2m1", "float16": "fp16", "half": "fp16",
    "bfloat16": "bf16", "float32": "fp32", "float": "fp32", "float8_e8m0fnu": "e8m0",
}


def names() -> list[str]:
    """All format names, in table order."""
    return list(FORMATS)


def get(name: str | Format) -> Format:
    """The format called ``name`` (a format object is returned as it is).

    >>> get("fp8_e4m3fn").max
    448.0
    """
    if isinstance(name, (IntFormat, FloatFormat, BinaryFormat)):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in FORMATS:
        return FORMATS[key]
    close = difflib.get_close_matches(key, list(FORMATS) + list(_ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}.{hint}")
