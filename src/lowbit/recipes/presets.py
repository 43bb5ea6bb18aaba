"""Named recipes, as data: each preset is exactly what a recipe file would hold.

``Recipe.preset(name)`` builds one through the same ``Recipe.from_dict`` a TOML, YAML or
JSON file goes through, so a preset and its saved file mean the same thing.

Group-wise weights (``g128``) and MX/NVFP4 blocks are applied to ``Linear`` layers only:
their groups run along the reduction axis (the weight's last axis), which for a Conv2d
weight [out, in, kh, kw] would be the kernel width.
"""

from __future__ import annotations

__all__ = ["PRESETS"]

_MATMUL = ["Linear", "Conv2d"]      # the layers lowbit.nn has quantized twins for


# Embedding tables are lookups, not matmuls, and half of a BERT's bytes: every quantizing
# preset stores them int8 per row (near lossless, 4x smaller).
_EMBEDDINGS = {"types": ["Embedding"], "weight": "int8:channel"}


def _all(weight: str, act: str | None = None, types=("Linear",), **extra) -> list[dict]:
    rule = {"types": list(types), "weight": weight, **extra}
    if act is not None:
        rule["act"] = act
    return [rule, _EMBEDDINGS]


PRESETS: dict[str, dict] = {
    "fp16": {
        "description": "every module with parameters kept in float16",
        "rules": [{"keep": "fp16"}],
    },
    "bf16": {
        "description": "every module with parameters kept in bfloat16",
        "rules": [{"keep": "bf16"}],
    },
    "int8": {
        "description": "static W8A8: int8 per-channel weights, int8 per-tensor activations "
                       "calibrated min-max after SmoothQuant (alpha 0.8) moved activation "
                       "outlier channels into the weights",
        "rules": _all("int8:channel", "int8", _MATMUL, act_mode="static", observer="minmax",
                      smooth=0.8),
    },
    "a8w8": {
        "description": "dynamic per-token int8 activations, int8 per-channel weights; "
                       "SmoothQuant (alpha 0.5) when calibration data is given",
        "rules": _all("int8:channel", "int8:token", _MATMUL, smooth=0.5),
    },
    "a8w4": {
        "description": "dynamic per-token int8 activations after SmoothQuant (alpha 0.5), int4 "
                       "weights in groups of 128 rounded by GPTQ with MSE-clipped groups; "
                       "embeddings int6 per row (to fit 16 MB for MiniLM)",
        "rules": [{"types": ["Linear"], "weight": "int4:g128", "weight_clip": "gptq_mse",
                   "act": "int8:token", "smooth": 0.5},
                  {"types": ["Embedding"], "weight": "int6:channel"}],
    },
    "w4a16": {
        "description": "weight-only int4, groups of 128, asymmetric; activations stay float",
        "rules": _all("int4:g128:asym"),
    },
    "w8a16": {
        "description": "weight-only int8 per channel; activations stay float",
        "rules": _all("int8:channel", None, _MATMUL),
    },
    "fp8": {
        "description": "fp8 e4m3fn weights (per channel) and activations (dynamic per token)",
        "rules": _all("fp8_e4m3fn:channel", "fp8_e4m3fn:token"),
    },
    "mxfp8": {
        "description": "OCP MXFP8 (e4m3, blocks of 32, e8m0 scales) weights and activations",
        "rules": _all("mxfp8", "mxfp8"),
    },
    "mxfp4": {
        "description": "OCP MXFP4 (e2m1, blocks of 32, e8m0 scales) weights and activations",
        "rules": _all("mxfp4", "mxfp4"),
    },
    "mx6": {
        "description": "MX6 (blocks of 16, shared exponent, micro-exponent per pair) weights "
                       "and activations",
        "rules": _all("mx6", "mx6"),
    },
    "nvfp4": {
        "description": "NVFP4 (e2m1, blocks of 16, e4m3 block scales under an fp32 tensor "
                       "scale) weights and activations",
        "rules": _all("nvfp4", "nvfp4"),
    },
    "bert-a8w4": {
        "description": "the seed's BERT recipe: attention q/k/v/output and feed-forward "
                       "projections A8W4 (int4 g128 weights, GPTQ with MSE-clipped groups, "
                       "dynamic int8 per-token activations after SmoothQuant), LayerNorm kept "
                       "in fp16, embeddings quantized per row (the word table int6 so the "
                       "model fits 16 MB, position/type tables int8); names follow "
                       "transformers' BertModel",
        "rules": [
            {"pattern": "*LayerNorm", "types": ["LayerNorm"], "keep": "fp16"},
            {"pattern": "encoder.layer.*", "types": ["Linear"], "weight": "int4:g128",
             "weight_clip": "gptq_mse", "act": "int8:token", "smooth": 0.5},
            {"pattern": "embeddings.word_embeddings", "types": ["Embedding"],
             "weight": "int6:channel"},
            {"pattern": "embeddings.*", "types": ["Embedding"], "weight": "int8:channel"},
        ],
    },
}
