"""Bit packing of sub-byte codes along the last axis.

Canonical and kernel-independent: element 0 sits in the lowest bits (the ONNX INT4
convention). A kernel that wants another layout repacks after loading.

::

    bits=4:  byte j = code[2j] | code[2j+1] << 4            [ c1 | c0 ]
    bits=2:  byte j = c[4j] | c[4j+1] << 2 | ... << 6       [ c3 | c2 | c1 | c0 ]
    bits=6:  3 bytes hold 4 codes, little endian:            c0 = bits 0-5, c1 = 6-11,
             c2 = 12-17, c3 = 18-23 of the 24-bit word
    bits=3,5,7: the same little-endian bit stream, in groups of lcm(bits, 8) bits
             (8 codes in 3, 5 or 7 bytes)

A length that does not fill the last byte is padded with zero codes; ``unpack`` takes the
logical length ``n`` and drops the padding.
"""

from __future__ import annotations

import math

import torch

__all__ = ["pack", "packed_length", "unpack"]

_SUPPORTED = (1, 2, 3, 4, 5, 6, 7, 8)


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in _SUPPORTED:
        raise ValueError(f"bits must be one of {_SUPPORTED}; got {bits!r}")


def _check_n(n: int, fn: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{fn}: n must be a non-negative int (the number of codes); got {n!r}")


def _group(bits: int) -> tuple[int, int]:
    """(codes, bytes) per packing group: the shortest run of whole bytes that holds a whole
    number of codes (8 codes in 5 bytes for 5 bits; at most 56 bits, so an int64 holds it)."""
    total = math.lcm(bits, 8)
    return total // bits, total // 8


def packed_length(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits take along the packed axis."""
    _check_bits(bits)
    _check_n(n, "packed_length")
    per, nbytes = _group(bits)
    return -(-n // per) * nbytes


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) along the last axis into uint8.

    >>> pack(torch.tensor([1, 2, 3], dtype=torch.uint8), bits=4)
    tensor([33,  3], dtype=torch.uint8)
    """
    _check_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"pack: codes must be an integer tensor; got {got}")
    if codes.dim() == 0:
        raise ValueError("pack: codes must have at least one dimension")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"pack: codes must lie in [0, {(1 << bits) - 1}] for bits={bits}; "
                         f"got [{int(c.min())}, {int(c.max())}]")
    if bits == 8:
        return c.to(torch.uint8)
    per, nbytes = _group(bits)
    lead, n = tuple(codes.shape[:-1]), codes.shape[-1]
    pad = -n % per
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*lead, (n + pad) // per, per)  # explicit sizes: -1 fails on empty tensors
    shifts = torch.arange(per, dtype=torch.int64, device=c.device) * bits
    word = (c << shifts).sum(-1, dtype=torch.int64)  # fields are disjoint: sum == or
    out = torch.stack([(word >> (8 * i)) & 0xFF for i in range(nbytes)], dim=-1)
    return out.to(torch.uint8).reshape(*lead, packed_length(n, bits))


def unpack(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack``: uint8 [..., packed_length(n, bits)] -> uint8 codes [..., n]."""
    _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"unpack: packed must be a uint8 tensor; got {got}")
    _check_n(n, "unpack")
    if packed.dim() == 0 or packed.shape[-1] != packed_length(n, bits):
        raise ValueError(f"unpack: last axis of packed must be packed_length({n}, {bits}) = "
                         f"{packed_length(n, bits)}; got shape {tuple(packed.shape)}")
    if bits == 8:
        return packed.clone()
    per, nbytes = _group(bits)
    lead, groups = tuple(packed.shape[:-1]), packed.shape[-1] // nbytes
    p = packed.to(torch.int64).reshape(*lead, groups, nbytes)
    p = (p << (torch.arange(nbytes, dtype=torch.int64, device=p.device) * 8)).sum(
        -1, dtype=torch.int64)
    shifts = torch.arange(per, dtype=torch.int64, device=p.device) * bits
    out = (p.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return out.reshape(*lead, groups * per)[..., :n].to(torch.uint8)
