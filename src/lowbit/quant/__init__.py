"""The quantization core: granularity, Scheme, qparams, quantize/dequantize/fake_quantize."""

from .functional import (
                         QParams,
                         choose_qparams,
                         dequantize,
                         expected_scale_shape,
                         fake_quantize,
                         qparams_from_range,
                         quantize,
)
from .granularity import Granularity, PerBlock, PerChannel, PerGroup, PerTensor, PerToken
from .qtensor import QTensor
from .scheme import BLOCK_FORMATS, ScaleMode, Scheme

__all__ = [
    "BLOCK_FORMATS", "Granularity", "PerBlock", "PerChannel", "PerGroup", "PerTensor",
    "PerToken", "QParams", "QTensor", "ScaleMode", "Scheme", "choose_qparams", "dequantize",
    "expected_scale_shape", "fake_quantize", "qparams_from_range", "quantize",
]
