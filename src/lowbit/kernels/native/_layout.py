"""A8W4 weight layouts: canonical int4 packing and the kernel's repacked form.

Canonical (project convention, ONNX INT4), W codes [N, K] row-major, uint8 [N, K/2]::

    byte [n, k/2]:   bit 7 ........ 4   3 ........ 0
                     code[n, k + 1]     code[n, k]        (k even)

Symmetric weights use signed two's-complement codes -8..7 (e.g. -1 -> 0b1111) and no
zero point; asymmetric ones use unsigned codes 0..15 and an integer zero point per group.

Repacked (what the kernel reads; still 4 bits per weight). Codes become offset-binary
``u`` = 0..15 (symmetric: ``u = q + 8``, i.e. the nibble XOR 0b1000, zero point 8).
Rows are padded to NB = ceil(N / 16) blocks of 16, K to Kp (a multiple of 8), with u = 0.
For block b and octet o (k = 8o .. 8o+7) there are 64 bytes; byte ``4*j + i``::

    bit 7 ............ 4   3 ............ 0
        u[16b+j, 8o+4+i]       u[16b+j, 8o+i]        j = 0..15 (column), i = 0..3

so one 64-byte load ANDed with 0x0F gives 16 dwords of 4 k's (vpdpbusd operand) for
k = 8o..8o+3, and shifted right by 4 the same for k = 8o+4..8o+7. Example, N=16, K=8,
u[j, k] = k: every dword j is bytes (0x40, 0x51, 0x62, 0x73). Scales and zero points are
repacked to [NB, G, 16] (fp32 / int32) so one 64-byte load matches one weight block.
"""

from __future__ import annotations

import functools
import mmap
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["MAX_GROUP", "PackedA8W4", "pack_a8w4", "unpack_a8w4"]

# |partial sums| <= 2 * 15 * 127 * g must stay below 2^31.
MAX_GROUP = 1 << 19

_HUGE = 1 << 21  # a transparent huge page on x86-64


