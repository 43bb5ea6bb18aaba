"""lowbit.analysis: sensitivity, the strategy advisor, the benchmark matrix, the CLI commands."""

from __future__ import annotations

import argparse
import copy
import itertools
import json

import numpy as np
import pytest
import torch
from tiny_models import Tiny

from lowbit.analysis import (
    bench_gemm,
    model_nbytes,
    output_cosine,
    recommend,
    sensitivity,
    uniform_recipe,
)
from lowbit.analysis.advisor import _knapsack
from lowbit.analysis.bench import is_emulated
from lowbit.ptq import quantize_model
from lowbit.recipes import Recipe, Rule


def _data(n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (4, 8), generator=g) for _ in range(n)]


W4 = Recipe((Rule(types=("Linear",), weight="int4:channel"),), name="w4-test")


def test_sensitivity_ranks_the_planted_layer_and_is_consistent():
    model, data = Tiny().eval(), _data()
    calls = []
    cos = output_cosine(model, data)

    def metric(m):
        calls.append(1)
        return cos(m)

    rep = sensitivity(model, W4, data, metric, metric_name="cos")
    assert [r["layer"] for r in rep.rows] == ["fc2", "fc1"]  # sorted by drop, largest first
    assert rep.float_metric == pytest.approx(1.0, abs=1e-6)
    assert all(r["drop_alone"] > 0 for r in rep.rows)
    # with two layers, "all but fc2" is "fc1 alone" and vice versa
    by = {r["layer"]: r for r in rep.rows}
    assert by["fc2"]["metric_all_but"] == pytest.approx(by["fc1"]["metric_alone"], abs=1e-9)
    assert by["fc1"]["metric_all_but"] == pytest.approx(by["fc2"]["metric_alone"], abs=1e-9)
    assert len(calls) == 2 + 2 * 2
    # and the model itself is untouched
    assert type(model.fc2) is torch.nn.Linear


def test_sensitivity_html(tmp_path):
    model, data = Tiny().eval(), _data()
    rep = sensitivity(model, W4, data, all_but=False)
    rep.to_html(tmp_path / "s.html")
    text = (tmp_path / "s.html").read_text()
    assert "data:image/png;base64," in text and "fc2" in text and "http" not in text
    assert rep.rows[0]["metric_all_but"] is None


@pytest.mark.parametrize("seed", range(5))
def test_knapsack_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    groups = 4
    cost = [rng.random(3) for _ in range(groups)]
    weight = [rng.integers(1, 10, 3) for _ in range(groups)]
    cap = int(rng.integers(8, 30))
    picks = _knapsack(cost, weight, cap)
    best = None
    for combo in itertools.product(range(3), repeat=groups):
        w = sum(weight[g][j] for g, j in enumerate(combo))
        c = sum(cost[g][j] for g, j in enumerate(combo))
        if w <= cap and (best is None or c < best[0] - 1e-12):
            best = (c, combo)
    if best is None:
        assert picks is None
    else:
        assert sum(cost[g][j] for g, j in enumerate(picks)) == pytest.approx(best[0])
        assert sum(weight[g][j] for g, j in enumerate(picks)) <= cap


OPTS = {"fp32": None, "w8": {"weight": "int8:channel"},
        "w4": {"weight": "int4:channel"}, "w4g32": {"weight": "int4:g32"}}


