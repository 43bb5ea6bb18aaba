"""Observers: formulas, per-channel layout, qparams shapes, streaming, edge cases."""

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.calib import Histogram, MinMax, MovingAverage, Observer, Percentile


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # every test sees the same data

ALL = [MinMax, MovingAverage, Percentile, Histogram]


def _batches(n=10, size=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, generator=g) * (1 + 0.1 * k) for k in range(n)]


def test_minmax_streams_exact_extremes():
    bs = _batches()
    obs = MinMax()
    for b in bs:
        obs.update(b)
    x = torch.cat(bs)
    assert obs.count == 10
    assert obs.range() == (x.min(), x.max())


def test_moving_average_follows_its_formula():
    bs = _batches(5)
    obs = MovingAverage(momentum=0.8)
    lo, hi = float(bs[0].min()), float(bs[0].max())
    for k, b in enumerate(bs):
        obs.update(b)
        if k:
            lo = 0.8 * lo + 0.2 * float(b.min())
            hi = 0.8 * hi + 0.2 * float(b.max())
        assert obs.count == k + 1
        r = obs.range()
        assert float(r[0]) == pytest.approx(lo, rel=1e-6)
        assert float(r[1]) == pytest.approx(hi, rel=1e-6)


def test_moving_average_momentum_checked():
    with pytest.raises(ValueError, match="momentum"):
        MovingAverage(momentum=1.0)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_any_axis(axis):
    x = torch.randn(4, 6, 5)
    obs = MinMax(axis=axis).update(x).update(2 * x)
    lo, hi = obs.range()
    ref = torch.stack([x, 2 * x]).movedim(axis % 3 + 1, 0).reshape(x.shape[axis], -1)
    assert lo.shape == (x.shape[axis],)
    assert torch.equal(lo, ref.amin(1)) and torch.equal(hi, ref.amax(1))


@pytest.mark.parametrize("cls", ALL)
def test_qparams_shape_matches_lowbit_and_quantize_works(cls):
    w = torch.randn(16, 64)
    per_channel = cls(axis=0).update(w)
    qp = per_channel.qparams("int8:channel")
    assert tuple(qp.scale.shape) == lb.quant.expected_scale_shape(w.shape, lb.Scheme.parse("int8:channel"))
    assert lb.quantize(w, "int8:channel", qp).scale.shape == (16, 1)
    per_tensor = cls().update(w)
    qp = per_tensor.qparams("int8:asym")
    assert qp.scale.shape == (1, 1) and qp.zero_point.shape == (1, 1)
    lb.quantize(w, "int8:asym", qp)
    with pytest.raises(ValueError, match="PerChannel|tensor"):
        per_tensor.qparams("int8:channel")
    with pytest.raises(ValueError, match="g128|group|block"):
        per_channel.qparams("int4:g32")


def test_minmax_qparams_equal_choose_qparams():
    w = torch.randn(8, 32)
    for s in ["int8", "int8:asym", "int4:channel", "int4:channel:asym", "fp8_e4m3fn:channel"]:
        axis = 0 if "channel" in s else None
        qp = MinMax(axis=axis).update(w).qparams(s)
        ref = lb.choose_qparams(w, s)
        assert torch.equal(qp.scale, ref.scale), s
        assert (qp.zero_point is None) == (ref.zero_point is None)
        if ref.zero_point is not None:
            assert torch.equal(qp.zero_point, ref.zero_point)


# -- percentile and histograms ----------------------------------------------------------


def assert_within_one_bin(got, x, p, w):
    """|got - numpy's quantile| <= one bin, plus the gap between the samples around the
    rank (numpy interpolates between order statistics, which may sit bins apart in a tail)."""
    xs = np.sort(np.asarray(x, dtype=np.float64))
    k = int(p * (len(xs) - 1))
    gap = xs[min(k + 2, len(xs) - 1)] - xs[max(k - 1, 0)]
    assert abs(float(got) - np.quantile(xs, p)) <= w * 1.0001 + gap


