"""The protocol a quantized module implements to be saved and loaded, and how io finds it.

A quantized module (``lowbit.nn``'s Linear, Embedding, ... or your own) is an
``nn.Module`` subclass with three members::

    @lowbit.nn.register(torch.nn.Linear)   # or register() for a class replacing nothing
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

A quantized class registers itself with ``lowbit.nn.register`` (the registry that also
maps float module types to their quantized twins); io looks kinds up there. A module's
``lowbit_state`` covers its whole subtree: tensors of its children are saved only
through it.
"""

from __future__ import annotations

from ..nn.registry import KINDS

__all__ = ["is_qmodule", "qmodule_classes"]


def is_qmodule(module) -> bool:
    """True for an instance of a registered quantized module class."""
    return type(module) in KINDS.values()


def qmodule_classes() -> dict[str, type]:
    """``{lowbit_kind: class}`` of every registered quantized module class."""
    return dict(KINDS)
