"""Saving and loading quantized models: safetensors tensors + a JSON manifest, never pickle.

>>> lowbit.io.save_quantized(model, "out/", recipe=recipe)     # atomic
>>> model = lowbit.io.load_quantized("out/", float_model)       # fills float_model in place
>>> lowbit.io.read_manifest("out/")["recipe"]

Quantized modules take part through a small protocol (``lowbit_kind``, ``lowbit_state``,
``from_lowbit_state``); see ``lowbit.io.qmodules``.
"""

from .qmodules import is_qmodule, qmodule_classes
from .quantized import (
                        FORMAT_VERSION,
                        MANIFEST,
                        TENSORS,
                        load_quantized,
                        read_manifest,
                        save_quantized,
)

__all__ = ["FORMAT_VERSION", "MANIFEST", "TENSORS", "is_qmodule", "load_quantized",
           "qmodule_classes", "read_manifest", "save_quantized"]
