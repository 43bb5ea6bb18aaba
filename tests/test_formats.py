"""Number formats, bit for bit: every code of every format of <= 8 bits, every tie between
neighbours, brute force against the sorted value table for each rounding mode, and
ml_dtypes / torch's float8 casts as oracles on exhaustive and random (Hypothesis) inputs.

Deliberate differences from ml_dtypes (each asserted below, none skipped):

* fp6 / fp4 (no Inf, no NaN): ml_dtypes saturates an overflow and turns NaN into -0.
  lowbit with ``saturate=False`` raises ValueError for both (never a silent number);
  with ``saturate=True`` it equals ml_dtypes on every non-NaN input.
* e8m0: ml_dtypes gives NaN for +-0 and for negative input; lowbit rounds +-0 to the
  nearest value 2**-127 (the format has no zero) and raises ValueError for x < 0.
  For float32 subnormals 2**-127 < x < 1.5 * 2**-127 ml_dtypes returns 2**-126, which is
  not the nearest value; lowbit returns 2**-127 (checked by brute force below).
* e8m0 has one significand bit, so a tie 1.5 * 2**k goes to 2**(k+1), as in ml_dtypes,
  whatever the parity of the code; ``odd`` takes 2**k.
* torch 2.13's float32 -> float8_e4m3fn cast saturates (finite overflow and +-Inf give
  +-448) where OCP's non-saturating conversion gives NaN: it equals lowbit's
  ``saturate=True``; the e5m2 cast equals ``saturate=False``. The test probes which one
  torch does rather than assuming it.
"""

import math

import ml_dtypes as md
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit as lb
from lowbit.formats import BinaryFormat, FloatFormat, IntFormat, Rounding, Specials

get = lb.formats.get
R = Rounding
SMALL = [n for n in lb.formats.names() if get(n).bits <= 8]
FLOATS = [n for n in lb.formats.names() if isinstance(get(n), FloatFormat)]
SMALL_NUMERIC = [n for n in SMALL if not isinstance(get(n), BinaryFormat)]
ML = {"fp8_e4m3fn": md.float8_e4m3fn, "fp8_e5m2": md.float8_e5m2,
      "fp6_e3m2": md.float6_e3m2fn, "fp6_e2m3": md.float6_e2m3fn,
      "fp4_e2m1": md.float4_e2m1fn, "e8m0": md.float8_e8m0fnu,
      "fp16": np.float16, "bf16": md.bfloat16, "fp32": np.float32}
ML_INT = {"int4": md.int4, "uint4": md.uint4, "int2": md.int2, "uint2": md.uint2,
          "uint1": md.uint1}
DETERMINISTIC = [R.NEAREST_EVEN, R.NEAREST_AWAY, R.TOWARD_ZERO, R.FLOOR, R.CEIL, R.ODD]
SETTINGS = settings(derandomize=True, max_examples=40, deadline=None)


def t32(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal value and sign (so -0 != +0), or both NaN."""
    a, b = a.double(), b.double()
    return ((a == b) & (torch.signbit(a) == torch.signbit(b))) | (a.isnan() & b.isnan())


def assert_same(got, want, x=None):
    ok = same(got, want)
    if not ok.all():
        i = (~ok).nonzero().flatten()[:8]
        where = f" at x={x[i].tolist()}" if x is not None else ""
        raise AssertionError(f"{int((~ok).sum())} mismatches{where}: got {got[i].tolist()}, "
                             f"want {want[i].tolist()}")


def all_bf16_patterns() -> np.ndarray:
    return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)


def midpoints(name) -> np.ndarray:
    """Midpoints of neighbouring finite values (exact in float32), and +-1 float32 ulp."""
    v = get(name).values().double().numpy()
    m = ((v[:-1] + v[1:]) / 2).astype(np.float32)
    assert np.array_equal(m.astype(np.float64), (v[:-1] + v[1:]) / 2)
    return np.concatenate([m, np.nextafter(m, np.float32(np.inf)),
                           np.nextafter(m, np.float32(-np.inf))])


def special_inputs() -> np.ndarray:
    """Every target's midpoints +-1 ulp, float32 subnormals, huge values, signed zeros."""
    rng = np.random.default_rng(0)
    parts = [midpoints(n) for n in ML if get(n).bits <= 8]
    parts.append(rng.integers(0, 1 << 23, 2000).astype(np.uint32).view(np.float32))  # subnormal
    parts.append(np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-45,
                           2.0**-127, 1.5 * 2.0**-127, 65504, 65520, 57344, 61440, 448, 464,
                           480, 28, 30, 32, 7.5, 7.75, 8, 6, 7], np.float32))
    mags = np.exp2(rng.uniform(-150, 128, 20000)).astype(np.float32)
    parts.append(mags * rng.choice(np.float32([-1, 1]), mags.size))
    return np.concatenate(parts).astype(np.float32)