def in_huge_pages(t: Tensor) -> Tensor:
    """A copy of ``t`` whose full 2 MiB stretches are backed by transparent huge pages
    where the OS gives them (Linux with THP ``madvise`` or ``always``), else ``t`` itself.

    Why: a weight of several MiB that is meant to stay in the L3 (M = 1, weights hot) in
    4 KiB pages lands on physical pages that fill some L3 sets more than others, so part
    of it misses, by a different amount in every process: A8W8 1 x 4096 x 4096 read 115-139
    us per call in three processes with 4 KiB pages, 111-116 us with huge pages. Huge pages
    cover the L3's sets evenly (and need fewer TLB entries). Memory: the unaligned head of
    the mapping is never touched and the tail after the last full huge page stays in 4 KiB
    pages, so no physical memory is wasted."""
    n = t.numel() * t.element_size()
    if n < _HUGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return t
    try:
        m = mmap.mmap(-1, n + _HUGE, flags=mmap.MAP_PRIVATE)  # shared memory has no THP
        buf = torch.frombuffer(m, dtype=torch.uint8)  # keeps m alive as long as buf
        off = -buf.data_ptr() % _HUGE
        m.madvise(mmap.MADV_HUGEPAGE, off, n // _HUGE * _HUGE)  # before the first touch
    except (OSError, ValueError):  # no THP here (or no such memory): 4 KiB pages do
        return t
    out = buf[off:off + n].view(t.dtype).view(t.shape)
    out.copy_(t)
    return out


@dataclass(frozen=True)
class PackedA8W4:
    """An int4 weight [N, K] repacked for the native A8W4 kernel (see module docstring).

    Attributes:
        data: uint8 [NB, Kp/8, 64], the repacked 4-bit codes.
        scales: fp32 [NB, G, 16], per-group weight scales (0 in padded columns).
        zeros: int32 [NB, G, 16], zero points of the offset-binary codes (8 if symmetric).
        out_features: N.  in_features: K.  group_size: g (g == K means per channel).
        symmetric: True for signed codes without zero point.
    """

    data: Tensor
    scales: Tensor
    zeros: Tensor
    out_features: int
    in_features: int
    group_size: int
    symmetric: bool

    @property
    def num_groups(self) -> int:
        """G = K / g."""
        return self.in_features // self.group_size

    @property
    def padded_in_features(self) -> int:
        """Kp: K rounded up to a multiple of 8."""
        return self.data.shape[1] * 8

    @property
    def octets_per_group(self) -> int:
        """Number of 8-k octets in one group as the kernel walks it (Kp / 8 if per channel)."""
        return self.data.shape[1] // self.num_groups

    @functools.cached_property
    def kernel_args(self) -> tuple[int, ...]:
        """(K, Kp, data ptr, scales ptr, zeros ptr, G, octets per group, zconst) for the C
        kernel; zconst is 8 for symmetric weights (one zero point for all), else -1."""
        return (self.in_features, self.padded_in_features, self.data.data_ptr(),
                self.scales.data_ptr(), self.zeros.data_ptr(), self.num_groups,
                self.octets_per_group, 8 if self.symmetric else -1)

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes, scales and zero points, padding included."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scales, self.zeros))


def _offset_codes(weight: Tensor, k: int, symmetric: bool) -> Tensor:
    """Codes as offset-binary uint8 [N, K] (0..15) from canonical packed bytes or codes."""
    if weight.dtype == torch.uint8 and weight.shape[1] * 2 == k:
        w = weight.contiguous()
        u = torch.stack((w & 0x0F, w >> 4), dim=-1).reshape(w.shape[0], k)
        return u ^ 0x08 if symmetric else u
    if weight.dtype.is_floating_point or weight.dtype in (torch.bool, torch.complex64):
        raise TypeError(f"weight: expected integer codes or packed uint8, got {weight.dtype}")
    lo, hi = (-8, 7) if symmetric else (0, 15)
    c = weight.to(torch.int32)
    if c.numel() and (int(c.min()) < lo or int(c.max()) > hi):
        kind = "symmetric (no zeros)" if symmetric else "asymmetric"
        raise ValueError(f"weight: {kind} int4 codes must lie in [{lo}, {hi}], "
                         f"got [{int(c.min())}, {int(c.max())}]")
    return (c + 8 if symmetric else c).to(torch.uint8)


def pack_a8w4(weight: Tensor, scales: Tensor, zeros: Tensor | None = None, *,
              group_size: int) -> PackedA8W4:
    """Repack an int4 weight once, at load time, into the kernel layout.

    Args:
        weight: either canonical packed uint8 [N, K/2] (low nibble = even k), or codes
            [N, K] of any integer dtype: -8..7 if symmetric, 0..15 if asymmetric.
            A uint8 tensor whose width is half of ``scales.shape[1] * group_size`` is
            read as packed.
        scales: fp32 [N, K/g] weight scales (one column when per channel).
        zeros: None for symmetric weights, else integer [N, K/g] zero points 0..15.
        group_size: g; a multiple of 8 dividing K, or K itself (per channel).

    Returns:
        PackedA8W4 holding the repacked codes, scales and zero points.

    Raises:
        TypeError / ValueError naming the argument on a wrong dtype, shape or value.
    """
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError("weight: expected a 2-D tensor [N, K] or packed [N, K/2]")
    if not isinstance(scales, Tensor) or scales.dim() != 2:
        raise ValueError("scales: expected a 2-D fp32 tensor [N, K/group_size]")
    if scales.dtype != torch.float32:
        raise TypeError(f"scales: expected torch.float32, got {scales.dtype}")
    g, n = int(group_size), weight.shape[0]
    packed = weight.dtype == torch.uint8 and weight.shape[1] * 2 == scales.shape[1] * g
    k = weight.shape[1] * 2 if packed else weight.shape[1]
    if g < 1:
        raise ValueError(f"group_size: must be positive, got {g}")
    if k % 2:
        raise ValueError(f"in_features K={k} must be even (two int4 codes per byte)")
    if k % g:
        raise ValueError(f"in_features K={k} is not a multiple of group_size={g}")
    if g % 8 and g != k:
        raise ValueError(f"group_size={g} must be a multiple of 8 or equal in_features K={k}")
    if g > MAX_GROUP:
        raise ValueError(f"group_size={g} (K={k} if per channel) exceeds {MAX_GROUP}: the "
                         "int32 group accumulators could overflow")
    groups = k // g
    if tuple(scales.shape) != (n, groups):
        raise ValueError(f"scales: expected shape [{n}, {groups}] for N={n}, K={k}, "
                         f"group_size={g}; got {list(scales.shape)}")
    symmetric = zeros is None
    if zeros is not None:
        if not isinstance(zeros, Tensor) or tuple(zeros.shape) != (n, groups):
            raise ValueError(f"zeros: expected shape [{n}, {groups}]")
        if zeros.dtype.is_floating_point:
            raise TypeError(f"zeros: expected integer zero points, got {zeros.dtype}")
        if zeros.numel() and (int(zeros.min()) < 0 or int(zeros.max()) > 15):
            raise ValueError("zeros: zero points must lie in [0, 15]")
    u = _offset_codes(weight, k, symmetric)
    nb, kp = (n + 15) // 16, (k + 7) // 8 * 8
    o = kp // 8
    up = torch.zeros(nb * 16, kp, dtype=torch.uint8)
    up[:n, :k] = u
    t = up.view(nb, 16, o, 2, 4).permute(0, 2, 1, 3, 4)  # [NB, O, 16(j), 2(half), 4(i)]
    data = (t[..., 0, :] | (t[..., 1, :] << 4)).reshape(nb, o, 64).contiguous()
    sc = torch.zeros(nb * 16, groups, dtype=torch.float32)
    sc[:n] = scales
    zp = torch.zeros(nb * 16, groups, dtype=torch.int32)
    zp[:n] = 8 if symmetric else zeros.to(torch.int32)  # type: ignore[union-attr]
    return PackedA8W4(
        data=in_huge_pages(data),
        scales=sc.view(nb, 16, groups).permute(0, 2, 1).contiguous(),
        zeros=zp.view(nb, 16, groups).permute(0, 2, 1).contiguous(),
        out_features=n, in_features=k, group_size=g, symmetric=symmetric,
    )


def unpack_a8w4(pw: PackedA8W4) -> tuple[Tensor, Tensor, Tensor | None]:
    """Exact inverse of :func:`pack_a8w4` back to the canonical form.

    Returns:
        (packed uint8 [N, K/2], scales fp32 [N, G], zeros uint8 [N, G] or None).
    """
    n, k, groups = pw.out_features, pw.in_features, pw.num_groups
    nb, o = pw.data.shape[0], pw.data.shape[1]
    d = pw.data.view(nb, o, 16, 4)
    t = torch.stack((d & 0x0F, d >> 4), dim=3)  # [NB, O, 16, 2, 4]
    u = t.permute(0, 2, 1, 3, 4).reshape(nb * 16, o * 8)[:n, :k]
    if pw.symmetric:
        u = u ^ 0x08
    u = u.reshape(n, k // 2, 2)
    packed = (u[..., 0] | (u[..., 1] << 4)).contiguous()
    scales = pw.scales.permute(0, 2, 1).reshape(nb * 16, groups)[:n].contiguous()
    zeros = None
    if not pw.symmetric:
        zeros = pw.zeros.permute(0, 2, 1).reshape(nb * 16, groups)[:n].to(torch.uint8)
    return packed, scales, zeros
