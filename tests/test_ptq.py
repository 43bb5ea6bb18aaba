"""The whole-model driver on a tiny model: plans, calibration, swaps, and atomicity."""

import copy

import pytest
import torch

from lowbit.nn import KeepPrecision, QuantEmbedding, QuantLinear
from lowbit.ptq import quantize_model
from lowbit.recipes import Recipe, Rule


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 32)
        self.fc1 = torch.nn.Linear(32, 64)
        self.norm = torch.nn.LayerNorm(64)
        self.fc2 = torch.nn.Linear(64, 16)

    def forward(self, ids):
        return self.fc2(self.norm(torch.relu(self.fc1(self.emb(ids)))))


def _tiny():
    torch.manual_seed(0)
    return Tiny().eval()


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (2, 8), generator=g) for _ in range(n)]


def test_a8w8_replaces_linears_and_stays_close():
    model = _tiny()
    ref = copy.deepcopy(model)
    ids = _batches(1)[0]
    with pytest.warns(UserWarning, match="SmoothQuant .* skipped"):
        quantize_model(model, "a8w8", progress=False)  # no data: no smoothing, still works
    assert isinstance(model.fc1, QuantLinear) and isinstance(model.fc2, QuantLinear)
    assert model.fc1.input_scale is None
    smoothed = quantize_model(copy.deepcopy(ref), "a8w8", calib_data=_batches(), progress=False)
    assert smoothed.fc1.input_scale is not None
    cos = torch.nn.functional.cosine_similarity(model(ids).flatten(), ref(ids).flatten(), 0)
    assert cos > 0.999


def test_static_int8_calibrates_every_static_layer():
    model = _tiny()
    with pytest.raises(ValueError, match="pass calib_data=batches"):
        quantize_model(model, "int8", progress=False)
    assert isinstance(model.fc1, torch.nn.Linear)  # untouched after the failure
    quantize_model(model, "int8", calib_data=_batches(), progress=False)
    assert model.fc1.act_qparams is not None and model.fc1.act_qparams.scale.numel() == 1


def test_rules_keep_and_embed():
    model = _tiny()
    recipe = Recipe([Rule("norm", keep="fp16"), Rule(types=("Embedding",), weight="int8:channel"),
                     Rule(types=("Linear",), weight="int4:g32", act="int8:token")])
    quantize_model(model, recipe, progress=False)
    assert isinstance(model.norm, KeepPrecision) and isinstance(model.emb, QuantEmbedding)
    assert model(_batches(1)[0]).shape == (2, 8, 16)


def test_a_failure_leaves_the_model_exactly_as_it_was():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    bad = Recipe([Rule(types=("Linear",), weight="int8:channel"),
                  Rule("norm", weight="int8")])  # LayerNorm has no quantized version
    with pytest.raises(ValueError, match="has no quantized version"):
        quantize_model(model, bad, progress=False)
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_smoothquant_moves_outlier_channels_into_the_weight():
    model = _tiny()
    recipe = Recipe([Rule("fc1", weight="int8:channel", act="int8", smooth=0.8)])
    ref = copy.deepcopy(model)
    quantize_model(model, recipe, calib_data=_batches(), progress=False)
    s = model.fc1.input_scale
    assert s is not None and s.shape == (32,) and (s > 0).all()
    # the smoothed weight is W * s per input column, and the observer saw x / s
    torch.testing.assert_close(model.fc1.weight_q.dequantize(), ref.fc1.weight * s,
                               atol=float(model.fc1.weight_q.scale.max()), rtol=0)
    ids = _batches(1)[0]
    cos = torch.nn.functional.cosine_similarity(model(ids).flatten(), ref(ids).flatten(), 0)
    assert cos > 0.999
    with pytest.raises(ValueError, match="needs both act and weight"):
        Rule("fc1", weight="int8:channel", smooth=0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        Rule("fc1", weight="int8:channel", act="int8", smooth=1.5)


def test_smooth_scales_formula():
    from lowbit.ptq import smooth_scales

    x_amax = torch.tensor([4.0, 0.0, 1.0])
    w = torch.tensor([[1.0, 2.0, -0.25], [0.5, -1.0, 0.0]])
    s = smooth_scales(x_amax, w, 0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 1.0, 2.0]))