# -- registry ---------------------------------------------------------------------------------


def test_small_formats_are_the_ones_promised():
    assert sorted(SMALL) == sorted(
        [f"int{b}" for b in range(2, 9)] + [f"uint{b}" for b in range(1, 9)]
        + ["ternary", "binary", "fp8_e4m3fn", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1",
           "e8m0"])
    assert {"fp16", "bf16", "fp32"} <= set(lb.formats.names())


@pytest.mark.parametrize("alias,name", [("float8_e4m3fn", "fp8_e4m3fn"), ("bfloat16", "bf16"),
                                        ("float4_e2m1fn", "fp4_e2m1"), (" INT4 ", "int4"),
                                        ("float8_e8m0fnu", "e8m0"), ("half", "fp16")])
def test_get_aliases(alias, name):
    assert get(alias) is get(name) and get(name).name == name
    assert get(get(name)) is get(name)


def test_get_unknown_lists_formats_and_suggests():
    with pytest.raises(ValueError, match=r"unknown format 'fp8_e4m3'.*int4.*fp4_e2m1.*"
                                         r"Did you mean 'fp8_e4m3fn'\?"):
        get("fp8_e4m3")
    with pytest.raises(ValueError, match="known formats") as e:
        get("zzzz")
    assert "Did you mean" not in str(e.value)


def test_formats_are_frozen():
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        get("int4").bits = 3
    t = get("fp4_e2m1").table()
    t[0] = 99.0  # table() is a copy: the format is unchanged
    assert get("fp4_e2m1").table()[0].item() == 0.0 and get("fp4_e2m1").decode(
        torch.tensor([0])).item() == 0.0


# -- 1. every code ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_every_code_round_trips(name):
    f = get(name)
    codes = torch.arange(1 << f.bits)
    if name == "ternary":  # its code 0b10 (-2 in int2) is unused: narrow range -1..1
        codes = codes[codes != 2]
    vals = f.decode(codes)
    assert vals.dtype == torch.float32
    nan = vals.isnan()
    inf = vals.isinf()
    for saturate in (False, True):
        back = f.encode(vals, saturate=saturate)
        assert back.dtype == torch.uint8
        keep = ~nan & ~inf if saturate else ~nan  # saturate=True turns +-Inf into +-max
        assert torch.equal(back[keep], codes[keep].to(torch.uint8)), name
        assert f.decode(back[nan]).isnan().all()
        if saturate:
            assert torch.equal(f.decode(back[inf]), vals[inf].clamp(-f.max, f.max))
    assert int(nan.sum()) == {"fp8_e4m3fn": 2, "fp8_e5m2": 6, "e8m0": 1}.get(name, 0)
    # signed zeros keep their sign: the -0 code decodes to -0.0 and re-encodes to itself
    if isinstance(f, FloatFormat) and f.signed:
        neg0 = torch.tensor([1 << (f.bits - 1)])
        assert torch.signbit(f.decode(neg0)).item() and f.encode(f.decode(neg0)).item() == neg0


def test_ternary_unused_code():
    f = get("ternary")
    assert f.values().tolist() == [-1, 0, 1] and (f.min, f.max) == (-1, 1)
    assert f.table()[2].isnan()
    with pytest.raises(ValueError, match="code 2 is unused"):
        f.decode(torch.tensor([0, 2]))
    assert f.encode(torch.tensor([-5.0, -1.0, 0.0, 1.0, 9.0])).tolist() == [3, 3, 0, 1, 1]


def test_binary():
    f = get("binary")
    assert f.decode(torch.tensor([0, 1])).tolist() == [-1.0, 1.0]
    x = torch.tensor([-3.0, -0.0, 0.0, 1e-30, 2.0])
    assert f.round(x).tolist() == [-1, 1, 1, 1, 1] and f.encode(x).tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="binary supports rounding"):
        f.round(x, rounding="floor")
    with pytest.raises(ValueError, match="NaN"):
        f.round(torch.tensor([math.nan]))


