"""Analysis: where accuracy went and what to pick.

* ``debug(float_model, quantized_or_recipe, data)``: per-layer error report (terminal table,
  JSON, self-contained HTML with plots) with a measured fix for each offending layer.
* ``sensitivity(model, recipe, data, metric)``: one layer quantized (or kept float) at a time.
* ``recommend(model, data, metric, size_mb=...)``: a per-layer plan (a recipe) that meets a
  size / latency / accuracy constraint, chosen from measured costs.
* ``bench_gemm`` / ``bench_model``: the seed's benchmark matrix.
* ``format_rows`` / ``scheme_error_rows``: tables about formats and schemes.
"""

from .advisor import (
    OPTIONS,
    PRIORITIES,
    Plan,
    measure_options,
    model_nbytes,
    recommend,
    uniform_recipe,
)
from .bench import GEMM_SHAPES, MATRIX, BenchResult, bench_gemm, bench_model
from .debug import DebugReport, LayerRecord, debug
from .formats_table import DEMO_SCHEMES, format_rows, scheme_error_rows, sqnr_db
from .sensitivity import SensitivityReport, output_cosine, sensitivity

__all__ = ["DEMO_SCHEMES", "GEMM_SHAPES", "MATRIX", "OPTIONS", "PRIORITIES", "BenchResult",
           "DebugReport", "LayerRecord", "Plan", "SensitivityReport", "bench_gemm",
           "bench_model", "debug", "format_rows", "measure_options", "model_nbytes",
           "output_cosine", "recommend", "scheme_error_rows", "sensitivity", "sqnr_db",
           "uniform_recipe"]
