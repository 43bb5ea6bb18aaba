"""Memory layouts for kernels: Ascend's FRACTAL_NZ, and int4 rows aligned to 64 bytes.

FRACTAL_NZ (Ascend's "N-Z" fractal format) stores a matrix as column blocks of width
``n0`` (16 elements; 32 for int8, i.e. 32 bytes), each block holding all the rows, padded
to a multiple of ``m0`` = 16, one after another::

    ND [..., m, n]  --pad m to m0, n to n0-->  [..., m', n']  -->  NZ [..., n'/n0, m', n0]

Worked example, m=3, n=5, m0=2, n0=2 (padding shown as 0)::

    ND            padded to 4 x 6        NZ [3, 4, 2]: block j = columns 2j, 2j+1
    a b c d e     a b c d e 0            [[a b] [f g] [k l] [0 0]]    j = 0
    f g h i j     f g h i j 0            [[c d] [h i] [m n] [0 0]]    j = 1
    k l m n o     k l m n o 0            [[e 0] [j 0] [o 0] [0 0]]    j = 2
                  0 0 0 0 0 0

``from_fractal_nz(z, (3, 5))`` drops the padding and gives the ND matrix back exactly.

Aligned int4: the canonical packing (two codes per byte, element 0 in the low nibble,
rows of ceil(K/2) bytes) with each row padded with zero bytes to a multiple of 64 bytes,
so every row starts on a cache line (torch's CPU allocator aligns buffers to 64 bytes).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ALIGN", "from_aligned_int4", "from_fractal_nz", "to_aligned_int4", "to_fractal_nz"]

ALIGN = 64


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def to_fractal_nz(x: Tensor, m0: int = 16, n0: int | None = None) -> Tensor:
    """ND ``[..., m, n]`` -> FRACTAL_NZ ``[..., n'/n0, m', n0]`` (zero padded).

    Args:
        x: a tensor with at least 2 dimensions.
        m0: row padding multiple (16).
        n0: column block width; default 32 for int8/uint8 tensors, 16 otherwise.
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x: a tensor with at least 2 dimensions is required; got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if n0 is None:
        n0 = 32 if x.dtype in (torch.int8, torch.uint8) else 16
    if m0 < 1 or n0 < 1:
        raise ValueError(f"m0 and n0 must be positive; got m0={m0}, n0={n0}")
    m, n = x.shape[-2:]
    mp, np_ = _ceil(m, m0), _ceil(n, n0)
    xp = torch.nn.functional.pad(x, (0, np_ - n, 0, mp - m)) if (mp, np_) != (m, n) else x
    z = xp.reshape(*x.shape[:-2], mp, np_ // n0, n0).transpose(-3, -2)
    return z.contiguous()


def from_fractal_nz(z: Tensor, shape) -> Tensor:
    """FRACTAL_NZ ``[..., n1, m', n0]`` -> ND of ``shape`` ``[..., m, n]`` (padding dropped)."""
    shape = tuple(int(s) for s in shape)
    if not isinstance(z, Tensor) or z.dim() < 3 or len(shape) != z.dim() - 1:
        raise ValueError(f"z: expected [..., n1, m', n0] for ND shape {shape}; got "
                         f"{getattr(z, 'shape', type(z).__name__)}")
    n1, mp, n0 = z.shape[-3:]
    m, n = shape[-2:]
    if tuple(z.shape[:-3]) != shape[:-2] or not (m <= mp and (n1 - 1) * n0 < n <= n1 * n0):
        raise ValueError(f"z of shape {tuple(z.shape)} does not hold an ND tensor of shape "
                         f"{shape}")
    nd = z.transpose(-3, -2).reshape(*z.shape[:-3], mp, n1 * n0)
    return nd[..., :m, :n].contiguous()


def to_aligned_int4(packed: Tensor) -> Tensor:
    """Canonical packed int4 ``uint8 [N, ceil(K/2)]`` -> ``uint8 [N, R]``, R a multiple of
    64, rows zero-padded. Example: K=100 -> 50 bytes per row -> 64."""
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError("packed: expected canonical packed int4 codes, uint8 [N, ceil(K/2)]")
    n, b = packed.shape
    out = torch.zeros(n, max(_ceil(b, ALIGN), ALIGN), dtype=torch.uint8)
    out[:, :b] = packed
    return out


def from_aligned_int4(aligned: Tensor, k: int) -> Tensor:
    """``uint8 [N, R]`` from :func:`to_aligned_int4` -> canonical ``uint8 [N, ceil(K/2)]``."""
    b = -(-int(k) // 2)
    if not isinstance(aligned, Tensor) or aligned.dtype != torch.uint8 or aligned.dim() != 2 \
            or aligned.shape[1] % ALIGN or aligned.shape[1] < b:
        raise ValueError(f"aligned: expected uint8 [N, R] with R a multiple of {ALIGN} and >= "
                         f"{b} (K={k}); got {getattr(aligned, 'shape', None)}")
    return aligned[:, :b].contiguous()
