"""Policy: compute in bf16/fp16, accumulate in fp32, keep fp32 master weights.

``Policy(compute="bf16")`` applied to a model runs its forward pass under
``torch.autocast`` (matrix products and convolutions in the compute type, reading the
fp32 weights and casting them on the fly, so the parameters the optimizer updates stay
fp32: the master weights). CPU low-precision GEMMs accumulate in fp32 and round the
result once; ``accumulate`` therefore accepts only ``"fp32"``.

Modules that must stay in fp32 (normalisations and softmax: reductions whose sums lose
digits in 8- or 11-bit mantissas) get their inputs cast to fp32 by a forward pre-hook;
torch's CPU autocast would otherwise run them in the input's low precision. Functional
calls (``F.softmax`` inside another module's forward) follow torch.autocast's own lists.

>>> policy = Policy(compute="bf16", output="fp32")
>>> handle = policy.apply(model)          # hooks; handle.remove() undoes them
>>> loss = loss_fn(model(x), y)           # output cast to fp32 for the loss
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DTYPES", "KEEP_FP32", "Policy", "PolicyHandle"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Module class names (the class or any base) whose forward runs in fp32 under a policy.
KEEP_FP32 = ("LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
             "InstanceNorm1d", "InstanceNorm2d", "RMSNorm", "Softmax", "LogSoftmax")


def _dtype(value, what: str, allowed) -> torch.dtype | None:
    if value is None and None in allowed:
        return None
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{what} must be one of {shown}; got {value!r}")
    return DTYPES[value]


def _cast(obj, dtype):
    if isinstance(obj, torch.Tensor) and obj.is_floating_point():
        return obj.to(dtype)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast(o, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


@dataclass(frozen=True)
class Policy:
    """A mixed-precision policy (the seed's MixedPrecisionConfig).

    Args:
        compute: ``"bf16"`` or ``"fp16"``: the type of matrix products and convolutions.
        accumulate: ``"fp32"`` (the only accumulation CPU kernels offer).
        output: ``"fp32"``, ``"bf16"``, ``"fp16"`` or None (leave as computed): the type
            the model's floating outputs are cast to.
        keep_fp32: module class names run in fp32 (default ``KEEP_FP32``).
    """

    compute: str = "bf16"
    accumulate: str = "fp32"
    output: str | None = "fp32"
    keep_fp32: tuple[str, ...] = KEEP_FP32

    def __post_init__(self):
        _dtype(self.compute, "compute", ("bf16", "fp16"))
        if self.accumulate != "fp32":
            raise ValueError(f"accumulate must be 'fp32' (CPU bf16/fp16 GEMMs accumulate in "
                             f"fp32); got {self.accumulate!r}")
        _dtype(self.output, "output", ("fp32", "bf16", "fp16", None))
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.compute]

    def autocast(self, device_type: str = "cpu"):
        """The ``torch.autocast`` context of this policy."""
        return torch.autocast(device_type, dtype=self.compute_dtype)

    def keeps_fp32(self, module: torch.nn.Module) -> bool:
        return any(c.__name__ in self.keep_fp32 for c in type(module).__mro__)

    def apply(self, model: torch.nn.Module, device_type: str = "cpu") -> PolicyHandle:
        """Run ``model``'s forward under this policy (hooks; the model's parameters are
        not changed and must be fp32: they are the master weights)."""
        low = [n for n, p in model.named_parameters() if p.dtype != torch.float32]
        if low:
            raise ValueError(f"a policy keeps fp32 master weights; parameters {low[:3]} are "
                             "not float32 (call model.float() first)")
        return PolicyHandle(self, model, device_type)


class PolicyHandle:
    """Hooks installed by ``Policy.apply``; ``remove()`` takes them all out again."""

    def __init__(self, policy: Policy, model: torch.nn.Module, device_type: str):
        self.policy, self.model = policy, model
        self._ctx = []
        self.kept_fp32 = [n for n, m in model.named_modules() if policy.keeps_fp32(m)]
        hooks = [model.register_forward_pre_hook(self._enter),
                 model.register_forward_hook(self._exit, always_call=True)]
        for name in self.kept_fp32:
            hooks.append(model.get_submodule(name).register_forward_pre_hook(
                lambda mod, args, kwargs: (_cast(args, torch.float32),
                                           _cast(kwargs, torch.float32)), with_kwargs=True))
        self._hooks = hooks
        self._device_type = device_type

    def _enter(self, module, args):
        ctx = self.policy.autocast(self._device_type)
        ctx.__enter__()
        self._ctx.append(ctx)

    def _exit(self, module, args, output):
        self._ctx.pop().__exit__(None, None, None)
        out = self.policy.output
        return output if out is None else _cast(output, DTYPES[out])

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
