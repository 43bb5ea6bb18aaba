"""The kernel registry: operand formats -> an ordered list of implementations.

A GEMM problem is classified by the kinds of its two operands (see
:func:`lowbit.kernels.problem.operand_kind`)::

    activation kind: "float" | "int8" | "int" | "emulated"
    weight kind:     "float" | "int8" | "int4" | "int" | "emulated"

Each key holds implementations in order of preference; the first whose ``supports``
predicate accepts the problem runs, and every key ends with its reference. Adding a fast
path is one call::

    register("int8", "int4", "cpu.a8w4.avx2", my_fn, supports=lambda p: ...)

``fn(problem) -> fp32 [M, N]`` (or the output dtype when the implementation rounds to it
itself, see :attr:`Impl.rounds_output`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Impl", "implementations", "keys", "register", "select"]

ACT_KINDS = ("float", "int8", "int", "emulated")
WEIGHT_KINDS = ("float", "int8", "int4", "int", "emulated")


@dataclass(frozen=True)
class Impl:
    """One implementation of one key.

    Attributes:
        name: what :func:`lowbit.kernels.backend` reports, e.g. ``cpu.int8.int_mm``.
        fn: ``fn(problem) -> Tensor`` [M, N].
        supports: ``supports(problem) -> bool``; the reference supports everything.
        rounds_output: True when ``fn`` already returns ``problem.out_dtype`` rounded as
            asked (otherwise it returns fp32 and the output rounding is applied after).
        scales_input: True when ``fn`` applies ``problem.x_mul`` itself (fused into its
            activation quantization); otherwise x is multiplied by it before ``fn`` runs.
    """

    name: str
    fn: Callable
    supports: Callable = lambda problem: True
    rounds_output: bool = False
    scales_input: bool = False


_REGISTRY: dict[tuple[str, str], list[Impl]] = {}


def register(act: str, weight: str, name: str, fn: Callable, supports: Callable | None = None,
             *, rounds_output: bool = False, scales_input: bool = False,
             reference: bool = False) -> Impl:
    """Add an implementation for ``(act, weight)``; fast paths go before the reference.

    A ``reference=True`` implementation is appended last and must accept every problem;
    any other is inserted before the key's reference, after the fast paths already there.
    Re-registering a name replaces it in place.
    """
    if act not in ACT_KINDS:
        raise ValueError(f"act kind must be one of {ACT_KINDS}; got {act!r}")
    if weight not in WEIGHT_KINDS:
        raise ValueError(f"weight kind must be one of {WEIGHT_KINDS}; got {weight!r}")
    impl = Impl(name, fn, supports or (lambda p: True), rounds_output, scales_input)
    impls = _REGISTRY.setdefault((act, weight), [])
    for i, old in enumerate(impls):
        if old.name == name:
            impls[i] = impl
            return impl
    if reference:
        impls.append(impl)
    else:
        n_fast = len(impls) - (1 if impls and _is_reference(impls[-1]) else 0)
        impls.insert(n_fast, impl)
    return impl


def _is_reference(impl: Impl) -> bool:
    return impl.name in ("reference", "emulated")


def implementations(act: str, weight: str) -> list[Impl]:
    """The implementations of one key, in the order they are tried."""
    return list(_REGISTRY.get((act, weight), ()))


def keys() -> list[tuple[str, str]]:
    return sorted(_REGISTRY)


def select(problem) -> Impl:
    """The first implementation of the problem's key that supports it."""
    for impl in _REGISTRY.get(problem.key, ()):
        if impl.supports(problem):
            return impl
    raise NotImplementedError(f"no kernel for operand kinds {problem.key}; registered keys: "
                              f"{keys()}")