@pytest.mark.parametrize("name", [n for n in FLOATS if get(n).bits <= 16])
def test_bit_field_encoder_on_every_code(name):
    """_bits_of (the encoder of formats without a torch dtype) on every code of every float
    format, the ones encode() sends through torch's cast included."""
    f = get(name)
    t = f.table()
    codes = f._bits_of(t).long()
    finite = ~t.isnan()
    assert torch.equal(codes[finite], torch.arange(1 << f.bits)[finite])
    assert f.decode(codes[~finite]).isnan().all()


@pytest.mark.parametrize("name", [n for n in ML if get(n).bits <= 16])
def test_decode_table_matches_ml_dtypes(name):
    f, t = get(name), ML[name]
    codes = np.arange(1 << f.bits, dtype=np.uint8 if f.bits <= 8 else np.uint16)
    want = t32(codes.view(t).astype(np.float32))
    assert_same(f.table(), want)


@pytest.mark.parametrize("name", list(ML_INT))
def test_int_table_matches_ml_dtypes(name):
    f, t = get(name), ML_INT[name]
    codes = np.arange(1 << f.bits, dtype=np.uint8)
    want = torch.from_numpy(codes.view(t).astype(np.int64)).float()
    assert torch.equal(f.table(), want)
    assert (f.min, f.max) == (int(md.iinfo(t).min), int(md.iinfo(t).max))


@pytest.mark.parametrize("name", [n for n in SMALL_NUMERIC if isinstance(get(n), IntFormat)])
def test_int_table_is_twos_complement(name):
    f = get(name)
    want = [c - (1 << f.bits) if f.signed and c >= 1 << (f.bits - 1) else c
            for c in range(1 << f.bits)]
    got = f.table().tolist()
    if name == "ternary":
        want[2] = got[2] = None
    assert got == want


# -- 2. ties and rounding modes ---------------------------------------------------------------


def code_parity(f, v: torch.Tensor) -> torch.Tensor:
    """Parity of the code of each (representable, finite) value v."""
    table = f.table().double()
    idx = (table[None, :] == v.double()[:, None]).float().argmax(1)
    assert torch.equal(table[idx], v.double())
    return idx % 2


@pytest.mark.parametrize("name", SMALL_NUMERIC)
def test_ties_go_to_even_code_and_away(name):
    f = get(name)
    v = f.values().double()
    lo, hi = v[:-1], v[1:]
    mid = t32(((lo + hi) / 2).numpy())
    even = f.decode(f.encode(mid, rounding="nearest_even", saturate=False)).double()
    assert ((even == lo) | (even == hi)).all()
    if name == "e8m0":  # one significand bit: 1.5 * 2**k ties up to 2**(k+1), as ml_dtypes
        assert torch.equal(even, hi)
    else:
        assert (code_parity(f, even) == 0).all(), name
    away = f.decode(f.encode(mid, rounding="nearest_away", saturate=False)).double()
    assert torch.equal(away, torch.where(hi.abs() > lo.abs(), hi, lo))
    assert torch.equal(f.round(mid, "nearest_away", saturate=False).double(), away)


# x -> expected (nearest_even, nearest_away, toward_zero, floor, ceil, odd), saturate=False
HAND = {
    "fp4_e2m1": {2.5: (2, 3, 2, 2, 3, 3), 3.5: (4, 4, 3, 3, 4, 3), 5.0: (4, 6, 4, 4, 6, 6),
                 -5.0: (-4, -6, -4, -6, -4, -6), 2.6: (3, 3, 2, 2, 3, 3),
                 0.25: (0, .5, 0, 0, .5, .5), -0.25: (-0.0, -.5, -0.0, -.5, -0.0, -.5),
                 0.75: (1, 1, .5, .5, 1, .5), 1.25: (1, 1.5, 1, 1, 1.5, 1.5),
                 6.0: (6,) * 6, -1.0: (-1,) * 6},
    "int4": {2.5: (2, 3, 2, 2, 3, 3), -2.5: (-2, -3, -2, -3, -2, -3), 6.5: (6, 7, 6, 6, 7, 7),
             -7.5: (-8, -8, -7, -8, -7, -7), 2.4: (2, 2, 2, 2, 3, 3), 3.0: (3,) * 6},
    "uint8": {0.5: (0, 1, 0, 0, 1, 1), 254.5: (254, 255, 254, 254, 255, 255)},
    "fp8_e4m3fn": {17.0: (16, 18, 16, 16, 18, 18), 1.5 * 2.0**-9: (2.0**-8, 2.0**-8, 2.0**-9,
                   2.0**-9, 2.0**-8, 2.0**-9), -1.5625 * 2.0**-6: (-1.5 * 2.0**-6,
                   -1.625 * 2.0**-6, -1.5 * 2.0**-6, -1.625 * 2.0**-6, -1.5 * 2.0**-6,
                   -1.625 * 2.0**-6),
                   464.0: (448, math.nan, 448, 448, math.nan, math.nan)},
    "fp8_e5m2": {61440.0: (math.inf, math.inf, 57344, 57344, math.inf, 57344)},
    "fp6_e2m3": {7.25: (7, 7.5, 7, 7, 7.5, 7.5), 0.0625: (0, .125, 0, 0, .125, .125)},
    "e8m0": {3.0: (4, 4, 2, 2, 4, 2), 2.5: (2, 2, 2, 2, 4, 2), 3.5: (4, 4, 2, 2, 4, 2),
             2.0**-127: (2.0**-127,) * 6},
}


