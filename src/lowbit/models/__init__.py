"""Bundled real models and data for the demo, tests and benchmarks.

``get_model(name_or_path)`` is the one entry point the CLI uses: a registered name
(``minilm``, the bundled all-MiniLM-L6-v2) or a path to a local Hugging Face model
folder. It returns an ``Encoder``: ``.model`` (fp32, eval), ``.tokenizer``, and
``.embed``, ``.batches``, ``.latency`` with the model's own pooling.

>>> enc = lowbit.models.get_model("minilm")
>>> ref = enc.embed(sentences("eval"))                  # [n, 384], FP32 reference
>>> calib = enc.batches(sentences("calib", 256))          # dicts for model(**batch)
>>> compare(ref, enc.embed(sentences("eval"), model=qmodel))
"""

from __future__ import annotations

import difflib
from pathlib import Path

from . import digits, minilm
from .data import SPLITS, sentences
from .encoder import Encoder, load_encoder
from .metrics import compare, model_bytes

__all__ = ["MODELS", "SPLITS", "Encoder", "compare", "digits", "get_model", "load_encoder",
           "minilm", "model_bytes", "sentences"]

# name -> (description, loader returning an Encoder)
MODELS = {
    "minilm": ("all-MiniLM-L6-v2, 6-layer BERT sentence encoder (bundled, offline)",
               minilm.encoder_for),
}


def get_model(name_or_path: str = "minilm") -> Encoder:
    """A registered model name (see ``MODELS``) or a local Hugging Face model folder."""
    key = str(name_or_path)
    if key in MODELS:
        return MODELS[key][1]()
    if Path(key).is_dir():
        return load_encoder(key)
    close = difflib.get_close_matches(key, list(MODELS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown model {key!r}: give one of {', '.join(MODELS)} or the path "
                     f"of a local Hugging Face model folder.{hint}")
