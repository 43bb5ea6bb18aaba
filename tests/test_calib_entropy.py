"""Entropy (KL) calibration against a loop-based transcription of the reference algorithm."""

import math

import numpy as np
import pytest
import torch

import lowbit as lb
from lowbit.calib import Histogram
from lowbit.calib.entropy import entropy_threshold, kl_divergences, num_levels


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # every test sees the same data


def reference_entropy_bin(hist, num_levels, start_bin=128):
    """TensorRT / ModelOpt ``_compute_amax_entropy``, transcribed loop by loop (slow, plain).

    Returns the winning i (threshold = i * bin width) and the list of KL values.
    """
    bins = [float(v) for v in hist]
    bins[0] = bins[1]
    n = len(bins)
    divergences, arguments = [], []
    for i in range(min(start_bin, n), n + 1):
        # level of each bin: np.digitize(range(i), linspace(0, i, L + 1)) - 1
        space = np.linspace(0, i, num=num_levels + 1)
        level = list(np.digitize(range(i), space) - 1)
        for j in range(i):
            if bins[j] == 0:
                level[j] = -1
        sums = [0.0] * num_levels
        nonempty = [0] * num_levels
        for j in range(i):
            if level[j] != -1:
                sums[level[j]] += bins[j]
                nonempty[level[j]] += 1
        q = [0.0] * i
        for j in range(i):
            if level[j] != -1:
                q[j] = sums[level[j]] / nonempty[level[j]]
        p = bins[:i]
        p[-1] += sum(bins[i:])
        sp, sq = sum(p), sum(q)
        kl = 0.0
        for pj, qj in zip(p, q):
            if pj == 0:
                continue
            if qj == 0:
                kl = math.inf
                break
            kl += (pj / sp) * math.log((pj / sp) / (qj / sq))
        divergences.append(kl)
        arguments.append(i)
    best = min(divergences)
    last = max(k for k, d in enumerate(divergences) if d == best)
    return arguments[last], divergences


def _abs_hist(x, bins=2048):
    a = x.abs().double()
    return torch.histc(a, bins, 0, float(a.max())).double()


def _data(kind, n=200_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(n, generator=g)
    if kind == "laplace":
        u = torch.rand(n, generator=g) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs())
    if kind == "uniform":
        return torch.rand(n, generator=g) * 2 - 1
    if kind == "student_t":
        return torch.distributions.StudentT(3.0).sample((n,))
    if kind == "outliers":
        x = torch.randn(n, generator=g)
        x[:20] = 40.0 * torch.sign(torch.randn(20, generator=g))
        return x
    if kind == "relu":
        return torch.relu(torch.randn(n, generator=g))
    if kind == "gelu":
        return torch.nn.functional.gelu(torch.randn(n, generator=g) * 2)
    raise KeyError(kind)


KINDS = ["gauss", "laplace", "uniform", "student_t", "outliers", "relu", "gelu"]


@pytest.mark.parametrize("kind", KINDS)
def test_entropy_same_bin_as_reference_int8(kind):
    h = _abs_hist(_data(kind), bins=512)  # 512 bins keep the pure-Python reference fast
    want, ref_kl = reference_entropy_bin(h.tolist(), 128)
    got = entropy_threshold(h, lb.formats.get("int8"))
    assert got == want
    _, kl = kl_divergences(h, lb.formats.get("int8"))
    ref = torch.tensor(ref_kl, dtype=torch.float64)
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(kl))
    torch.testing.assert_close(kl[fin], ref[fin], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fmt,levels", [("int4", 8), ("uint8", 256), ("int6", 32)])
def test_entropy_other_int_widths(fmt, levels):
    h = _abs_hist(_data("laplace", seed=3), bins=384)
    want, _ = reference_entropy_bin(h.tolist(), levels)
    assert entropy_threshold(h, lb.formats.get(fmt)) == want


def test_entropy_full_2048_bins_against_reference_on_sparse_hist():
    # a 2048-bin histogram (the default) on a sparse synthetic shape, reference in full
    g = torch.Generator().manual_seed(1)
    h = torch.zeros(2048, dtype=torch.float64)
    h[:600] = torch.exp(-torch.arange(600.0) / 120) * 1000
    h[torch.randint(600, 2048, (15,), generator=g)] = 3.0
    h = torch.round(h)
    want, _ = reference_entropy_bin(h.tolist(), 128)
    assert entropy_threshold(h, lb.formats.get("int8")) == want


def test_entropy_float_format_levels_follow_the_grid():
    # fp8_e4m3fn: 0 and 126 positive values (0x7F is NaN) -> 127 levels; fp4: 0, .5, 1, 1.5, 2, 3, 4, 6
    assert num_levels(lb.formats.get("fp8_e4m3fn")) == 127
    assert num_levels(lb.formats.get("fp4_e2m1")) == 8
    h = _abs_hist(_data("gauss"), bins=1024)
    i4 = entropy_threshold(h, lb.formats.get("fp4_e2m1"))
    i8 = entropy_threshold(h, lb.formats.get("fp8_e4m3fn"))
    assert 128 <= i4 <= 1024 and 128 <= i8 <= 1024
    assert i4 < i8  # a coarser grid clips harder


def test_histogram_entropy_observer_matches_reference_on_its_own_histogram():
    x = _data("student_t", n=100_000)
    obs = Histogram(bins=256, method="entropy").update(x)
    h = obs.abs_histogram()[0]
    want, _ = reference_entropy_bin(h.tolist(), 128)
    lo, hi = obs.range()
    w = float(obs.bin_width()[0])
    assert float(hi) == pytest.approx(min(want * w, float(x.max())), rel=1e-6)
    assert float(lo) == pytest.approx(max(-want * w, float(x.min())), rel=1e-6)