@pytest.mark.parametrize("q", [99.0, 99.9, 99.99])
def test_percentile_within_one_bin_of_numpy(q):
    torch.manual_seed(0)
    x = torch.distributions.StudentT(4.0).sample((200_000,))
    obs = Percentile(q=q).update(x)
    w = float(obs.bin_width()[0])
    lo, hi = obs.range()
    assert_within_one_bin(hi, x.numpy(), q / 100, w)
    assert_within_one_bin(lo, x.numpy(), 1 - q / 100, w)
    assert_within_one_bin(float(obs.qparams("int8").scale) * 127, x.abs().numpy(), q / 100, w)


def test_percentile_per_channel():
    x = torch.randn(3, 50_000, generator=torch.Generator().manual_seed(2))
    x = x * torch.tensor([[1.0], [5.0], [0.1]])
    obs = Percentile(q=99.0, axis=0).update(x)
    lo, hi = obs.range()
    w = obs.bin_width()
    for c in range(3):
        assert_within_one_bin(hi[c], x[c].numpy(), 0.99, float(w[c]))
        assert_within_one_bin(lo[c], x[c].numpy(), 0.01, float(w[c]))


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile"])
def test_streaming_max_first_equals_one_batch_exactly(method):
    bs = _batches()
    bs[0][0] = 50.0  # the largest value comes first: no growth, same bins
    one = Histogram(method=method).update(torch.cat(bs))
    many = Histogram(method=method)
    for b in bs:
        many.update(b)
    assert torch.equal(one.abs_histogram()[0], many.abs_histogram()[0])
    assert one.range() == many.range()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_streaming_ten_batches_within_one_bin_of_one_batch(method):
    bs = _batches()  # growing spread: every batch extends the histogram
    one = Histogram(method=method).update(torch.cat(bs))
    many = Histogram(method=method)
    for b in bs:
        many.update(b)
    assert many.abs_histogram()[0].sum() == 200_000  # no count lost while growing
    w = max(float(one.bin_width()[0]), float(many.bin_width()[0]))
    for a, b in zip(one.range(), many.range()):
        assert abs(float(a) - float(b)) <= w


def test_streaming_mse_threshold_as_good_as_one_batch():
    # the MSE curve is flat near its minimum, so the argmin may move by many bins between
    # two slightly different histograms; what must agree is the error it achieves
    bs = _batches()
    x = torch.cat(bs)
    one = Histogram(method="mse").update(x)
    many = Histogram(method="mse")
    for b in bs:
        many.update(b)
    err = [float(((lb.fake_quantize(x, "int8", o.qparams("int8")) - x) ** 2).mean())
           for o in (one, many)]
    assert err[1] == pytest.approx(err[0], rel=0.01)


def test_growth_merges_pairs_without_losing_counts():
    obs = Histogram(bins=64, method="percentile")
    obs.update(torch.linspace(-1, 1, 1001))
    obs.update(torch.tensor([5000.0, -3.0]))  # would need 320000 bins: merged instead
    h = obs.abs_histogram()[0]
    assert h.sum() == 1003 and h.numel() <= 16 * 64
    assert float(obs.bin_width()[0]) * h.numel() >= 5000.0
    assert obs.range()[1] == 5000.0 or float(obs.range()[1]) < 5000.0


# -- edge cases -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_range_before_update_is_an_error(cls):
    with pytest.raises(RuntimeError, match="count == 0"):
        cls().range()
    with pytest.raises(RuntimeError, match="count == 0"):
        cls().qparams("int8")


@pytest.mark.parametrize("cls", ALL)
def test_nan_and_inf_raise_naming_counts(cls):
    obs = cls().update(torch.randn(100))
    bad = torch.randn(100)
    bad[:3] = float("nan")
    bad[5] = float("inf")
    with pytest.raises(ValueError, match="3 NaN and 1 Inf"):
        obs.update(bad)
    assert obs.count == 1  # the bad batch left no trace
    obs.range()