@pytest.mark.parametrize("name", list(HAND))
@pytest.mark.parametrize("mode", DETERMINISTIC, ids=lambda m: m.value)
def test_hand_made_table(name, mode):
    f = get(name)
    x = torch.tensor(list(HAND[name]), dtype=torch.float32)
    want = torch.tensor([row[DETERMINISTIC.index(mode)] for row in HAND[name].values()],
                        dtype=torch.float32)
    got = f.round(x, rounding=mode, saturate=False)
    assert_same(got, want, x)
    assert_same(f.decode(f.encode(x, rounding=mode.value, saturate=False)), want, x)


def brute_force(f, x: torch.Tensor, mode: Rounding) -> torch.Tensor:
    """The answer from the sorted value table alone (x within [min, max])."""
    v = f.values().double()
    xd = x.double()
    i = torch.searchsorted(v, xd, right=True) - 1  # v[i] <= x < v[i+1]
    lo = v[i.clamp(0, len(v) - 1)]
    hi = v[(i + 1).clamp(max=len(v) - 1)]
    hi = torch.where(lo == xd, lo, hi)
    exact = lo == xd
    neg = xd < 0
    if mode is R.FLOOR:
        y = lo
    elif mode is R.CEIL:
        y = hi
    elif mode is R.TOWARD_ZERO:
        y = torch.where(neg, hi, lo)
    elif mode is R.ODD:
        if f.name == "e8m0":  # one significand bit: the "odd" neighbour is 2**k (the lower)
            y = lo
        else:
            y = torch.where(code_parity(f, lo) == 1, lo, hi)
    else:
        d_lo, d_hi = xd - lo, hi - xd
        if mode is R.NEAREST_AWAY:
            tie = torch.where(neg, lo, hi)
        elif f.name == "e8m0":
            tie = hi
        else:
            tie = torch.where(code_parity(f, lo) == 0, lo, hi)
        y = torch.where(d_lo < d_hi, lo, torch.where(d_hi < d_lo, hi, tie))
    y = torch.where(exact, xd, y)
    if isinstance(f, FloatFormat):  # a zero result keeps the sign of x
        y = torch.where(y == 0, torch.copysign(torch.zeros_like(y), xd), y)
    return y.float()


def in_range_inputs(f, n=3000, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    lo = float(f.min)
    v = f.values().double().numpy()
    if isinstance(f, FloatFormat):
        lo_exp = math.log2(f.min_subnormal) - 2
        mags = np.exp2(rng.uniform(lo_exp, math.log2(f.max), n))
        sign = rng.choice([-1.0, 1.0], n) if f.signed else np.ones(n)
        x = mags * sign
    else:
        x = rng.uniform(lo, float(f.max), n)
    x = np.concatenate([x, v, (v[:-1] + v[1:]) / 2]).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)),
                        np.nextafter(x, np.float32(-np.inf))])
    return t32(x[(x >= lo) & (x <= f.max)])


@pytest.mark.parametrize("name", SMALL_NUMERIC)
def test_every_mode_against_sorted_table(name):
    f = get(name)
    x = in_range_inputs(f)
    for mode in DETERMINISTIC:
        got = f.round(x, rounding=mode, saturate=False)
        want = brute_force(f, x, mode)
        if isinstance(f, IntFormat):  # integer results carry no signed zero
            assert torch.equal(got, want), mode
        else:
            assert_same(got, want, x)
        if mode is R.NEAREST_EVEN:
            assert_same(f.round(x), got)  # saturate=True: no difference in range


# -- 3. oracles: ml_dtypes and torch ----------------------------------------------------------


