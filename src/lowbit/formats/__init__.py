"""Number formats as data: encode, decode, round, and bit packing.

>>> import lowbit as lb
>>> f = lb.formats.get("fp4_e2m1")
>>> f.max, f.min_normal, f.min_subnormal
(6.0, 1.0, 0.5)
>>> f.round(torch.tensor([2.5, 5.0]))   # ties go to the even code: 2.5 -> 2, 5 -> 4
tensor([2., 4.])
"""

from .packing import pack, packed_length, unpack
from .registry import FORMATS, get, names
from .rounding import Rounding, round_to_integer
from .spec import BinaryFormat, FloatFormat, Format, IntFormat, Specials

__all__ = [
    "FORMATS", "BinaryFormat", "FloatFormat", "Format", "IntFormat", "Rounding", "Specials",
    "get", "names", "pack", "packed_length", "round_to_integer", "unpack",
]
