"""LossScaler: keep small fp16 gradients from flushing to zero.

fp16's smallest subnormal is 2**-24 (about 6e-8): a backward pass in fp16 turns smaller
gradients into 0. Multiplying the loss by ``scale`` lifts every gradient by the same
factor; the fp32 master gradients are divided by it again before the optimizer step.

* ``mode="static"``: a fixed scale (default 128, the seed's ``loss_scale``).
* ``mode="dynamic"``: start at 2**16; when a step's gradients hold Inf/NaN the step is
  skipped and the scale multiplied by ``backoff_factor`` (0.5); after ``growth_interval``
  clean steps in a row it is multiplied by ``growth_factor`` (2). The scale stays within
  ``[min_scale, max_scale]``.

Both modes skip a step whose gradients are not finite. The API follows
``torch.amp.GradScaler``::

    scaler = LossScaler()                        # dynamic
    scaler.scale(loss).backward()
    scaler.step(optimizer)                       # unscales, skips on Inf/NaN
    scaler.update()                              # adjusts the scale
    ckpt = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}

Trajectory example (dynamic, growth_interval=2): steps clean, clean, inf, clean ->
scale 65536 -> 65536 -> 131072 (grown) -> 65536 (backed off, step skipped) -> 65536.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MODES", "LossScaler"]

MODES = ("static", "dynamic")


class LossScaler:
    """Static or dynamic loss scaling (see the module docstring).

    Args:
        mode: ``"static"`` or ``"dynamic"``.
        init_scale: default 128 (static) or 2**16 (dynamic).
        growth_factor, backoff_factor, growth_interval: dynamic scaling (2, 0.5, 2000).
        min_scale, max_scale: the floor and ceiling of a dynamic scale (1 and 2**24).
    """

    def __init__(self, mode: str = "dynamic", init_scale: float | None = None, *,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, min_scale: float = 1.0,
                 max_scale: float = 2.0 ** 24):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if init_scale is None:
            init_scale = 128.0 if mode == "static" else 2.0 ** 16
        checks = [("init_scale", init_scale > 0 and math.isfinite(init_scale), "> 0"),
                  ("growth_factor", growth_factor > 1, "> 1"),
                  ("backoff_factor", 0 < backoff_factor < 1, "in (0, 1)"),
                  ("growth_interval", isinstance(growth_interval, int) and growth_interval >= 1,
                   "an integer >= 1"),
                  ("min_scale", 0 < min_scale <= max_scale, "in (0, max_scale]")]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{name} must be {want}; got {locals().get(name)!r}")
        if mode == "dynamic" and not min_scale <= init_scale <= max_scale:
            raise ValueError(f"init_scale {init_scale} is outside [min_scale {min_scale}, "
                             f"max_scale {max_scale}]")
        self.mode = mode
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = growth_interval
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self._scale = float(init_scale)
        self.clean_steps = 0     # consecutive finite steps since the last change
        self.skipped_steps = 0   # steps skipped for Inf/NaN gradients, in all
        self._found_inf: dict[int, bool] = {}   # per optimizer, this iteration

    @property
    def scale_factor(self) -> float:
        """The current loss scale."""
        return self._scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss * scale``, computed in fp32 (call ``.backward()`` on the result)."""
        return loss.float() * self._scale

    @torch.no_grad()
    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Divide the gradients of ``optimizer``'s parameters by the scale, in place.

        Returns True when any of them is Inf/NaN (the step will be skipped). Call at most
        once per optimizer between ``update()`` calls (e.g. before gradient clipping).
        """
        key = id(optimizer)
        if key in self._found_inf:
            raise RuntimeError("unscale_ was already called for this optimizer since the last "
                               "update()")
        found = False
        inv = 1.0 / self._scale
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.dtype != torch.float32:
                    raise ValueError("loss scaling expects fp32 master gradients; a parameter "
                                     f"has {p.grad.dtype} gradients")
                found = found or not bool(torch.isfinite(p.grad).all())
                p.grad.mul_(inv)
        self._found_inf[key] = found
        return found

    def step(self, optimizer: torch.optim.Optimizer, *args, **kwargs):
        """Unscale (if not done yet) and run ``optimizer.step()``, unless a gradient is
        Inf/NaN: then the step is skipped and None returned."""
        if id(optimizer) not in self._found_inf:
            self.unscale_(optimizer)
        if self._found_inf[id(optimizer)]:
            return None
        return optimizer.step(*args, **kwargs)

    def update(self) -> None:
        """End of an iteration: adjust a dynamic scale (see the module docstring)."""
        if not self._found_inf:
            raise RuntimeError("update() without a step(): call scaler.step(optimizer) first")
        found = any(self._found_inf.values())
        self._found_inf = {}
        if found:
            self.skipped_steps += 1
            self.clean_steps = 0
            if self.mode == "dynamic":
                self._scale = max(self._scale * self.backoff_factor, self.min_scale)
            return
        if self.mode == "dynamic":
            self.clean_steps += 1
            if self.clean_steps >= self.growth_interval:
                self._scale = min(self._scale * self.growth_factor, self.max_scale)
                self.clean_steps = 0

    # -- checkpointing -----------------------------------------------------------------

    _STATE = ("mode", "growth_factor", "backoff_factor", "growth_interval", "min_scale",
              "max_scale", "clean_steps", "skipped_steps")

    def state_dict(self) -> dict:
        """Everything needed to resume (save it beside the optimizer's state_dict)."""
        return {"scale": self._scale, **{k: getattr(self, k) for k in self._STATE}}

    def load_state_dict(self, state: dict) -> None:
        missing = {"scale", *self._STATE} - set(state)
        if missing:
            raise ValueError(f"LossScaler state is missing {sorted(missing)}")
        if state["mode"] not in MODES:
            raise ValueError(f"LossScaler state has mode {state['mode']!r}")
        for k in self._STATE:
            setattr(self, k, state[k])
        self._scale = float(state["scale"])
        self._found_inf = {}

    def __repr__(self):
        return (f"LossScaler(mode={self.mode!r}, scale={self._scale:g}, "
                f"clean_steps={self.clean_steps}, skipped_steps={self.skipped_steps})")
