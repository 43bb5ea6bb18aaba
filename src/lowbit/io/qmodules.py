"""The protocol a quantized module implements to be saved and loaded, and how io finds it.

A quantized module (``lowbit.nn``'s Linear, Embedding, ... or your own) is an
``nn.Module`` subclass with three members::

    class QLinear(torch.nn.Module):
        lowbit_kind = "linear"          # unique name, stored in lowbit.json

        def lowbit_state(self) -> tuple[dict[str, torch.Tensor], dict]:
            # Every tensor the module needs (keys relative to the module, e.g. from
            # self.weight_q.state("weight.") plus {"bias": self.bias}), and JSON-able
            # metadata (schemes, activation mode, calibrated ranges as numbers...).
            tensors, wmeta = self.weight_q.state("weight.")
            return {**tensors, "bias": self.bias}, {"weight": wmeta}

        @classmethod
        def from_lowbit_state(cls, float_module, tensors, meta) -> torch.nn.Module:
            # Rebuild from what lowbit_state returned. ``float_module`` is the module of the
            # model being filled at the same qualified name (its config: in/out features).
            # Validate and raise ValueError on anything inconsistent (QTensor.from_state
            # does the QTensor parts).
            ...

No registration call is needed, so ``lowbit.nn`` never imports ``lowbit.io`` (io sits
below nn in the layers): io finds every imported ``nn.Module`` subclass that defines
``lowbit_kind`` in its own class body, after importing ``lowbit.nn`` if it exists. A
module's ``lowbit_state`` covers its whole subtree: tensors of its children are saved only
through it.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["is_qmodule", "qmodule_classes"]


def is_qmodule(module) -> bool:
    """True for a module implementing the protocol (has lowbit_kind and lowbit_state)."""
    return (isinstance(getattr(type(module), "lowbit_kind", None), str)
            and callable(getattr(module, "lowbit_state", None)))


def _subclasses(cls):
    stack, seen = [cls], set()
    while stack:
        c = stack.pop()
        for sub in c.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                stack.append(sub)
                yield sub


def qmodule_classes() -> dict[str, type]:
    """``{lowbit_kind: class}`` of every quantized module class defined so far.

    Raises ValueError when two different classes claim the same kind.
    """
    try:
        importlib.import_module("lowbit.nn")
    except ModuleNotFoundError as e:
        if e.name not in ("lowbit.nn",):
            raise
    found: dict[str, type] = {}
    for cls in _subclasses(torch.nn.Module):
        kind = cls.__dict__.get("lowbit_kind")
        if not isinstance(kind, str):
            continue
        if not callable(getattr(cls, "from_lowbit_state", None)):
            raise TypeError(f"{cls.__module__}.{cls.__qualname__} sets lowbit_kind={kind!r} "
                            "but has no classmethod from_lowbit_state")
        other = found.get(kind)
        if other is not None and other is not cls:
            raise ValueError(f"quantized module kind {kind!r} is claimed by both "
                             f"{other.__module__}.{other.__qualname__} and "
                             f"{cls.__module__}.{cls.__qualname__}")
        found[kind] = cls
    return found
