"""Granularity: which elements share one scale, as a typed object that reduces to a block.

Every granularity is the same computation with a different block shape: the tensor is
viewed as ``[n0, b0, n1, b1, ...]`` and one scale (and zero point) is kept per block.

======================  ==================  ===================  ==================
granularity             x [N, K]            block shape          scale shape
======================  ==================  ===================  ==================
``PerTensor()``         one scale           (N, K)               (1, 1)
``PerChannel(0)``       per output row      (1, K)               (N, 1)
``PerToken()``          per row, at run     (1, K)               (N, 1)
``PerGroup(128)``       groups along K      (1, 128)             (N, K/128)
``PerBlock(32)``        MX blocks along K   (1, 32)              (N, K/32)
======================  ==================  ===================  ==================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "Granularity",
    "PerBlock",
    "PerChannel",
    "PerGroup",
    "PerTensor",
    "PerToken",
    "blocked_view",
    "scale_shape",
]


class Granularity:
    """Base class: ``block_shape(shape)`` says how many elements share one scale per axis."""

    def block_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        raise NotImplementedError

    def padded_last(self, n: int) -> int:
        """Length the last axis must be padded to (only groups and blocks need padding)."""
        return n


@dataclass(frozen=True)
class PerTensor(Granularity):
    def block_shape(self, shape):
        return tuple(shape)

    def __str__(self):
        return "tensor"


@dataclass(frozen=True)
class PerChannel(Granularity):
    """One scale per index along ``axis`` (0 = output channel of a Linear/Conv weight)."""

    axis: int = 0

    def block_shape(self, shape):
        if not shape:
            raise ValueError("PerChannel needs a tensor with at least one dimension")
        axis = self.axis % len(shape) if -len(shape) <= self.axis < len(shape) else None
        if axis is None:
            raise ValueError(f"PerChannel(axis={self.axis}) is out of range for shape "
                             f"{tuple(shape)}")
        return tuple(1 if i == axis else s for i, s in enumerate(shape))

    def __str__(self):
        return "channel" if self.axis == 0 else f"channel{self.axis}"


@dataclass(frozen=True)
class PerToken(Granularity):
    """One scale per row (every index of all axes but the last), computed at run time."""

    def block_shape(self, shape):
        if not shape:
            raise ValueError("PerToken needs a tensor with at least one dimension")
        return (1,) * (len(shape) - 1) + (shape[-1],)

    def __str__(self):
        return "token"


@dataclass(frozen=True)
class PerGroup(Granularity):
    """Groups of ``size`` consecutive elements along the last axis."""

    size: int = 128

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"group size must be a positive integer; got {self.size!r}")

    def block_shape(self, shape):
        if not shape:
            raise ValueError(f"{self} needs a tensor with at least one dimension")
        if shape[-1] % self.size:
            raise ValueError(
                f"{type(self).__name__}({self.size}): the last axis has {shape[-1]} elements, "
                f"which is not a multiple of the {self.kind} size {self.size}; pad the input "
                f"(pad=True pads with zeros) or choose a size that divides {shape[-1]}")
        return (1,) * (len(shape) - 1) + (self.size,)

    def padded_last(self, n):
        return -(-n // self.size) * self.size

    kind = "group"

    def __str__(self):
        return f"g{self.size}"


@dataclass(frozen=True)
class PerBlock(PerGroup):
    """MX blocks: ``size`` elements along the last axis share one power-of-two scale."""

    size: int = 32
    kind = "block"

    def __str__(self):
        return f"b{self.size}"


def scale_shape(shape: tuple[int, ...], block: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s // b for s, b in zip(shape, block))


def blocked_view(x: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """View ``x`` as ``[n0, b0, n1, b1, ...]``; reduce over odd dims for per-block stats."""
    dims = []
    for s, b in zip(x.shape, block):
        dims += [s // b, b]
    return x.reshape(dims)