@pytest.mark.parametrize("cls", ALL)
def test_empty_batch_ignored_with_warning(cls):
    obs = cls()
    with pytest.warns(UserWarning, match="empty batch"):
        obs.update(torch.empty(0, 8))
    assert obs.count == 0
    obs.update(torch.ones(4))
    with pytest.warns(UserWarning):
        obs.update(torch.empty(0))
    assert obs.count == 1


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_tensors_and_single_values(cls, value):
    for x in (torch.full((1000,), value), torch.tensor([value])):
        obs = cls().update(x)
        lo, hi = obs.range()
        # histogram thresholds keep 0 inside the range; the others report the data's extremes
        want = (min(value, 0.0), max(value, 0.0)) if cls is Histogram else (value, value)
        assert (float(lo), float(hi)) == pytest.approx(want, abs=1e-6)
        qp = obs.qparams("int8")
        assert torch.isfinite(qp.scale).all() and (qp.scale > 0).all()
        y = lb.dequantize(lb.quantize(x, "int8", qp))
        assert torch.allclose(y, x, atol=abs(value) / 100 + 1e-6)


def test_zeros_then_data_sets_the_width_late():
    obs = Histogram(method="percentile")
    obs.update(torch.zeros(100))
    assert float(obs.bin_width()[0]) == 0.0
    obs.update(torch.linspace(-1, 1, 101))
    assert obs.abs_histogram()[0].sum() == 201
    assert obs.abs_histogram()[0][0] >= 101


def test_type_checks_and_channel_count():
    with pytest.raises(TypeError, match="floating"):
        MinMax().update(torch.arange(4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        MinMax().update([1.0, 2.0])
    obs = MinMax(axis=0).update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="4 channels"):
        obs.update(torch.randn(4, 4))
    with pytest.raises(ValueError, match="method"):
        Histogram(method="kl")
    assert issubclass(Histogram, Observer)


def test_symmetric_percentile_agrees_with_onnxruntime_within_a_bin():
    # ORT's symmetric percentile reads the same |x| histogram convention (2048 bins of |x|)
    calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")
    import contextlib
    import io

    torch.manual_seed(1)
    x = torch.distributions.StudentT(4.0).sample((100_000,))
    c = calibrate.HistogramCollector(method="percentile", symmetric=True, num_bins=2048,
                                     num_quantized_bins=128, percentile=99.9, scenario="same")
    with contextlib.redirect_stdout(io.StringIO()):
        c.collect({"t": x.numpy()})
        ort_t = float(c.compute_collection_result()["t"][1])
    obs = Percentile(q=99.9).update(x)
    ours = float(obs.qparams("int8").scale) * 127
    ort_w = float(x.abs().max() - x.abs().min()) / 2048
    assert abs(ours - ort_t) <= float(obs.bin_width()[0]) + ort_w


def test_per_channel_streaming_growth_keeps_counts_and_percentiles():
    g = torch.Generator().manual_seed(5)
    bs = [torch.randn(4, 5000, generator=g) * torch.tensor([[1.0], [2.0], [0.5], [1.0]])
          for _ in range(6)]
    bs[3][1] *= 3  # only channel 1 grows in batch 3
    obs = Percentile(q=99.0, axis=0)
    for b in bs:
        obs.update(b)
    x = torch.cat(bs, 1)
    hists = obs.abs_histogram()
    assert [float(h.sum()) for h in hists] == [30_000.0] * 4
    assert hists[1].numel() > 2 * hists[0].numel()  # channel 1 grew most
    lo, hi = obs.range()
    w = obs.bin_width()
    for c in range(4):
        assert_within_one_bin(hi[c], x[c].numpy(), 0.99, float(w[c]))
        assert_within_one_bin(lo[c], x[c].numpy(), 0.01, float(w[c]))
