"""How far a quantized encoder is from its FP32 reference, and how big a model is.

* ``compare(ref, emb)``: cosine similarity of each sentence's two embeddings (mean and
  minimum), and nearest-neighbour agreement: for each sentence as a query over all the
  other sentences, the share of its FP32 top-10 neighbours that the quantized model's
  top-10 also contains, averaged (recall@10; 1.0 = identical retrieval).
* ``model_bytes(model)``: every stored byte: parameters, buffers, and each ``QTensor``
  a module holds as an attribute (its ``.nbytes``: codes, scales, zero points, metadata).
"""

from __future__ import annotations

import torch

from ..quant import QTensor

__all__ = ["compare", "model_bytes"]

_QPARTS = ("codes", "scale", "zero_point", "micro_exponent", "tensor_scale")


def compare(ref: torch.Tensor, emb: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Quality of ``emb`` against the reference ``ref`` (both [n, d], same sentence order).

    Returns:
        ``{"mean_cos", "min_cos", f"recall_at_{k}"}``: cosine similarities of matching
        rows, and the mean fraction of each query's reference top-k neighbours (itself
        excluded, cosine similarity) found in its top-k under ``emb``.

    Example: identical embeddings give mean_cos = min_cos = recall_at_10 = 1.0.
    """
    if ref.ndim != 2 or ref.shape != emb.shape:
        raise ValueError(f"ref and emb must both be [n, d] with the same shape; got "
                         f"{tuple(ref.shape)} and {tuple(emb.shape)}")
    n = ref.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}] for {n} sentences; got {k}")
    a = torch.nn.functional.normalize(ref.double(), dim=1)
    b = torch.nn.functional.normalize(emb.double(), dim=1)
    cos = (a * b).sum(1)

    def top(x):
        sim = x @ x.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(k, dim=1).indices

    ta, tb = top(a), top(b)
    hits = (ta.unsqueeze(2) == tb.unsqueeze(1)).any(2).sum(1).double() / k
    return {"mean_cos": cos.mean().item(), "min_cos": cos.min().item(),
            f"recall_at_{k}": hits.mean().item()}


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter, buffer and module-held ``QTensor`` (``.nbytes``).

    Shared tensors count once; a parameter or buffer that is the storage of a counted
    QTensor part (a module registering its codes as a buffer) is not counted again.
    QTensors under private attribute names (``_packed``: caches derived at run time) are
    not stored by ``save_quantized`` and are not counted.
    """
    seen_q, q_ptrs, total = set(), set(), 0
    for module in model.modules():
        for attr, value in vars(module).items():
            if attr.startswith("_"):
                continue            # private caches (a kernel's repacked copy) are not stored
            if isinstance(value, QTensor) and id(value) not in seen_q:
                seen_q.add(id(value))
                total += value.nbytes
                q_ptrs |= {getattr(value, p).data_ptr() for p in _QPARTS
                           if getattr(value, p) is not None}
    seen = set()
    for t in [*model.parameters(), *model.buffers()]:
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen or t.data_ptr() in q_ptrs:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total
