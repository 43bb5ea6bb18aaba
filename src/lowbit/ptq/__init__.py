"""Post-training quantization over whole models."""

from .driver import make_observer, quantize_model, run_batches, smooth_scales

__all__ = ["make_observer", "quantize_model", "run_batches", "smooth_scales"]
