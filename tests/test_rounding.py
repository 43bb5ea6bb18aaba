"""round_to_integer and Rounding: every mode on ties, non-ties, signed zeros and specials."""

import math

import pytest
import torch

from lowbit.formats import Rounding, round_to_integer

R = Rounding
MODES = [R.NEAREST_EVEN, R.NEAREST_AWAY, R.TOWARD_ZERO, R.FLOOR, R.CEIL, R.ODD]

# x -> expected for (nearest_even, nearest_away, toward_zero, floor, ceil, odd)
TABLE = {
    2.5: (2, 3, 2, 2, 3, 3),
    -2.5: (-2, -3, -2, -3, -2, -3),
    3.5: (4, 4, 3, 3, 4, 3),
    -3.5: (-4, -4, -3, -4, -3, -3),
    0.5: (0, 1, 0, 0, 1, 1),
    1.5: (2, 2, 1, 1, 2, 1),
    2.4: (2, 2, 2, 2, 3, 3),
    2.6: (3, 3, 2, 2, 3, 3),
    -2.6: (-3, -3, -2, -3, -2, -3),
    3.0: (3, 3, 3, 3, 3, 3),
    4.0: (4, 4, 4, 4, 4, 4),  # exact even stays even under odd (only inexact results move)
    # the "add 0.5 then floor" trap: 0.5 - 2**-54 + 0.5 rounds to 1.0 in float64
    0.49999999999999994: (0, 0, 0, 0, 1, 1),
    # 2**52 + 1 is odd and exact: nothing moves
    4503599627370497.0: (4503599627370497,) * 6,
}


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
def test_round_to_integer_table(mode):
    i = MODES.index(mode)
    x = torch.tensor(list(TABLE), dtype=torch.float64)
    want = torch.tensor([v[i] for v in TABLE.values()], dtype=torch.float64)
    got = round_to_integer(x, mode)
    assert torch.equal(got, want), (mode, x[got != want], got[got != want])


@pytest.mark.parametrize("mode", MODES + [R.STOCHASTIC], ids=lambda m: m.value)
def test_signed_zero_and_specials_kept(mode):
    x = torch.tensor([-0.0, 0.0, -0.25, 0.25, math.inf, -math.inf, math.nan], dtype=torch.float64)
    got = round_to_integer(x, mode, torch.Generator().manual_seed(1))
    assert torch.equal(got[4:6], x[4:6]) and torch.isnan(got[6])
    assert torch.signbit(got[:4]).tolist() == [True, False, True, False], got
    if mode in (R.NEAREST_EVEN, R.TOWARD_ZERO):
        assert got[2].item() == 0 and got[3].item() == 0


def test_stochastic_negative_zero_result_keeps_sign():
    # -0.3 rounds stochastically to -1 or to zero; the zero must be -0.0 (was +0.0)
    x = torch.full((2000,), -0.3, dtype=torch.float64)
    got = round_to_integer(x, R.STOCHASTIC, torch.Generator().manual_seed(0))
    zeros = got[got == 0]
    assert zeros.numel() > 0 and torch.signbit(zeros).all()


def test_stochastic_unbiased_and_only_neighbours():
    g = torch.Generator().manual_seed(1234)
    n = 40000
    for v in (2.3, -2.3, 0.9, -7.125, 5.0):
        x = torch.full((n,), v, dtype=torch.float64)
        got = round_to_integer(x, R.STOCHASTIC, g)
        assert set(got.unique().tolist()) <= {math.floor(v), math.ceil(v)}
        frac = v - math.floor(v)
        se = math.sqrt(frac * (1 - frac) / n)
        assert abs(got.mean().item() - v) <= 5 * se + 1e-12, (v, got.mean().item())


def test_stochastic_reproducible_with_generator():
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    a = round_to_integer(x, R.STOCHASTIC, torch.Generator().manual_seed(7))
    b = round_to_integer(x, R.STOCHASTIC, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_float32_input_keeps_dtype():
    x = torch.tensor([2.5, -1.5], dtype=torch.float32)
    for mode in MODES:
        assert round_to_integer(x, mode).dtype == torch.float32


@pytest.mark.parametrize("alias,mode", [
    ("nearest-even", R.NEAREST_EVEN), ("RNE", R.NEAREST_EVEN), ("rint", R.NEAREST_EVEN),
    ("nearest_away", R.NEAREST_AWAY), ("round", R.NEAREST_AWAY), ("trunc", R.TOWARD_ZERO),
    ("floor", R.FLOOR), ("ceil", R.CEIL), ("round-to-odd", R.ODD), ("sr", R.STOCHASTIC),
    (R.CEIL, R.CEIL),
])
def test_parse(alias, mode):
    assert Rounding.parse(alias) is mode


def test_parse_unknown_lists_modes():
    with pytest.raises(ValueError, match="rounding must be one of.*nearest_even.*stochastic"):
        Rounding.parse("banker")


def test_rounds_toward_zero():
    neg = torch.tensor([True, False])
    assert R.TOWARD_ZERO.rounds_toward_zero(neg).tolist() == [True, True]
    assert R.FLOOR.rounds_toward_zero(neg).tolist() == [False, True]
    assert R.CEIL.rounds_toward_zero(neg).tolist() == [True, False]
    for m in (R.NEAREST_EVEN, R.NEAREST_AWAY, R.ODD, R.STOCHASTIC):
        assert m.rounds_toward_zero(neg).tolist() == [False, False]