def check_against_ml_dtypes(name: str, x: np.ndarray) -> None:
    """lowbit (saturate=False) against ml_dtypes' conversion, with the documented exceptions."""
    f, t = get(name), ML[name]
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        want = t32(x.astype(t).astype(np.float32))
    valid = np.ones(x.shape, bool)
    nan = np.isnan(x)
    if f.specials is Specials.NONE:  # no Inf/NaN: overflow and NaN raise (ml: saturate, -0)
        ulp = 2.0 ** (f.emax - f.mantissa_bits)
        with np.errstate(invalid="ignore"):  # max's code is odd: the tie above it goes up
            over = np.abs(x.astype(np.float64)) >= f.max + ulp / 2
        valid &= ~nan & ~over
        if (over & ~nan).any():
            with pytest.raises(ValueError, match="overflow max"):
                f.round(t32(x[over & ~nan]), saturate=False)
            assert_same(f.round(t32(x[~nan]), saturate=True), want[torch.from_numpy(~nan)])
        if nan.any():
            with pytest.raises(ValueError, match="has no NaN"):
                f.round(t32(x[nan]), saturate=False)
    if name == "e8m0":
        negative = np.signbit(x) & ~nan & (x != 0)
        valid &= ~negative
        if negative.any():
            with pytest.raises(ValueError, match="unsigned"):
                f.round(t32(x[negative]), saturate=False)
        zero = x == 0  # no zero in e8m0: nearest is 2**-127 (ml_dtypes: NaN)
        ml_ceils = (x > 2.0**-127) & (x < 1.5 * 2.0**-127)  # ml_dtypes: 2**-126
        want[torch.from_numpy(zero | ml_ceils)] = 2.0**-127
        assert not (want[torch.from_numpy(ml_ceils)] != 2.0**-127).any()
    xv = t32(x[valid])
    got_codes = f.encode(xv, saturate=False)
    want_v = want[torch.from_numpy(valid)]
    assert_same(f.decode(got_codes), want_v, xv)
    assert_same(f.round(xv, saturate=False), want_v, xv)
    finite = ~want_v.isnan()
    with np.errstate(over="ignore", invalid="ignore"):
        ml_codes = np.asarray(x[valid].astype(t)).view(np.uint8 if f.bits <= 8 else np.uint16)
    if name == "e8m0":
        finite &= ~torch.from_numpy(ml_codes == 255) | want_v.isnan()
        ml_codes = np.where(x[valid] == 0, 0, ml_codes)
    ours = got_codes.long()[finite]
    theirs = torch.from_numpy(ml_codes.astype(np.int64))[finite]
    if name == "e8m0":
        keep = ~torch.from_numpy((x[valid] > 2.0**-127) & (x[valid] < 1.5 * 2.0**-127))[finite]
        ours, theirs = ours[keep], theirs[keep]
    assert torch.equal(ours, theirs), name


ORACLE = [n for n in ML if n != "fp32"]


@pytest.mark.parametrize("name", ORACLE)
def test_ml_dtypes_all_bf16_patterns(name):
    check_against_ml_dtypes(name, all_bf16_patterns())


@pytest.mark.parametrize("name", ORACLE)
def test_ml_dtypes_special_inputs(name):
    check_against_ml_dtypes(name, special_inputs())


@pytest.mark.parametrize("name", ORACLE)
@SETTINGS
@given(bits=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=256))
def test_ml_dtypes_random_bit_patterns(name, bits):
    check_against_ml_dtypes(name, np.array(bits, np.uint32).view(np.float32))


@pytest.mark.parametrize("name", ORACLE)
@SETTINGS
@given(xs=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1,
                   max_size=256))
def test_ml_dtypes_random_floats(name, xs):
    check_against_ml_dtypes(name, np.array(xs, np.float32))


def test_ml_dtypes_random_fp32_bulk():
    rng = np.random.default_rng(42)
    x = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    for name in ORACLE:
        check_against_ml_dtypes(name, x)


def test_ml_dtypes_differences_are_real():
    """The exceptions written into check_against_ml_dtypes still describe ml_dtypes."""
    f4 = np.array([7.0, np.nan], np.float32).astype(md.float4_e2m1fn).astype(np.float32)
    assert f4[0] == 6.0 and f4[1] == 0.0  # saturates; NaN -> (-)0
    e = np.array([0.0, -1.0, 1.25 * 2.0**-127], np.float32).astype(md.float8_e8m0fnu)
    e = e.astype(np.float32)
    assert np.isnan(e[0]) and np.isnan(e[1]) and e[2] == 2.0**-126
    assert get("e8m0").round(torch.tensor([0.0, 1.25 * 2.0**-127])).tolist() == [2.0**-127] * 2


