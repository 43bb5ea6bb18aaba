"""The native quantize/dequantize fast paths (lowbit.quant.fast) against the torch reference
(functional.py / mx.py with the fast path switched off), bit for bit: codes, scales, zero
points, tensor scales and dequantized values, on the AVX-512 and the scalar C paths."""

import os
import subprocess
import sys

import pytest
import torch

import lowbit as lb
from lowbit.quant import QParams, fast
from lowbit.quant import native as nat

if nat.library() is None:
    pytest.skip("native quantize kernels unavailable (no C compiler or LOWBIT_NATIVE=0)",
                allow_module_level=True)

PLAIN = ["int8", "int8:channel", "int8:token", "int8:asym", "int8:channel:asym", "uint8:asym",
         "int4:g128", "int4:g128:asym", "int4:g32", "int4:channel", "uint4:g64:asym",
         "int2:g32", "int3:channel", "int6:g64:asym", "fp8_e4m3fn", "fp8_e4m3fn:channel",
         "fp8_e5m2:token", "fp6_e3m2:g32", "fp6_e2m3:channel", "fp4_e2m1:g32"]
BLOCK = ["mxfp8", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "mxfp4:ceil",
         "mxfp8:even", "mxint8:even", "mxfp6_e3m2:ceil", "nvfp4", "mxfp4:b64"]
SHAPES = [(1, 256), (7, 384), (9, 128), (3, 2, 256), (1024,)]


@pytest.fixture(params=["avx512", "scalar"])
def isa(request):
    if request.param == "avx512" and nat.set_isa(1) != 1:
        pytest.skip("no AVX-512 on this CPU")
    if request.param == "scalar":
        nat.set_isa(0)
    yield request.param
    nat.set_isa(1)


def _reference_quantize(x, scheme, qparams=None):
    saved, fast.quantize = fast.quantize, lambda *a: None
    try:
        return lb.quantize(x, scheme, qparams)
    finally:
        fast.quantize = saved


def _reference_dequantize(q):
    saved, fast.dequantize = fast.dequantize, lambda *a: None
    try:
        return lb.dequantize(q)
    finally:
        fast.dequantize = saved


def _bits(t):
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(_bits(a), _bits(b))


def check(x, scheme, qparams=None, may_fall_back=False):
    """Fast path taken and equal to the reference in every stored part and on dequantize."""
    scheme = lb.Scheme.parse(scheme)
    got = fast.quantize(x, scheme, qparams)
    if got is None and may_fall_back:
        return None
    assert got is not None, f"fast path not taken for {scheme} on {tuple(x.shape)}"
    want = _reference_quantize(x, scheme, qparams)
    for part in ("codes", "scale", "zero_point", "micro_exponent", "tensor_scale"):
        assert _same(getattr(got, part), getattr(want, part)), (str(scheme), part)
    assert tuple(got.shape) == tuple(want.shape)
    deq = fast.dequantize(want)
    assert deq is not None
    assert _same(deq, _reference_dequantize(want)), str(scheme)
    assert _same(lb.dequantize(got), deq)
    return got


