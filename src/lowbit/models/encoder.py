"""Sentence encoders from local Hugging Face folders, run the way sentence-transformers runs
them: transformer -> pooling over real tokens (mean by default) -> optional L2 normalize.

A folder saved by sentence-transformers says how it pools in ``modules.json`` and
``1_Pooling/config.json`` (mean / cls / max) and whether a ``Normalize`` module follows;
its ``sentence_bert_config.json`` gives ``max_seq_length``. A plain transformers folder
gets mean pooling, no normalization and the tokenizer's own limit (at most 512).

Nothing here touches the network: models and tokenizers load with
``local_files_only=True``.

>>> enc = load_encoder("/path/to/folder")       # Encoder(model, tokenizer, ...)
>>> emb = enc.embed(["A sentence.", "Another one."])      # [2, hidden] float32
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "POOLING_MODES",
    "Encoder",
    "batches",
    "embed",
    "latency",
    "load_encoder",
    "pool",
    "synthetic_batch",
]

POOLING_MODES = ("mean", "cls", "max")
_POOL_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
              "max": "pooling_mode_max_tokens"}


def _read_json(path: Path) -> dict | list | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _pooling_config(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling mode, normalize, max_seq_length) from sentence-transformers' files."""
    modules = _read_json(folder / "modules.json") or []
    mode, normalize = "mean", False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith(".Normalize"):
            normalize = True
        elif kind.endswith(".Pooling"):
            cfg = _read_json(folder / m.get("path", "") / "config.json") or {}
            on = [k for k, key in _POOL_KEYS.items() if cfg.get(key)]
            other = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v
                     and k not in _POOL_KEYS.values()]
            if len(on) != 1 or other:
                raise ValueError(f"{folder}: unsupported pooling {cfg}; lowbit pools with "
                                 f"exactly one of {', '.join(POOLING_MODES)}")
            mode = on[0]
    st = _read_json(folder / "sentence_bert_config.json") or {}
    return mode, normalize, st.get("max_seq_length")


def _hidden(model, batch: dict) -> torch.Tensor:
    out = model(**batch)
    h = out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state
    return h.float()


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool token states [n, t, d] over real tokens (mask 1) to [n, d], as
    sentence-transformers does (mean: masked sum / max(count, 1e-9))."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(mask == 0, -1e9).max(1).values
    raise ValueError(f"pooling mode must be one of {', '.join(POOLING_MODES)}; got {mode!r}")


def batches(tokenizer, sentences, batch_size: int = 32, max_length: int = 256):
    """Tokenized batches, in order: dicts of tensors (``input_ids``, ``attention_mask``,
    ``token_type_ids`` where the tokenizer makes them), padded to the longest sentence of
    the batch; ``model(**batch)`` runs one. Also usable as calibration data."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    sentences = list(sentences)
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        yield dict(enc)


@torch.inference_mode()
def embed(model, tokenizer, sentences, batch_size: int = 32, max_length: int = 256,
          pooling: str = "mean", normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings, float32 [n, hidden], in the order of ``sentences``.

    Sentences are batched longest first (as sentence-transformers does, to pad less) and
    put back in order; pooling covers real tokens only; ``normalize`` L2-normalizes rows.
    """
    sentences = list(sentences)
    if not sentences:
        raise ValueError("sentences is empty; give at least one sentence")
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    chunks = []
    for batch in batches(tokenizer, [sentences[i] for i in order], batch_size, max_length):
        chunks.append(pool(_hidden(model, batch), batch["attention_mask"], pooling))
    emb = torch.cat(chunks)
    if normalize:
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    out = torch.empty_like(emb)
    out[torch.tensor(order)] = emb
    return out


def synthetic_batch(tokenizer, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """A fixed batch of exactly ``seq_len`` real tokens per row (no padding): [CLS], random
    non-special vocabulary ids, [SEP], all attended; token types 0."""
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"need batch_size >= 1 and seq_len >= 2; got {batch_size}, {seq_len}")
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    allowed = torch.arange(tokenizer.vocab_size)
    allowed = allowed[~torch.isin(allowed, special)]
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(0, len(allowed), (batch_size, seq_len), generator=g)]
    if tokenizer.cls_token_id is not None:
        ids[:, 0] = tokenizer.cls_token_id
    if tokenizer.sep_token_id is not None:
        ids[:, -1] = tokenizer.sep_token_id
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in tokenizer.model_input_names:
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


@torch.inference_mode()
def latency(model, tokenizer, batch_size: int = 32, seq_len: int = 32, repeats: int = 20,
            warmup: int = 3) -> float:
    """Median wall time in seconds of one forward pass on ``synthetic_batch``, after
    ``warmup`` untimed passes. Time a baseline in the same process for a fair ratio."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0; got {repeats}, {warmup}")
    batch = synthetic_batch(tokenizer, batch_size, seq_len)
    for _ in range(warmup):
        model(**batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class Encoder:
    """A sentence encoder: the (fp32, eval-mode) model, its tokenizer and how it pools.

    ``model`` may be quantized in place; the methods also take another ``model`` (e.g. a
    quantized copy) so the FP32 reference and the candidate share tokenizer and pooling.
    """

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    pooling: str = "mean"
    normalize: bool = False
    max_length: int = 256

    def embed(self, sentences, model=None, batch_size: int = 32) -> torch.Tensor:
        return embed(self.model if model is None else model, self.tokenizer, sentences,
                     batch_size, self.max_length, self.pooling, self.normalize)

    def batches(self, sentences, batch_size: int = 32):
        return batches(self.tokenizer, sentences, batch_size, self.max_length)

    def latency(self, model=None, batch_size: int = 32, seq_len: int = 32,
                repeats: int = 20) -> float:
        return latency(self.model if model is None else model, self.tokenizer, batch_size,
                       seq_len, repeats)


def load_encoder(path, name: str | None = None) -> Encoder:
    """Load a local Hugging Face model folder (with its tokenizer) as an fp32, eval-mode
    ``Encoder``; sentence-transformers' pooling files are honoured when present."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{str(path)!r} is not a Hugging Face model folder (no config.json)")
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, local_files_only=True).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    mode, normalize, max_seq = _pooling_config(folder)
    limit = min(int(max_seq or tokenizer.model_max_length), 512)
    return Encoder(name or folder.name, str(folder), model, tokenizer, mode, normalize, limit)