def torch_e4m3_saturates() -> bool:
    return torch.tensor([1e4]).to(torch.float8_e4m3fn).view(torch.uint8).item() == 0x7E


@pytest.mark.parametrize("name", ["fp8_e4m3fn", "fp8_e5m2"])
def test_torch_float8_casts(name):
    f = get(name)
    x = t32(np.concatenate([all_bf16_patterns(), special_inputs()]))
    theirs = x.to(f.torch_dtype).view(torch.uint8)
    sat = f.encode(x, saturate=True)
    nosat = f.encode(x, saturate=False)
    nan = x.isnan()
    clamp_cast = x.clamp(-f.max, f.max).to(f.torch_dtype).view(torch.uint8)
    assert torch.equal(sat[~nan], clamp_cast[~nan])
    want = sat if (name == "fp8_e4m3fn" and torch_e4m3_saturates()) else nosat
    nan_code = f.decode(theirs).isnan()
    assert torch.equal(f.decode(want).isnan(), nan_code)
    assert torch.equal(want[~nan_code], theirs[~nan_code])
    assert (sat != nosat).any()  # the inputs do overflow


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp8_e4m3fn", "fp8_e5m2"])
def test_fast_path_equals_exact_path(name):
    f = get(name)
    x = t32(np.concatenate([all_bf16_patterns(), special_inputs()]))
    fast = f.round(x)  # torch cast after clamping
    exact = f._round_exact(x, R.NEAREST_EVEN, True, None).float()
    assert_same(fast, exact, x)
    assert_same(f.round(x, saturate=False)[x.abs() <= f.max],
                fast[x.abs() <= f.max])


def test_fp32_round_and_codes():
    f = get("fp32")
    x = t32(np.concatenate([all_bf16_patterns(), special_inputs()]))
    for mode in DETERMINISTIC:
        assert_same(f.round(x, mode, saturate=False), x)
    sat = f.round(torch.tensor([math.inf, -math.inf, 1.0]))
    assert sat.tolist() == [f.max, -f.max, 1.0]
    codes = f.encode(x, saturate=False)
    nan = x.isnan()
    assert torch.equal(codes[~nan], x[~nan].view(torch.int32).long() & 0xFFFFFFFF)
    assert set(codes[nan].tolist()) == {0x7FC00000, 0xFFC00000}  # one quiet NaN per sign
    assert_same(f.decode(codes), x)
    with pytest.raises(ValueError, match="too large"):
        f.table()


# -- 4. overflow and specials -----------------------------------------------------------------


def above_max(f) -> float:
    """A finite float32 that rounds above max (float32's own max where 3 * max would not fit)."""
    big = min(f.max * 3, float(np.finfo(np.float32).max))
    assert big > f.max or f.name == "fp32"
    return big


@pytest.mark.parametrize("name,want", [("fp8_e4m3fn", math.nan), ("fp8_e5m2", math.inf),
                                       ("bf16", math.inf), ("fp16", math.inf),
                                       ("e8m0", math.nan)])
def test_overflow_without_saturate(name, want):
    f = get(name)
    x = torch.tensor([f.max * 4, math.inf]) if name != "e8m0" else torch.tensor([math.inf])
    got = f.round(x, saturate=False)
    assert_same(got, torch.full_like(x, want))
    if f.signed:
        assert_same(f.round(-x, saturate=False), torch.full_like(x, -want))


@pytest.mark.parametrize("name", ["fp6_e3m2", "fp6_e2m3", "fp4_e2m1"])
def test_overflow_without_saturate_raises_where_no_special(name):
    f = get(name)
    for x in (f.max * 2, -f.max * 2, math.inf, -math.inf):
        with pytest.raises(ValueError, match="no Inf or NaN"):
            f.round(torch.tensor([1.0, x]), saturate=False)


@pytest.mark.parametrize("name", FLOATS)
def test_saturate_clamps_including_inf(name):
    f = get(name)
    x = torch.tensor([math.inf, above_max(f), f.max])
    assert f.round(x).tolist() == [f.max] * 3
    if f.signed:
        assert f.round(-x).tolist() == [-f.max] * 3
    for mode in DETERMINISTIC:
        assert f.round(x, mode).tolist() == [f.max] * 3


