"""Analysis: tables and reports about what quantization costs."""

from .formats_table import DEMO_SCHEMES, format_rows, scheme_error_rows, sqnr_db

__all__ = ["DEMO_SCHEMES", "format_rows", "scheme_error_rows", "sqnr_db"]
