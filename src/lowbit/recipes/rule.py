"""Rule: one line of a recipe — which modules it matches and what happens to them.

A rule matches a module by a glob on its qualified name (``fnmatch``, case-sensitive;
``*`` also crosses dots, so ``encoder.layer.*`` matches every module below
``encoder.layer``) and/or by its type (the class name or the name of any base class,
e.g. ``Linear``, ``Embedding``, ``LayerNorm``, ``Conv2d``). Both must hold when both
are given.

What it does is one of:

* quantize: a ``weight`` scheme and/or an ``act`` (activation) scheme. Activations are
  ``dynamic`` (parameters computed from each input at run time: per-token schemes, MX
  and NVFP4 blocks) or ``static`` (a range calibrated once with an ``observer``);
  ``act_mode`` defaults to dynamic for per-token and block-scaled schemes, static
  otherwise, and a static rule's observer defaults to ``minmax``.
* keep: leave the module in floating point, ``fp32`` (as it is), ``fp16`` or ``bf16``.
  A ``keep = "fp32"`` rule early in a recipe shields modules from later rules.

Strings are parsed once, when the rule is built: ``Rule(weight="int4:g128")`` holds a
``Scheme``. ``Rule.from_dict``/``to_dict`` are the edge used by recipe files.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase

from ..quant import Scheme

__all__ = ["ACT_MODES", "KEEP_DTYPES", "OBSERVERS", "WEIGHT_CLIPS", "Rule"]

ACT_MODES = ("dynamic", "static")
KEEP_DTYPES = ("fp32", "fp16", "bf16")
# Observer names map to lowbit.calib: minmax -> MinMax, moving_average -> MovingAverage,
# percentile -> Percentile, entropy / mse -> Histogram(method="entropy" / "mse").
OBSERVERS = ("minmax", "moving_average", "percentile", "entropy", "mse")
# How weights are rounded: minmax = the block's amax; mse = the clip ratio per block (group)
# that minimises the squared error of the quantized weight; gptq / gptq_mse = GPTQ's error
# feedback over the layer's calibration inputs, with min-max or MSE-searched group ranges
# (the reference quantizer's mse option); both need calibration data.
WEIGHT_CLIPS = ("minmax", "mse", "gptq", "gptq_mse")


def _one_of(value, allowed, what: str):
    if value is None or value in allowed:
        return value
    close = difflib.get_close_matches(str(value), allowed, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}.{hint}")


def _scheme(value, what: str) -> Scheme | None:
    if value is None:
        return None
    try:
        return Scheme.parse(value)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


@dataclass(frozen=True)
class Rule:
    """One recipe rule: a match (``pattern``, ``types``) and an action.

    Args:
        pattern: glob on the qualified module name (``"encoder.layer.*"``); ``"*"`` = all.
        types: class names, any of which the module's class (or a base class) must have;
            empty = any type.
        weight: scheme of the module's weight (``"int4:g128"``), or None.
        act: scheme of the module's input activations (``"int8:token"``), or None.
        act_mode: ``"dynamic"`` or ``"static"``; default from ``act`` (see module doc).
        observer: static activations only: ``minmax``, ``moving_average``,
            ``percentile``, ``entropy`` or ``mse``; default ``minmax``.
        weight_clip: ``minmax`` (default), ``mse`` (MSE-searched clip per block), or
            ``gptq`` / ``gptq_mse`` (GPTQ over the calibration inputs with min-max or
            MSE-searched group ranges; per-channel or group-wise int, Linear only).
        keep: ``fp32``, ``fp16`` or ``bf16``: leave the module in that float format
            instead of quantizing it (excludes weight/act).
        smooth: SmoothQuant migration strength alpha in (0, 1]: per input channel j the
            activations are divided and the weight's column multiplied by
            s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), measured on the calibration data,
            so outlier channels stop dictating the activation range (needs act and
            calibration data; applies to Linear layers, others ignore it).

    Example: ``Rule("encoder.layer.*", ("Linear",), weight="int4:g128",
    weight_clip="mse", act="int8:token")`` is A8W4 with dynamic per-token activations.
    """

    pattern: str = "*"
    types: tuple[str, ...] = ()
    weight: Scheme | None = None
    act: Scheme | None = None
    act_mode: str | None = None
    observer: str | None = None
    weight_clip: str | None = None
    keep: str | None = None
    smooth: float | None = None

    def __post_init__(self):
        if not isinstance(self.pattern, str) or not self.pattern:
            raise ValueError(f"pattern must be a non-empty glob string; got {self.pattern!r}")
        types = (self.types,) if isinstance(self.types, str) else tuple(self.types)
        if not all(isinstance(t, str) and t.isidentifier() for t in types):
            raise ValueError(f"types must be class names such as 'Linear'; got {self.types!r}")
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "weight", _scheme(self.weight, "weight"))
        object.__setattr__(self, "act", _scheme(self.act, "act"))
        _one_of(self.keep, KEEP_DTYPES, "keep")
        _one_of(self.act_mode, ACT_MODES, "act_mode")
        _one_of(self.observer, OBSERVERS, "observer")
        _one_of(self.weight_clip, WEIGHT_CLIPS, "weight_clip")
        if self.keep is not None:
            extra = [f.name for f in fields(self) if f.name in
                     ("weight", "act", "act_mode", "observer", "weight_clip", "smooth")
                     and getattr(self, f.name) is not None]
            if extra:
                raise ValueError(f"keep={self.keep!r} leaves the module in floating point; "
                                 f"it cannot be combined with {', '.join(extra)}")
            return
        if self.weight is None and self.act is None:
            raise ValueError("a rule must set weight, act or keep; this one does nothing "
                             f"(pattern {self.pattern!r}, types {list(self.types)})")
        if self.weight is None and self.weight_clip is not None:
            raise ValueError("weight_clip needs a weight scheme")
        if self.smooth is not None:
            if isinstance(self.smooth, bool) or not isinstance(self.smooth, (int, float)) \
                    or not 0 < self.smooth <= 1:
                raise ValueError(f"smooth (SmoothQuant alpha) must be a number in (0, 1]; got "
                                 f"{self.smooth!r}")
            if self.act is None or self.weight is None:
                raise ValueError("smooth moves activation outliers into the weight: it needs "
                                 "both act and weight schemes")
        if self.act is None:
            if self.act_mode is not None or self.observer is not None:
                raise ValueError("act_mode and observer need an act scheme")
            if self.weight_clip is None:
                object.__setattr__(self, "weight_clip", "minmax")
            return
        auto = "dynamic" if (self.act.is_dynamic or self.act.is_block_scaled) else "static"
        mode = self.act_mode or auto
        object.__setattr__(self, "act_mode", mode)
        if mode == "static" and auto == "dynamic":
            raise ValueError(f"act scheme {self.act} is computed per input (per-token or "
                             "block-scaled); it needs act_mode='dynamic'")
        if mode == "dynamic" and self.observer is not None:
            raise ValueError("observer calibrates static activations; a dynamic act rule "
                             "takes no observer")
        if mode == "static" and self.observer is None:
            object.__setattr__(self, "observer", "minmax")
        if self.weight is not None and self.weight_clip is None:
            object.__setattr__(self, "weight_clip", "minmax")

    # -- matching -------------------------------------------------------------------------

    def matches(self, name: str, module) -> bool:
        """True when ``name`` fits the glob and the module's class (or a base) is in types."""
        if not fnmatchcase(name, self.pattern):
            return False
        if not self.types:
            return True
        return any(c.__name__ in self.types for c in type(module).__mro__)

    @property
    def quantizes(self) -> bool:
        return self.keep is None

    # -- the edge: plain dicts of strings -----------------------------------------------

    @classmethod
    def from_dict(cls, data: dict, where: str = "rule") -> Rule:
        """Build from a recipe-file table; unknown keys and bad values name ``where``."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a rule is a table of keys; got {data!r}")
        allowed = [f.name for f in fields(cls)]
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{where}: unknown key {key!r}; keys are "
                                 f"{', '.join(allowed)}.{hint}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        """Only the fields that are set, as strings: the inverse of ``from_dict``."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "pattern" or (v is not None and v != ()):
                out[f.name] = list(v) if f.name == "types" else (
                    str(v) if isinstance(v, Scheme) else v)
        return out

    def __str__(self) -> str:
        where = self.pattern + (f" [{'|'.join(self.types)}]" if self.types else "")
        if self.keep:
            return f"{where} -> keep {self.keep}"
        parts = []
        if self.weight is not None:
            clip = f" ({self.weight_clip} clip)" if self.weight_clip != "minmax" else ""
            parts.append(f"W {self.weight}{clip}")
        if self.act is not None:
            how = self.act_mode + (f", {self.observer}" if self.observer else "")
            parts.append(f"A {self.act} ({how})")
        if self.smooth is not None:
            parts.append(f"SmoothQuant alpha {self.smooth}")
        return f"{where} -> {', '.join(parts)}"