def _data(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    rows = x.reshape(-1, shape[-1])
    rows *= torch.logspace(-8, 8, rows.shape[0])[:, None]  # magnitudes row by row
    rows[0, : min(32, shape[-1])] = 0.0  # an all-zero block
    if rows.shape[0] > 2:
        rows[2] = 0.0  # an all-zero row
        rows[1, 3] = 1e5 * rows[1].abs().max()  # an outlier
    return x


@pytest.mark.parametrize("scheme", PLAIN + BLOCK)
def test_matches_reference_on_random_data(scheme, isa):
    for i, shape in enumerate(SHAPES):
        # per-channel on a 1-D tensor: one scale per element; nibbles straddle two scales
        straddles = len(shape) == 1 and "channel" in scheme and lb.Scheme.parse(scheme).bits < 8
        got = check(_data(shape, i), scheme, may_fall_back=straddles)
        assert (got is None) == straddles


@pytest.mark.parametrize("scheme", ["int8", "int4:g128:asym", "fp8_e4m3fn", "int8:channel:asym",
                                    "mxfp4", "mxfp8", "nvfp4"])
def test_ties_tiny_huge_and_subnormal_values(scheme, isa):
    ties = torch.arange(-127.5, 128.0, 1.0).clamp(-127, 127)  # x.5 ties at scale 1 (amax 127)
    fp8_mid = torch.tensor([448.0, 0.5 * (2**-9), 1.5 * 2**-9, 2.5 * 2**-9, 1.0625, 1.1875,
                            3.5, 5.0, 0.75, 0.25, 6.0, -2.5, -5.0, 9.0, 13.0, 17.0])
    special = torch.tensor([1e-45, -1e-45, 1e-40, 1.17549435e-38, -3e38, 3e38, 2.0**-126,
                            -0.0, 0.0, 65504.0, 2.0**127, 2.0**-149, 7.0, -7.0, 5.0, 1e-30])
    rows = [torch.cat([ties, ties[:128]]), torch.cat([fp8_mid, torch.zeros(368)]),
            torch.cat([special, torch.zeros(368)]), torch.cat([special[:3], torch.zeros(381)]),
            torch.full((384,), 2.0**-140), torch.full((384,), -3.0e38)]
    check(torch.stack(rows), scheme)
    for row in rows:
        # NVFP4 leaves tensor scales whose reciprocal overflows to the reference
        tiny = scheme == "nvfp4" and float(row.abs().max()) < 1e-30
        assert (check(row.reshape(1, -1).clone(), scheme, may_fall_back=tiny) is None) == tiny


def _near_ties(amax: torch.Tensor, qmax: float, grid: torch.Tensor) -> torch.Tensor:
    """Rows whose x / s lands within a few ulps of a rounding tie (grid midpoints times
    s = amax / qmax), so a reciprocal multiply instead of a division rounds differently."""
    s = (amax / qmax).double()[:, None]
    mids = ((grid[1:] + grid[:-1]) / 2).double()
    x = (mids[None, :] * s).float()
    around = [x]
    for steps in (1, 2):
        up, down = x, x
        for _ in range(steps):
            up = torch.nextafter(up, torch.tensor(float("inf")))
            down = torch.nextafter(down, torch.tensor(float("-inf")))
        around += [up, down]
    rows = torch.cat([amax[:, None], *around], 1)
    rows = torch.maximum(torch.minimum(rows, amax[:, None]), -amax[:, None])
    return torch.cat([rows, torch.zeros(rows.shape[0], -rows.shape[1] % 128)], 1)


def test_near_ties_tell_a_division_from_a_reciprocal_multiply(isa):
    amax = torch.rand(16, generator=torch.Generator().manual_seed(9)) * 3 + 0.01
    e4m3 = lb.formats.get("fp8_e4m3fn").values()
    for scheme, qmax, grid in [("int8:channel", 127.0, torch.arange(-127.0, 128.0)),
                               ("fp8_e4m3fn:channel", 448.0, e4m3)]:
        x = _near_ties(amax, qmax, grid)
        s = (amax / qmax)[:, None]
        fmt = lb.Scheme.parse(scheme).format
        by_div, by_rcp = fmt.encode(x / s), fmt.encode(x * (1.0 / s))
        assert not torch.equal(by_div, by_rcp)  # the data can tell the two apart
        check(x, scheme)
    g = lb.formats.get("fp4_e2m1").values()
    x = _near_ties(amax, 6.0, g)[:, :512].contiguous()
    check(x, "nvfp4")  # NVFP4 multiplies by (1 / ts) / s8, as the reference does
    check(x, "mxfp4")


def test_given_qparams_match_reference(isa):
    x = _data((6, 256), 5)
    check(x, "int8:channel", QParams(torch.full((6, 1), 0.02)))
    check(x, "int4:g128:asym", QParams(torch.rand(6, 2) + 0.01,
                                       torch.randint(-8, 8, (6, 2), dtype=torch.int32)))
    check(x, "fp8_e4m3fn", QParams(torch.tensor(0.5)))  # a scalar for a per-tensor scale
    check(x, "nvfp4", QParams(torch.tensor(0.01)))


def test_fp8_encoder_against_torch_cast_near_every_value_and_midpoint(isa):
    for name, dtype in [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)]:
        fmt = lb.formats.get(name)
        v = fmt.values().double()
        pts = torch.cat([v, (v[1:] + v[:-1]) / 2, v * 1.0001, torch.tensor([fmt.max * 1.5])])
        x = pts.float()
        up = torch.nextafter(x, torch.tensor(float("inf")))
        down = torch.nextafter(x, torch.tensor(float("-inf")))
        x = torch.cat([x, up, down, -x, -up, -down, torch.randn(4000) * fmt.max / 8,
                       torch.tensor([1e38, -1e38])]).reshape(1, -1).contiguous()
        q = check(x, name, QParams(torch.ones(1, 1)))
        want = x.clamp(-fmt.max, fmt.max).to(dtype).view(torch.uint8)
        assert torch.equal(q.codes, want), name