@pytest.mark.parametrize("name", [n for n in FLOATS if n != "fp32"])
def test_directed_toward_zero_overflow_gives_max(name):
    f = get(name)
    big = torch.tensor([above_max(f)])
    for mode in (R.TOWARD_ZERO, R.FLOOR):
        assert f.round(big, mode, saturate=False).item() == f.max
    if f.signed:
        for mode in (R.TOWARD_ZERO, R.CEIL):
            assert f.round(-big, mode, saturate=False).item() == -f.max
        # the other direction overflows (to Inf / NaN / error) and Inf stays Inf
        if f.specials is not Specials.NONE:
            assert not math.isfinite(f.round(big, R.CEIL, saturate=False).item())
            assert not math.isfinite(f.round(torch.tensor([math.inf]), R.TOWARD_ZERO,
                                             saturate=False).item())


@pytest.mark.parametrize("name", [n for n in FLOATS if get(n).has_nan])
def test_nan_stays_nan(name):
    f = get(name)
    for saturate in (True, False):
        for mode in DETERMINISTIC + [R.STOCHASTIC]:
            y = f.round(torch.tensor([math.nan, 1.0]), mode, saturate)
            assert math.isnan(y[0]) and y[1] == 1.0
        assert f.decode(f.encode(torch.tensor([math.nan]), saturate=saturate)).isnan().all()


@pytest.mark.parametrize("name", [n for n in SMALL_NUMERIC + ["binary"] if not get(n).has_nan])
def test_nan_raises_where_format_has_none(name):
    with pytest.raises(ValueError, match="NaN"):
        get(name).encode(torch.tensor([0.0, math.nan]))


@pytest.mark.parametrize("name", [n for n in FLOATS if get(n).signed])
def test_signed_zero_preserved(name):
    f = get(name)
    tiny = f.min_subnormal / 4
    x = torch.tensor([-0.0, 0.0, -tiny, tiny])
    for mode in (R.NEAREST_EVEN, R.NEAREST_AWAY, R.TOWARD_ZERO, R.STOCHASTIC):
        y = f.round(x, mode, generator=torch.Generator().manual_seed(0))
        zeros = y == 0
        assert torch.equal(torch.signbit(y[zeros]), torch.signbit(x[zeros])), (mode, y)
    assert f.round(x).tolist() == [0.0] * 4 and torch.signbit(f.round(x)).tolist() == [
        True, False, True, False]


def test_e8m0_rejects_negative_and_has_no_zero():
    f = get("e8m0")
    with pytest.raises(ValueError, match="unsigned"):
        f.encode(torch.tensor([1.0, -2.0]))
    y = f.round(torch.tensor([0.0, -0.0, 1e-45, 2.0**-128]))
    assert y.tolist() == [2.0**-127] * 4
    assert f.encode(torch.tensor([1.0, 2.0**127, 2.0**-127])).tolist() == [127, 254, 0]


@pytest.mark.parametrize("name", [n for n in SMALL_NUMERIC if isinstance(get(n), IntFormat)])
def test_int_out_of_range(name):
    f = get(name)
    x = torch.tensor([f.max + 1.0, f.min - 1.0, math.inf, -math.inf])
    assert f.round(x).tolist() == [f.max, f.min, f.max, f.min]
    for v in x:
        with pytest.raises(ValueError, match="outside"):
            f.round(v[None], saturate=False)
    assert f.round(torch.tensor([f.max + 0.4]), saturate=False).item() == f.max


# -- 5. invariants ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", FLOATS)
def test_float_invariants(name):
    f = get(name)
    assert int(f.signed) + f.exponent_bits + f.mantissa_bits == f.bits
    assert f.bits in (4, 6, 8, 16, 32)
    assert f.min == (-f.max if f.signed else f.min_normal)
    ulp = 2.0 ** (f.emax - f.mantissa_bits)  # spacing just below max
    assert f.max == (2.0 ** (f.emax + 1) - ulp) - (ulp if f.specials is Specials.NAN_ONLY
                                                   and f.mantissa_bits else 0)
    below_max = f.max - ulp if f.mantissa_bits else f.max / 2
    probe = [f.max, f.min_normal, f.min_subnormal, below_max, -f.max if f.signed else 1.0]
    if f.bits <= 16:
        t = f.table()
        for v in probe:
            assert (t == v).any(), v
        pos = f.values()[f.values() > 0]
        assert pos.min().item() == f.min_subnormal and pos.max().item() == f.max
    x = torch.tensor(probe, dtype=torch.float32)
    assert torch.equal(f.decode(f.encode(x, saturate=False)), x)
    # the next value above max overflows; the midpoint overflows iff max's code is odd
    above = torch.tensor([f.max + ulp], dtype=torch.float32)
    mid = torch.tensor([f.max + ulp / 2], dtype=torch.float32)
    max_code_odd = f.encode(torch.tensor([f.max])).item() % 2 == 1 or f.mantissa_bits == 0
    if f.specials is Specials.NONE:
        for x in (above,) + ((mid,) if max_code_odd else ()):
            with pytest.raises(ValueError, match="overflow"):
                f.round(x, saturate=False)
    else:
        for x in (above,) + ((mid,) if max_code_odd else ()):
            assert not math.isfinite(f.round(x, saturate=False).item())
    if not max_code_odd:  # e4m3fn: 464 ties to 448 (mantissa 110 is even)
        assert f.round(mid, saturate=False).item() == f.max
    assert f.round(above).item() == f.max


