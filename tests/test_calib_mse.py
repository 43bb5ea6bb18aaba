"""MSE searches against brute force, on each format's real grid."""

import pytest
import torch

import lowbit as lb
from lowbit.calib import Histogram, fake_quant_grid, mse_range_from_histogram, mse_search


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # every test sees the same data


def _hist_data(kind, n=50_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    if kind == "laplace":
        u = torch.rand(n, generator=g) - 0.5
        x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    elif kind == "uniform":
        x = torch.rand(n, generator=g) * 2 - 1
    elif kind == "student_t":
        x = torch.distributions.StudentT(3.0).sample((n,))
    elif kind == "outliers":
        x[:5] = 25.0
    elif kind == "gelu":
        x = torch.nn.functional.gelu(2 * x)
    return x


def brute_force_errors(centers, counts, lo, hi, scheme):
    """Expected squared error of each range (lo[k], hi[k]) through lowbit's own
    quantize/dequantize: one row of centers per candidate, one scale per row."""
    s = scheme.with_(granularity=lb.PerChannel(0))
    lo = torch.as_tensor(lo, dtype=torch.float32).reshape(-1, 1)
    hi = torch.as_tensor(hi, dtype=torch.float32).reshape(-1, 1)
    qp = lb.qparams_from_range(lo, hi, s)
    x = centers.float()[None, :].expand(lo.shape[0], -1).contiguous()
    y = lb.fake_quantize(x, s, qp).double()
    return (counts * (centers - y) ** 2).sum(1)


def brute_force_error(centers, counts, lo, hi, scheme):
    return float(brute_force_errors(centers, counts, [lo], [hi], scheme)[0])


@pytest.mark.parametrize("kind", ["gauss", "laplace", "uniform", "student_t", "outliers", "gelu"])
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3fn", "fp4_e2m1"])
def test_symmetric_histogram_mse_matches_brute_force(kind, fmt):
    obs = Histogram(bins=128, method="mse").update(_hist_data(kind))
    centers, counts = obs.signed_histogram()
    w = float(obs.bin_width()[0])
    scheme = lb.Scheme.parse(fmt)
    _, t = mse_range_from_histogram(centers, counts, scheme, w)
    t_all = torch.arange(1, 129, dtype=torch.float64) * w
    errs = brute_force_errors(centers, counts, -t_all, t_all, scheme).tolist()
    best = min(range(128), key=lambda k: errs[k])
    got = brute_force_error(centers, counts, -t, t, scheme)
    assert got <= errs[best] * (1 + 1e-5)
    assert abs(t - (best + 1) * w) <= 1e-9 or got == pytest.approx(errs[best], rel=1e-5)


@pytest.mark.parametrize("kind", ["gelu", "gauss", "outliers"])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_asymmetric_histogram_mse_near_brute_force(kind, fmt):
    obs = Histogram(bins=48, method="mse").update(_hist_data(kind))
    centers, counts = obs.signed_histogram()
    w = float(obs.bin_width()[0])
    scheme = lb.Scheme.parse(fmt + ":asym")
    lo, hi = mse_range_from_histogram(centers, counts, scheme, w)
    n_lo = round(-min(0.0, float(centers.min()) - w / 2) / w)
    n_hi = round(max(0.0, float(centers.max()) + w / 2) / w)
    pairs = [(-a * w, b * w) for a in range(n_lo + 1) for b in range(n_hi + 1) if a + b]
    best = float(brute_force_errors(centers, counts, *zip(*pairs), scheme).min())
    got = brute_force_error(centers, counts, lo, hi, scheme)
    assert got <= best * 1.01  # the zoomed grid reaches (or beats) the best pair of edges


def test_fp_grid_is_not_an_int_grid():
    # fp4's steps are uneven: the MSE threshold for fp4 differs from int4's on the same data
    obs = Histogram(bins=256, method="mse").update(_hist_data("gauss"))
    t_fp4 = float(obs.qparams("fp4_e2m1").scale) * 6.0
    t_int4 = float(obs.qparams("int4").scale) * 7.0
    assert abs(t_fp4 - t_int4) > 2 * float(obs.bin_width()[0])


@pytest.mark.parametrize("scheme", ["int8", "int4:channel:asym", "fp8_e4m3fn:channel",
                                    "fp4_e2m1:g16", "int4:g16", "uint8:asym", "fp8_e5m2",
                                    "fp6_e3m2:channel", "fp6_e2m3", "int2:asym"])
def test_fake_quant_grid_equals_lowbit_fake_quantize(scheme):
    s = lb.Scheme.parse(scheme)
    x = torch.randn(8, 64) * 3
    qp = lb.choose_qparams(x, s)
    qp = lb.QParams(qp.scale * 0.7, qp.zero_point)  # some clipping too
    x[0, :8] = torch.tensor([0.25, 0.75, 1.25, -1.75, 2.5, 3.5, 5.0, -5.0]) * qp.scale.reshape(-1)[0]  # ties
    from lowbit.quant.granularity import blocked_view

    block = s.granularity.block_shape(tuple(x.shape))
    xb = blocked_view(x, block)
    bc = lambda t: None if t is None else t.reshape([d for n in t.shape for d in (n, 1)])
    got = fake_quant_grid(xb, lb.QParams(bc(qp.scale), bc(qp.zero_point)), s).reshape(x.shape)
    assert torch.equal(got, lb.fake_quantize(x, s, qp))


def _rowwise_brute(w, scheme, grid):
    """Every shrink factor in turn, each block's error through lb.fake_quantize with one
    scale per block (a row per block); the best per block."""
    s = lb.Scheme.parse(scheme)
    size = s.granularity.size if isinstance(s.granularity, lb.PerGroup) else w.shape[-1]
    rows = w.reshape(-1, size)
    s = s.with_(granularity=lb.PerChannel(0))
    lo, hi = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
    if s.symmetric:
        lo, hi = -torch.maximum(-lo, hi), torch.maximum(-lo, hi)
    errs = []
    for k in range(grid):
        a = 1 - k / grid
        y = lb.fake_quantize(rows, s, lb.qparams_from_range(lo * a, hi * a, s))
        errs.append(((y - rows) ** 2).sum(1))
    return torch.stack(errs).amin(0)


@pytest.mark.parametrize("scheme", ["int4:channel", "int4:g32", "fp4_e2m1:g32", "int3:channel"])
def test_mse_search_symmetric_matches_per_row_brute_force(scheme):
    w = torch.distributions.StudentT(5.0).sample((6, 64))
    qp = mse_search(w, scheme, grid=20)
    y = lb.fake_quantize(w, scheme, qp)
    s = lb.Scheme.parse(scheme)
    rows = s.granularity.size if isinstance(s.granularity, lb.PerGroup) else 64
    got = ((y - w) ** 2).reshape(-1, rows).sum(1)
    want = _rowwise_brute(w, scheme, 20)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_mse_search_asymmetric_beats_minmax_and_symmetric_search():
    w = torch.nn.functional.gelu(torch.randn(32, 128) * 2)  # one-sided rows
    err = lambda s, qp: float(((lb.fake_quantize(w, s, qp) - w) ** 2).sum())
    asym = err("int4:g32:asym", mse_search(w, "int4:g32:asym", grid=30))
    assert asym <= err("int4:g32:asym", None)
    assert asym < err("int4:g32", mse_search(w, "int4:g32", grid=30))
    # and never worse than the shared-shrink pass alone (brute force of that pass)
    shared = _rowwise_brute(w.reshape(-1, 32), "int4:channel:asym", 30).sum()
    assert asym <= float(shared) * (1 + 1e-5)


def test_mse_search_shapes_and_errors():
    w = torch.randn(16, 100)
    assert mse_search(w, "int8:channel").scale.shape == (16, 1)
    assert mse_search(w, "int4:g32:pad").scale.shape == (16, 4)
    assert mse_search(w, "int8").scale.shape == (1, 1)
    with pytest.raises(ValueError, match="block scales"):
        mse_search(w[:, :96], "mxfp4")
    with pytest.raises(ValueError, match="grid"):
        mse_search(w, "int8", grid=0)
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mse_search(bad, "int8")
    q = lb.quantize(w, "int4:g32:pad", mse_search(w, "int4:g32:pad"))
    assert q.dequantize().shape == w.shape

