"""Mixed precision: compute/accumulate/output policy, loss scaling, precision selection.

>>> handle = lb.mixed.Policy(compute="bf16").apply(model)   # autocast, fp32 master weights
>>> scaler = lb.mixed.LossScaler()                          # dynamic: 2**16, x2 / x0.5
>>> scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
>>> lb.mixed.select_precision(x, "matmul").precision        # 'int8', 'fp8_e4m3fn', ...
>>> with lb.mixed.DynamicPrecision(model) as dp: model(x)   # per layer at run time
"""

from .dynamic import LAYER_OPS, DynamicPrecision, apply_precision
from .policy import DTYPES, KEEP_FP32, Policy, PolicyHandle
from .scaler import MODES, LossScaler
from .select import OPS, PRECISIONS, Choice, PrecisionStats, precision_stats, select_precision

__all__ = [
           "DTYPES",
           "KEEP_FP32",
           "LAYER_OPS",
           "MODES",
           "OPS",
           "PRECISIONS",
           "Choice",
           "DynamicPrecision",
           "LossScaler",
           "Policy",
           "PolicyHandle",
           "PrecisionStats",
           "apply_precision",
           "precision_stats",
           "select_precision",
]