@pytest.mark.parametrize("name", [n for n in FLOATS if n in ML])
def test_limits_match_ml_dtypes_finfo(name):
    f, fi = get(name), md.finfo(ML[name])
    assert fi.bits == f.bits
    assert float(fi.max) == f.max and float(fi.smallest_normal) == f.min_normal
    assert float(fi.smallest_subnormal) == f.min_subnormal
    assert fi.maxexp - 1 == f.emax and fi.minexp == f.emin
    assert fi.nmant == f.mantissa_bits
    assert f.has_inf == bool(np.isinf(np.array([np.inf], np.float32).astype(ML[name])
                                      .astype(np.float32))[0])


@pytest.mark.parametrize("name", SMALL_NUMERIC)
def test_limits_are_the_table_extremes(name):
    f = get(name)
    v = f.values()
    assert (v.min().item(), v.max().item()) == (f.min, f.max)


# -- 6. stochastic rounding -------------------------------------------------------------------


@pytest.mark.parametrize("name,x", [("fp4_e2m1", 2.6), ("fp4_e2m1", -4.5), ("fp4_e2m1", 0.1),
                                    ("fp8_e4m3fn", 300.0), ("fp8_e4m3fn", -3e-3),
                                    ("fp8_e5m2", 1e-6), ("fp6_e2m3", 0.3), ("fp6_e3m2", 13.0),
                                    ("e8m0", 3.0), ("e8m0", 2.0**-126 * 1.7), ("int4", -2.3),
                                    ("uint8", 100.9), ("bf16", 1.00390625 + 2**-10),
                                    ("fp16", 1e-7)])
def test_stochastic_unbiased_and_neighbours_only(name, x):
    f = get(name)
    n = 20_000
    xs = torch.full((n,), x)
    x = xs[0].item()  # the float32 value actually rounded
    y = f.round(xs, "stochastic", generator=torch.Generator().manual_seed(0)).double()
    lo = f.round(xs[:1], "floor").item()
    hi = f.round(xs[:1], "ceil").item()
    assert lo < x < hi
    assert set(y.unique().tolist()) == {lo, hi}
    p = (x - lo) / (hi - lo)
    se = (hi - lo) * math.sqrt(p * (1 - p) / n)
    assert abs(y.mean().item() - x) < 5 * se, (y.mean().item(), x, se)
    codes = f.encode(xs, "stochastic", generator=torch.Generator().manual_seed(0))
    assert torch.equal(f.decode(codes).double(), y)


def test_stochastic_binary_unbiased():
    f = get("binary")
    n = 40_000
    y = f.round(torch.full((n,), 0.3), "stochastic", generator=torch.Generator().manual_seed(0))
    assert set(y.unique().tolist()) == {-1.0, 1.0}
    assert abs(y.mean().item() - 0.3) < 5 * math.sqrt((1 - 0.09) / n)


def test_stochastic_exact_values_never_move():
    f = get("fp8_e4m3fn")
    v = f.values()
    y = f.round(v, "stochastic", generator=torch.Generator().manual_seed(3))
    assert torch.equal(y, v)


# -- 8. bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL + ["fp16", "bf16", "fp32"])
def test_bad_input(name):
    f = get(name)
    with pytest.raises(TypeError, match="floating"):
        f.encode(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        f.decode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=rf"codes must lie in \[0, {(1 << f.bits) - 1}\]"):
        f.decode(torch.tensor([1 << f.bits]))
    with pytest.raises(ValueError, match="codes must lie in"):
        f.decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match="rounding must be one of"):
        f.round(torch.tensor([1.0]), rounding="bankers")


def test_accepts_python_numbers_and_low_precision_tensors():
    f = get("fp4_e2m1")
    assert f.round([2.5, 5.0]).tolist() == [2.0, 4.0]
    assert f.round(torch.tensor([2.5], dtype=torch.bfloat16)).dtype == torch.float32
    assert f.encode(torch.tensor([[1.0, -6.0]], dtype=torch.float16)).tolist() == [[2, 15]]