def test_small_float_encoders_against_the_format_at_every_midpoint(isa):
    for name in ["fp6_e3m2", "fp6_e2m3", "fp4_e2m1"]:
        fmt = lb.formats.get(name)
        v = fmt.values()
        mids = (v[1:] + v[:-1]) / 2
        x = torch.cat([v, mids, torch.nextafter(mids, torch.tensor(9.0)),
                       torch.nextafter(mids, torch.tensor(-9.0)), torch.tensor([99.0, -1e-30])])
        x = torch.cat([x, torch.zeros(-x.numel() % 32)]).reshape(1, -1)
        q = check(x, name, QParams(torch.ones(1, 1)))
        assert torch.equal(q.unpacked_codes().flatten()[: v.numel()], fmt.encode(v))


def test_every_code_dequantizes_like_the_reference(isa):
    for scheme in ["fp8_e4m3fn", "fp8_e5m2", "int8", "uint8:asym", "int4:g2", "fp4_e2m1:g2"]:
        s = lb.Scheme.parse(scheme)
        bits = s.format.bits
        codes = torch.arange(1 << bits, dtype=torch.int32).to(torch.uint8).reshape(1, -1)
        q = _reference_quantize(torch.ones(1, 1 << bits), s)  # right shapes and dtypes
        q.codes = lb.formats.pack(codes, bits) if bits < 8 else codes
        q.scale = torch.full_like(q.scale, 0.37)
        if q.zero_point is not None:
            q.zero_point = torch.full_like(q.zero_point, 3)
        assert _same(fast.dequantize(q), _reference_dequantize(q)), scheme
    x = torch.ones(1, 256 * 32)
    for scheme in ["mxfp8", "mxfp4", "mxint8", "nvfp4"]:
        q = _reference_quantize(x, scheme)
        q.scale = torch.arange(q.scale.numel(), dtype=torch.int32).remainder(256).to(
            torch.uint8).reshape(q.scale.shape)
        got, want = fast.dequantize(q), _reference_dequantize(q)
        assert torch.equal(torch.isnan(got), torch.isnan(want))
        assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(want)), scheme


def test_long_rows_take_the_two_pass_path():
    x = _data((2, 20000), 3)  # rows longer than one work piece (16384)
    for scheme in ["int8:channel", "int8:channel:asym", "int4:channel", "fp8_e4m3fn:channel"]:
        check(x, scheme)
    check(_data((1, 40000), 4).flatten(), "int8:asym")


@pytest.mark.parametrize("scheme", ["int8", "int8:channel:asym", "int4:g128", "fp8_e4m3fn",
                                    "nvfp4"])
def test_nan_and_inf_raise_the_reference_error(scheme):
    for bad in (float("nan"), float("inf"), float("-inf")):
        x = _data((4, 256), 1)
        x[3, 200] = bad
        assert fast.quantize(x, lb.Scheme.parse(scheme), None) is None
        with pytest.raises(ValueError, match="NaN"):
            lb.quantize(x, scheme)


