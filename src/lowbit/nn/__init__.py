"""Quantized modules and the float-to-quantized registry."""

from .modules import KeepPrecision, QuantConv2d, QuantEmbedding, QuantLinear
from .registry import KINDS, QUANTIZED, quantized_class, register

__all__ = [
           "KINDS",
           "QUANTIZED",
           "KeepPrecision",
           "QuantConv2d",
           "QuantEmbedding",
           "QuantLinear",
           "quantized_class",
           "register",
]
