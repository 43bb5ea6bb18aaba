"""The asymmetric optimizer: its rule on known shapes, and that its choice lowers error."""

import pytest
import torch

import lowbit as lb
from lowbit.calib import Histogram, choose_symmetry, tensor_stats


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # every test sees the same data


def _gelu_like(n=100_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.gelu(torch.randn(n, generator=g) * 1.5)


def _softmax_like(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(64, 128, generator=g) * 3, dim=-1)


def _mse(x, scheme):
    obs = Histogram(method="mse", bins=512).update(x)
    y = lb.fake_quantize(x, scheme, obs.qparams(scheme))
    return float(((y - x) ** 2).mean())


def test_stats_are_right():
    x = torch.tensor([-1.0, 0.0, 1.0, 4.0])
    s = tensor_stats(x)
    assert (s["min"], s["max"], s["mean"]) == (-1.0, 4.0, 1.0)
    assert s["std"] == pytest.approx(torch.tensor([-2.0, -1, 0, 3]).pow(2).mean().sqrt().item())
    assert s["above_zero"] == 0.5
    assert s["skewness"] > 0


@pytest.mark.parametrize("make", [_gelu_like, _softmax_like, lambda: torch.relu(torch.randn(5000))])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_one_sided_shapes_go_asymmetric_and_error_drops(make, fmt):
    x = make()
    chosen = choose_symmetry(x, fmt)
    assert not chosen.symmetric
    assert _mse(x, chosen) < 0.8 * _mse(x, lb.Scheme.parse(fmt))


@pytest.mark.parametrize("make", [lambda: torch.randn(50_000),
                                  lambda: torch.distributions.StudentT(3.0).sample((50_000,)),
                                  lambda: torch.rand(50_000) * 2 - 1])
def test_balanced_shapes_stay_symmetric(make):
    assert choose_symmetry(make(), "int8:channel").symmetric
    assert choose_symmetry(make(), "int8:asym").symmetric  # the rule decides, both ways


def test_outlier_does_not_decide():
    x = torch.randn(100_000)
    x[0] = 60.0  # one far value: the imbalance uses mean +- 4 std, not max
    assert choose_symmetry(x, "int8").symmetric


def test_float_formats_stay_symmetric_and_other_fields_kept():
    x = _softmax_like()
    assert choose_symmetry(x, "fp8_e4m3fn").symmetric
    s = choose_symmetry(x, "int4:g32")
    assert not s.symmetric and s.granularity == lb.PerGroup(32)
    assert choose_symmetry(tensor_stats(x), "int4:g32") == s  # stats dicts work too
