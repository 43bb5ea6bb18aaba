"""FakeQuant: the stateful shell around ``lb.fake_quantize`` that QAT modules hold.

One ``FakeQuant`` quantizes one tensor role (a layer's weight or its input) with one
Scheme, and knows where its quantization parameters come from (``source``):

=============  ==========================================================================
``"tensor"``   from the tensor itself, every call: min-max (``lb.choose_qparams``) or,
               with ``clip="mse"``, ``lb.calib.mse_search``; weights under
               ``ranges="ema"``, and every per-token or MX/NVFP4 (block-scaled) scheme.
``"ema"``      a moving average of each training batch's min/max
               (``lb.calib.MovingAverage(momentum)``), frozen in eval mode; per-tensor
               activations under ``ranges="ema"``.
``"lsq"``      a learned step (``torch.nn.Parameter``), initialised from the first batch
               as ``2 * mean|x| / sqrt(Qp)`` and trained with the LSQ gradient
               (``lowbit.qat.lsq``); plain symmetric schemes under ``ranges="lsq"``.
=============  ==========================================================================

The forward pass is always quantize-then-dequantize with lowbit's arithmetic, and
``qparams(x)`` returns the exact parameters used, so ``lowbit.qat.convert`` builds real
quantized modules holding the same codes.
"""

from __future__ import annotations

import torch

from ..calib import MovingAverage, mse_search
from ..quant import (
    PerTensor,
    QParams,
    Scheme,
    choose_qparams,
    expected_scale_shape,
    fake_quantize,
    qparams_from_range,
)
from .lsq import check_lsq_scheme, lsq_fake_quantize, lsq_init

__all__ = ["SOURCES", "FakeQuant"]

SOURCES = ("tensor", "ema", "lsq")
CLIPS = ("minmax", "mse")


class FakeQuant(torch.nn.Module):
    """Fake-quantize one tensor role with ``scheme``; see the module docstring.

    Args:
        scheme: a ``Scheme`` or scheme string.
        source: ``"tensor"``, ``"ema"`` or ``"lsq"`` (where the qparams come from).
        shape: for ``"lsq"`` on a granularity other than per tensor, the shape of the tensor
            it will see (a weight's), to size the step.
        momentum: the moving average's momentum (``"ema"``).
        clip: ``"minmax"`` or ``"mse"`` (``"tensor"`` source only: how a weight's range is
            chosen from its values). ``"mse"`` searches 100 candidate ranges on every call:
            meant for post-training calibration; for training, learn the step (``"lsq"``).

    State (in ``state_dict``): ``ema``: ``lo``/``hi`` (float64) and ``count``; ``lsq``:
    ``step`` and ``initialized``. ``count``/``initialized`` are explicit flags, never a
    sentinel value in a range.
    """

    def __init__(self, scheme: Scheme | str, source: str = "tensor", *, shape=None,
                 momentum: float = 0.9, clip: str = "minmax"):
        super().__init__()
        self.scheme = Scheme.parse(scheme)
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}; got {source!r}")
        if clip not in CLIPS:
            raise ValueError(f"clip must be one of {', '.join(CLIPS)}; got {clip!r}")
        if clip == "mse" and source != "tensor":
            raise ValueError("clip='mse' applies to ranges taken from the tensor itself "
                             "(source='tensor')")
        self.source, self.clip = source, clip
        static = not (self.scheme.is_dynamic or self.scheme.is_block_scaled)
        if source != "tensor" and not static:
            raise ValueError(f"{self.scheme} computes its scales from each input; it takes "
                             "source='tensor', not a tracked or learned range")
        if source == "ema":
            if self.scheme.granularity != PerTensor():
                raise ValueError(f"moving-average ranges are per tensor; {self.scheme} asks "
                                 f"for {self.scheme.granularity}")
            self.observer = MovingAverage(momentum)
            self.register_buffer("lo", torch.zeros((), dtype=torch.float64))
            self.register_buffer("hi", torch.zeros((), dtype=torch.float64))
            self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        elif source == "lsq":
            check_lsq_scheme(self.scheme)
            if self.scheme.granularity == PerTensor():
                step_shape = ()
            elif shape is None:
                raise ValueError(f"LSQ with {self.scheme.granularity} needs the tensor's shape "
                                 "(shape=weight.shape) to size the step")
            else:
                step_shape = expected_scale_shape(tuple(shape), self.scheme)
            self.step = torch.nn.Parameter(torch.ones(step_shape))
            self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    # -- the forward pass ------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.source == "lsq":
            if not bool(self.initialized):
                if not self.training:
                    raise RuntimeError("FakeQuant(lsq): the step is not initialised; run a "
                                       "training-mode batch first")
                with torch.no_grad():
                    self.step.copy_(lsq_init(x, self.scheme).reshape(self.step.shape))
                self.initialized.fill_(True)
            want = expected_scale_shape(x.shape, self.scheme)
            return lsq_fake_quantize(x, self.step.reshape(want), self.scheme)
        if self.source == "ema" and self.training:
            self._observe(x)
        return fake_quantize(x, self.scheme, self.qparams(x))

    def _observe(self, x: torch.Tensor) -> None:
        obs = self.observer
        if obs.count != int(self.count):  # state was loaded: continue from it
            obs.lo, obs.hi, obs.count = self.lo.reshape(1), self.hi.reshape(1), int(self.count)
        obs.update(x)
        self.lo.copy_(obs.lo.reshape(())), self.hi.copy_(obs.hi.reshape(()))
        self.count.fill_(obs.count)

    # -- the parameters used ------------------------------------------------------------

    @torch.no_grad()
    def qparams(self, x: torch.Tensor | None = None) -> QParams | None:
        """The QParams the forward pass uses on ``x``.

        ``None`` for per-token and block-scaled schemes (computed per input by
        ``lb.quantize`` itself). ``x`` is needed for ``source="tensor"`` (the weight).
        """
        if self.scheme.is_dynamic or self.scheme.is_block_scaled:
            return None
        if self.source == "lsq":
            if not bool(self.initialized):
                raise RuntimeError("FakeQuant(lsq): the step is not initialised yet")
            shape = self.step.shape if x is None else expected_scale_shape(x.shape, self.scheme)
            return QParams(self.step.detach().float().clamp(min=1e-8).reshape(shape))
        if self.source == "ema":
            if int(self.count) == 0:
                raise RuntimeError("FakeQuant(ema): no batch observed yet (count == 0); run "
                                   "training-mode batches (or calibration) first")
            qp = qparams_from_range(self.lo.float(), self.hi.float(), self.scheme)
            if x is None:
                return qp
            shape = expected_scale_shape(x.shape, self.scheme)
            return QParams(qp.scale.reshape(shape), None if qp.zero_point is None
                           else qp.zero_point.reshape(shape))
        if x is None:
            raise ValueError("FakeQuant(source='tensor').qparams needs the tensor x")
        return mse_search(x, self.scheme) if self.clip == "mse" else \
            choose_qparams(x, self.scheme)

    def extra_repr(self) -> str:
        clip = f", clip={self.clip}" if self.clip != "minmax" else ""
        return f"{self.scheme}, source={self.source}{clip}"
