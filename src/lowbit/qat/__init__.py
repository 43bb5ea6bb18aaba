"""Quantization-aware training: fake quantization during training, then real modules.

>>> model = lb.qat.prepare(model, lb.Recipe.preset("a8w8"), ranges="lsq")
>>> opt = torch.optim.Adam(model.parameters())    # after prepare: LSQ steps are parameters
>>> ... train ...
>>> qmodel = lb.qat.convert(model)                # lowbit.nn modules, the same codes

The same Scheme objects as post-training quantization (any format: int8/4/2, ternary,
binary, fp8, MX); ranges tracked by a moving average or learned (LSQ). Gradients are
straight-through inside the clipping range and zero outside (``lb.fake_quantize``), and
learned steps get the LSQ gradient (``lowbit.qat.lsq``).
"""

from .fake_quant import SOURCES, FakeQuant
from .lsq import lsq_fake_quantize, lsq_grad_scale, lsq_init
from .modules import QATConv2d, QATLinear
from .prepare import RANGES, convert, prepare, qat_modules

__all__ = [
           "RANGES",
           "SOURCES",
           "FakeQuant",
           "QATConv2d",
           "QATLinear",
           "convert",
           "lsq_fake_quantize",
           "lsq_grad_scale",
           "lsq_init",
           "prepare",
           "qat_modules",
]
