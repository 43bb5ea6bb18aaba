"""Output rounding modes of the mixed-precision paths, on hand-made ties."""

import pytest
import torch

import lowbit as lb
import lowbit.kernels as K

T = 2.0**-8  # half an ulp of bf16 at 1 (8 significant bits)
H = 2.0**-11  # half an ulp of fp16 at 1

# (value, dtype, mode) -> expected; 1+T is a tie between 1 and 1+2T (odd last bit)
CASES = [
    (1 + T, torch.bfloat16, {"nearest_even": 1, "nearest_away": 1 + 2 * T, "toward_zero": 1,
                             "floor": 1, "ceil": 1 + 2 * T, "odd": 1 + 2 * T}),
    (1 + 3 * T, torch.bfloat16, {"nearest_even": 1 + 4 * T, "nearest_away": 1 + 4 * T,
                                 "toward_zero": 1 + 2 * T, "floor": 1 + 2 * T,
                                 "ceil": 1 + 4 * T, "odd": 1 + 2 * T}),
    (-(1 + T), torch.bfloat16, {"nearest_even": -1, "nearest_away": -(1 + 2 * T),
                                "toward_zero": -1, "floor": -(1 + 2 * T), "ceil": -1,
                                "odd": -(1 + 2 * T)}),
    (1 + H, torch.float16, {"nearest_even": 1, "nearest_away": 1 + 2 * H, "toward_zero": 1,
                            "floor": 1, "ceil": 1 + 2 * H, "odd": 1 + 2 * H}),
    (70000.0, torch.float16, {"nearest_even": float("inf"), "nearest_away": float("inf"),
                              "toward_zero": 65504, "floor": 65504, "ceil": float("inf"),
                              "odd": float("inf")}),
]


@pytest.mark.parametrize("value,dtype,expected", CASES)
def test_rounding_modes_on_ties(value, dtype, expected):
    # the product of exact fp32 operands is the tie itself: a = [value - 1, 1], b = [1, 1]
    a = torch.tensor([[value - 1 if abs(value) < 10 else value / 2, 1 if abs(value) < 10
                       else value / 2]], dtype=torch.float32)
    if value < 0:
        a = torch.tensor([[-T, -1.0]])
    b = torch.ones(2, 1)
    assert (a @ b).item() == value
    for mode, want in expected.items():
        y = K.matmul(a, b, out_dtype=dtype, rounding=mode)
        assert y.dtype == dtype
        assert y.float().item() == want, (mode, y.float().item(), want)


@pytest.mark.parametrize("mode", ["nearest_even", "nearest_away", "toward_zero", "floor", "ceil",
                                  "odd"])
@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_output_rounding_is_the_formats_rounding(mode, dtype, name):
    a, b = torch.randn(7, 50), torch.randn(50, 9)
    for x, w in ((a, b), (a.bfloat16(), b.bfloat16())):
        y = K.matmul(x, w, out_dtype=dtype, rounding=mode)
        ref = x.float() @ w.float()
        want = lb.formats.get(name).round(ref, mode, saturate=False).to(dtype)
        assert torch.equal(y, want)


def test_int8_path_output_rounding():
    x, w = torch.randn(3, 64), torch.randn(5, 64)
    q = lb.quantize(w, "int8:channel")
    y32 = K.linear(x, q, act="int8:token")
    for mode in ("toward_zero", "ceil"):
        y = K.linear(x, q, act="int8:token", out_dtype=torch.bfloat16, rounding=mode)
        assert torch.equal(y, lb.formats.get("bf16").round(y32, mode, saturate=False).bfloat16())
