"""Streaming observers: the ``Observer`` base, ``MinMax`` and ``MovingAverage``.

An observer sees a stream of batches (``update(x)``, as often as you like) and turns them
into a range ``(lo, hi)`` and quantization parameters for a scheme::

    obs = MinMax(axis=0)                 # one range per index of axis 0 (per channel)
    for w in batches: obs.update(w)
    lo, hi = obs.range()                 # tensors of shape [C]; 0-dim tensors if axis=None
    qp = obs.qparams("int8:channel")     # lb.QParams shaped like lowbit's scale: [C, 1]
    q = lb.quantize(w, "int8:channel", qp)

Input rules, the same for every observer (documented, tested):

* NaN or Inf in a batch raises ``ValueError`` naming how many; the observer is unchanged.
* An empty batch (0 elements) is ignored with a ``UserWarning`` and not counted.
* ``range()``/``qparams()`` before any (non-empty) batch raises ``RuntimeError``
  (``count == 0``); there are no sentinel values such as ``+inf`` minima.
* ``count`` is the number of batches seen.
"""

from __future__ import annotations

import warnings

import torch

from ..quant import PerChannel, PerTensor, QParams, Scheme, expected_scale_shape, qparams_from_range

__all__ = ["MinMax", "MovingAverage", "Observer"]


class Observer:
    """Base of all observers: input checks, the per-channel layout and ``qparams``.

    Args:
        axis: ``None`` for one range per tensor, or the axis whose every index gets its own
            range (``0``: output channels of a Linear weight; ``-1``: features of an
            activation). Batches must keep the size of that axis.

    Subclasses implement ``_observe(x2d, lo, hi)`` (``x2d`` is ``[C, m]``, float32, finite,
    one row per channel, ``C == 1`` per tensor; ``lo``/``hi`` its row minima/maxima) and ``_range(scheme)`` returning ``[C]`` tensors.
    """

    def __init__(self, axis: int | None = None):
        if axis is not None and not isinstance(axis, int):
            raise TypeError(f"axis must be None (per tensor) or an int; got {axis!r}")
        self.axis = axis
        self.count = 0  # batches seen
        self.shape: tuple[int, ...] | None = None  # shape of the last batch

    # -- input ----------------------------------------------------------------------------

    def update(self, x: torch.Tensor) -> Observer:
        """Observe one batch; returns ``self`` so calls chain."""
        x2d = self._as_rows(x)
        if x2d is None:
            return self
        lo, hi = torch.aminmax(x2d, dim=1)  # NaN propagates into lo and hi
        if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            finite = torch.isfinite(x2d)
            nan = int(torch.isnan(x2d).sum())
            inf = int((~finite).sum()) - nan
            raise ValueError(f"{type(self).__name__}.update: the batch holds {nan} NaN and "
                             f"{inf} Inf values (of {x2d.numel()}); observers take finite "
                             "values only, so clean or clamp the batch first")
        self._observe(x2d, lo, hi)
        self.count += 1
        self.shape = tuple(x.shape)
        return self

    def _as_rows(self, x) -> torch.Tensor | None:
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}.update: x must be a torch.Tensor; got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}.update: x must be a floating tensor; got {x.dtype}")
        if x.numel() == 0:
            warnings.warn(f"{name}.update: empty batch of shape {tuple(x.shape)} ignored",
                          UserWarning, stacklevel=3)
            return None
        x = x.detach().float()
        if self.axis is None:
            return x.reshape(1, -1)
        if x.dim() == 0 or not -x.dim() <= self.axis < x.dim():
            raise ValueError(f"{name}(axis={self.axis}) needs a tensor with that axis; got "
                             f"shape {tuple(x.shape)}")
        rows = x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        if self.shape is not None and rows.shape[0] != self.shape[self.axis]:
            raise ValueError(f"{name}(axis={self.axis}): this batch has {rows.shape[0]} "
                             f"channels, earlier batches had {self.shape[self.axis]}")
        return rows

    def _observe(self, x2d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> None:
        raise NotImplementedError

    # -- output ---------------------------------------------------------------------------

    def _check_seen(self) -> None:
        if self.count == 0:
            raise RuntimeError(f"{type(self).__name__}: no batch observed yet (count == 0); "
                               "call update(x) first")

    def _range(self, scheme: Scheme | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: float32 tensors of shape ``[C]`` (per channel) or 0-dim (per tensor)."""
        self._check_seen()
        return self._shape_range(*self._range(None))

    def _shape_range(self, lo, hi):
        lo, hi = lo.float(), hi.float()
        return (lo[0], hi[0]) if self.axis is None else (lo, hi)

    def qparams(self, scheme: Scheme | str) -> QParams:
        """``lb.QParams`` for ``scheme`` on the observed tensor's shape (the last batch's).

        The scheme's granularity must match the observer: ``PerTensor`` for ``axis=None``,
        ``PerChannel(axis)`` for ``axis``. The scale has lowbit's shape, so
        ``lb.quantize(x, scheme, obs.qparams(scheme))`` works as it is.
        """
        self._check_seen()
        scheme = Scheme.parse(scheme)
        ndim = len(self.shape)
        g = scheme.granularity
        if self.axis is None:
            ok = isinstance(g, PerTensor)
        else:
            ok = isinstance(g, PerChannel) and g.axis % max(ndim, 1) == self.axis % ndim
        if not ok or scheme.is_block_scaled:
            want = "tensor" if self.axis is None else f"PerChannel({self.axis})"
            raise ValueError(f"{type(self).__name__}(axis={self.axis}) gives {want} ranges; "
                             f"scheme {scheme} asks for {g}. Use an observer with the "
                             "scheme's axis, or lb.calib.mse_search / lb.choose_qparams for "
                             "groups and block formats")
        lo, hi = self._range(scheme)
        shape = expected_scale_shape(self.shape, scheme)
        return qparams_from_range(lo.float().reshape(shape), hi.float().reshape(shape), scheme)

    def __repr__(self):
        return f"{type(self).__name__}(axis={self.axis}, count={self.count})"


class MinMax(Observer):
    """The running minimum and maximum of everything seen.

    >>> MinMax().update(torch.tensor([1., -2.])).update(torch.tensor([3.])).range()
    (tensor(-2.), tensor(3.))
    """

    def __init__(self, axis: int | None = None):
        super().__init__(axis)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _observe(self, x2d, lo, hi):
        if self.count == 0:
            self.lo, self.hi = lo, hi
        else:
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)

    def _range(self, scheme):
        return self.lo, self.hi


class MovingAverage(Observer):
    """Exponential moving average of each batch's min and max (the QAT running range).

    The first batch sets the range; each later batch does
    ``running = momentum * running + (1 - momentum) * current`` for min and max alike.

    >>> ma = MovingAverage(momentum=0.9)
    >>> ma.update(torch.tensor([0., 10.])).update(torch.tensor([0., 20.])).range()[1]
    tensor(11.)                       # 0.9 * 10 + 0.1 * 20
    """

    def __init__(self, momentum: float = 0.9, axis: int | None = None):
        super().__init__(axis)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got {momentum!r}")
        self.momentum = float(momentum)
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _observe(self, x2d, lo, hi):
        lo, hi = lo.double(), hi.double()
        if self.count == 0:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = m * self.lo + (1 - m) * lo
            self.hi = m * self.hi + (1 - m) * hi

    def _range(self, scheme):
        return self.lo, self.hi