def test_recommend_meets_the_size_budget_and_beats_uniform(tmp_path):
    model, data = Tiny().eval(), _data()
    metric = output_cosine(model, data)
    fp32 = model_nbytes(model)
    budget = 0.45 * fp32 / 1e6
    plan = recommend(model, data, metric, size_mb=budget, priority="accuracy", options=OPTS)
    assert plan.measured["size_mb"] <= budget
    assert plan.predicted["size_mb"] == pytest.approx(plan.measured["size_mb"], rel=1e-3)
    assert set(plan.assignment) == {"emb", "fc1", "fc2"}
    assert plan.baseline["size_mb"] == fp32 / 1e6
    assert plan.baseline["metric"] == pytest.approx(1.0)
    assert plan.measured["metric"] < plan.baseline["metric"]
    # the best uniform choice within the budget, measured the same way
    best = -1.0
    for opt in ("w8", "w4", "w4g32"):
        q = quantize_model(copy.deepcopy(model), uniform_recipe(opt, options=OPTS), progress=False)
        if model_nbytes(q) / 1e6 <= budget:
            best = max(best, metric(q))
    assert best > 0 and plan.measured["metric"] >= best
    # the recipe file round-trips and quantizes to the same model
    path = tmp_path / "plan.toml"
    plan.recipe.save(path)
    q = quantize_model(copy.deepcopy(model), str(path), progress=False)
    assert metric(q) == pytest.approx(plan.measured["metric"], abs=1e-9)
    assert model_nbytes(q) == pytest.approx(plan.measured["size_mb"] * 1e6)


def test_recommend_errors():
    model, data = Tiny().eval(), _data(1)
    with pytest.raises(ValueError, match="priority must be one of"):
        recommend(model, data, priority="fast")
    with pytest.raises(ValueError, match="no plan meets"):
        recommend(model, data, size_mb=1e-4, options=OPTS)


def test_bench_gemm_rows():
    configs = {"FP32": None, "A8W8": "a8w8", "BF16": "bf16"}
    r = bench_gemm([(8, 128, 64)], configs, repeats=1)
    assert [row["config"] for row in r.rows] == list(configs)
    fp32, a8w8, _ = r.rows
    assert fp32["sqnr_db"] == float("inf") and fp32["path"] == "real"
    assert 25 < a8w8["sqnr_db"] < 60 and a8w8["weight_bytes"] < fp32["weight_bytes"] / 3
    assert all(row["gops"] > 0 and row["path"] in ("real", "emulated", "mixed")
               for row in r.rows)
    assert json.loads(json.dumps(r.rows))
    assert is_emulated("reference") and is_emulated("emulated")
    assert not is_emulated("cpu.a8w4.avx2") and not is_emulated("torch.bf16")


def test_bench_model_rows_use_the_adjacent_fp32_baseline():
    from lowbit.analysis import bench_model
    from lowbit.analysis.runner import quantized_layers

    model, data = Tiny().eval(), _data()

    def latency(m, bs):  # a fake clock: quantized models take half the time
        return (1.0 if quantized_layers(m) else 2.0) * bs / 1000

    configs = {"FP32": None, "A8W8": "a8w8"}
    r = bench_model(model, latency, output_cosine(model, data), configs, calib_data=data)
    fp32, a8w8 = r.rows
    assert fp32["speedup_b32"] == 1.0 and a8w8["speedup_b32"] == 2.0
    assert a8w8["latency_b1_ms"] == pytest.approx(1.0) and a8w8["sentences_per_s"] == 1000
    assert fp32["accuracy_drop"] == 0 and 0 < a8w8["accuracy_drop"] < 0.1
    assert a8w8["size_mb"] < fp32["size_mb"] == model_nbytes(model) / 1e6
    assert type(model.fc1) is torch.nn.Linear  # the float model is left alone


def test_peak_rss_sees_an_allocation():
    from lowbit.analysis.bench import PeakRSS

    with PeakRSS() as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x += 1
    if mem.peak is None:
        pytest.skip("no /proc/self/statm here")
    assert mem.growth >= 48 * 2**20 and mem.peak > mem.growth


@pytest.mark.parametrize("name", ["debug_cmd", "bench_cmd", "recommend_cmd"])
def test_cli_commands_parse(name):
    import importlib

    mod = importlib.import_module(f"lowbit.cli.{name}")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    mod.add_parser(sub)
    cmd = name.removesuffix("_cmd")
    extra = ["--size-mb", "14"] if cmd == "recommend" else []
    args = parser.parse_args([cmd, *extra])
    assert args.run is mod.run and args.model == "minilm"