@pytest.mark.parametrize("scheme", ["mxfp8", "mxfp4", "mxint8", "mxfp6_e2m3"])
def test_mx_blocks_with_nan_or_inf_get_the_nan_scale(scheme, isa):
    x = _data((4, 1024), 2)
    x[1, 40], x[2, 0], x[3, 1023] = float("nan"), float("inf"), float("-inf")
    q = check(x, scheme)
    assert q.scale[1, 1] == 255 and q.scale[2, 0] == 255 and q.scale[3, 31] == 255
    assert (q.scale == 255).sum() == 3


@pytest.mark.parametrize("scheme,x,dequantize_too", [
    ("int8:channel1", torch.randn(8, 64), True),     # blocks are not contiguous runs
    ("int4:g128:pad", torch.randn(4, 200), True),    # padding
    ("int8:stochastic", torch.randn(4, 64), False),  # another rounding (decoding is the same)
    ("binary:channel", torch.randn(4, 64), True),
    ("ternary:channel", torch.randn(4, 64), True),
    ("mxfp4:rceil", torch.randn(4, 64), False),      # another scale rule (same decoding)
    ("mx6", torch.randn(4, 64), True),               # shared micro-exponents
    ("int4:channel", torch.randn(4, 5), True),       # odd rows of nibbles
    ("int8", torch.randn(64, 8).t(), False),         # not contiguous (its codes are)
    ("fp16:channel", torch.randn(4, 64), True),
    ("mxfp8", torch.randn(4, 48), None),             # not a whole number of blocks
])
def test_fallback_is_taken_where_it_must_be(scheme, x, dequantize_too):
    s = lb.Scheme.parse(scheme)
    assert fast.quantize(x.float(), s, None) is None
    if dequantize_too is None:
        with pytest.raises(ValueError, match="multiple"):
            lb.quantize(x, s)
        return
    q = lb.quantize(x, s)
    assert (fast.dequantize(q) is None) == dequantize_too
    assert torch.equal(lb.dequantize(q), _reference_dequantize(q))


def test_mx_rejects_given_qparams_like_the_reference():
    qp = QParams(torch.ones(2, 2))
    assert fast.quantize(torch.randn(2, 64), lb.Scheme.parse("mxfp4"), qp) is None
    with pytest.raises(ValueError, match="cannot be given"):
        lb.quantize(torch.randn(2, 64), "mxfp4", qp)


def test_disabled_by_environment_runs_the_reference():
    code = ("import torch, lowbit as lb; from lowbit.quant import native; "
            "assert native.library() is None; q = lb.quantize(torch.randn(4, 64), 'int4:g32'); "
            "print(q.codes.shape[-1])")
    env = dict(os.environ, LOWBIT_NATIVE="0")
    out = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "32"


def test_loader_builds_once_into_the_cache_and_reports_failures(tmp_path, monkeypatch, caplog):
    from lowbit import _native

    src = tmp_path / "k.c"
    src.write_text('__attribute__((visibility("default"))) int k_two(void) { return 2; }\n')

    def declare(lib):
        lib.k_two.restype = __import__("ctypes").c_int

    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "cache"))
    lib = _native.load("test_k", [src], ("-O1",), declare)
    assert lib is not None and lib.k_two() == 2
    assert len(list((tmp_path / "cache").rglob("liblowbit_test_k.so"))) == 1
    assert _native.load("test_k", [src], ("-O1",), declare) is lib  # cached per name
    bad = tmp_path / "bad.c"
    bad.write_text("this is not C\n")
    with caplog.at_level("WARNING", logger="lowbit"):
        assert _native.load("test_bad", [bad], (), declare) is None
    assert "compile failed" in caplog.text


def test_portable_build_without_x86_intrinsics_matches(monkeypatch):
    from lowbit import _native

    lib = _native.load("quant_portable_test", nat._SOURCES, (*nat._FLAGS, "-DLBQ_X86=0"),
                       nat._declare, depends=nat._HEADERS)
    assert lib is not None and lib.lbq_isa(1) == 0  # no AVX-512 path compiled in
    monkeypatch.setattr(nat, "library", lambda: lib)
    x = _data((5, 256), 7)
    for scheme in ["int8:channel:asym", "int4:g128", "fp8_e4m3fn", "mxfp4", "mxfp6_e3m2", "nvfp4"]:
        check(x, scheme)
