"""save_quantized / load_quantized: bit-identical round trips through safetensors + JSON, file
size close to the stored bytes, atomic writes, clear errors, and never a pickle.

The quantized module here is a stand-in written against the io protocol (lowbit.nn's modules
implement the same three members)."""

import copy
import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lowbit as lb
from lowbit.io import (
    MANIFEST,
    TENSORS,
    is_qmodule,
    load_quantized,
    qmodule_classes,
    read_manifest,
    save_quantized,
)
from lowbit.models import model_bytes
from lowbit.nn import register
from lowbit.quant import QTensor
from lowbit.recipes import Recipe


@register()
class DummyQLinear(nn.Module):
    """A Linear whose weight is a QTensor, computed by dequantizing (enough for io)."""

    lowbit_kind = "test-dummy-linear"

    def __init__(self, weight_q: QTensor, bias):
        super().__init__()
        self.weight_q = weight_q
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @classmethod
    def from_float(cls, lin: nn.Linear, scheme: str):
        b = None if lin.bias is None else lin.bias.detach().clone()
        return cls(lb.quantize(lin.weight.detach(), scheme), b)

    def forward(self, x):
        return F.linear(x, self.weight_q.dequantize(), self.bias)

    def lowbit_state(self):
        tensors, meta = self.weight_q.state("weight.")
        if self.bias is not None:
            tensors["bias"] = self.bias
        return tensors, {"weight": meta}

    @classmethod
    def from_lowbit_state(cls, float_module, tensors, meta):
        if not isinstance(float_module, nn.Linear):
            raise ValueError(f"expected a Linear to replace, got {type(float_module).__name__}")
        q = QTensor.from_state(tensors, meta["weight"], "weight.")
        if q.shape != float_module.weight.shape:
            raise ValueError(f"weight shape {tuple(q.shape)} does not fit the Linear's "
                             f"{tuple(float_module.weight.shape)}")
        return cls(q, tensors.get("bias"))


class Net(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.emb = nn.Embedding(40, width)
        self.ln = nn.LayerNorm(width)
        self.layers = nn.ModuleList([nn.Linear(width, width) for _ in range(6)])
        self.head = nn.Linear(width, 40, bias=False)

    def forward(self, ids):
        x = self.emb(ids)
        x = self.ln(x.to(self.ln.weight.dtype)).float()
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.head(x)


SCHEMES = ["int8:channel", "int4:g32", "int4:g32:asym", "mxfp4", "nvfp4", "mx6"]


def quantized_net(seed=0, width=64):
    torch.manual_seed(seed)
    net = Net(width).eval()
    for i, scheme in enumerate(SCHEMES):
        net.layers[i] = DummyQLinear.from_float(net.layers[i], scheme)
    net.ln.half()                                  # a module kept in fp16
    return net


IDS = torch.arange(40).reshape(4, 10)


def test_protocol_is_discovered():
    assert qmodule_classes()["test-dummy-linear"] is DummyQLinear
    assert is_qmodule(quantized_net().layers[0]) and not is_qmodule(nn.Linear(2, 2))


def test_round_trip_is_bit_identical(tmp_path):
    net = quantized_net()
    save_quantized(net, tmp_path / "m", recipe=Recipe.preset("a8w4"))
    assert sorted(os.listdir(tmp_path / "m")) == [MANIFEST, TENSORS]
    assert [p for p in os.listdir(tmp_path) if p != "m"] == []        # no temp dirs left
    like = Net().eval()
    out = load_quantized(tmp_path / "m", like)
    assert out is like
    with torch.no_grad():
        assert torch.equal(out(IDS), net(IDS))
    for i, scheme in enumerate(SCHEMES):
        q0, q1 = net.layers[i].weight_q, out.layers[i].weight_q
        assert str(q1.scheme) == scheme
        for part in q0.tensors():
            assert torch.equal(q0.tensors()[part], q1.tensors()[part]), (scheme, part)
    assert out.ln.weight.dtype == torch.float16                       # kept dtype survives
    assert torch.equal(out.head.weight, net.head.weight)


def test_manifest_records_schemes_recipe_and_version(tmp_path):
    net = quantized_net()
    save_quantized(net, tmp_path, recipe=Recipe.preset("a8w4"))
    m = read_manifest(tmp_path)
    assert m["lowbit_version"] == lb.__version__ and m["model_class"] == "Net"
    assert Recipe.from_dict(m["recipe"]) == Recipe.preset("a8w4")
    mods = {e["name"]: e for e in m["modules"]}
    assert set(mods) == {f"layers.{i}" for i in range(6)}
    assert mods["layers.1"]["qtensors"]["weight_q"]["scheme"] == "int4:g32"
    assert mods["layers.1"]["meta"]["weight"] == {"scheme": "int4:g32", "shape": [64, 64]}
    assert "layers.1.weight" not in m["float_tensors"] and "ln.weight" in m["float_tensors"]


def test_file_size_is_close_to_stored_bytes(tmp_path):
    net = quantized_net()
    save_quantized(net, tmp_path)
    size = os.path.getsize(tmp_path / TENSORS)
    raw = sum(t.numel() * t.element_size()
              for layer in net.layers for t in layer.lowbit_state()[0].values())
    raw += sum(t.numel() * t.element_size() for k, t in net.state_dict().items()
               if not k.startswith("layers."))
    header = size - raw
    assert 0 < header < 150 * len(json.loads(
        (tmp_path / MANIFEST).read_text())["float_tensors"]) + 3000
    assert abs(size - model_bytes(net)) / model_bytes(net) < 0.06


def test_no_pickle_on_load(tmp_path, monkeypatch):
    save_quantized(quantized_net(), tmp_path)

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    monkeypatch.setattr(torch, "load", boom)
    load_quantized(tmp_path, Net())
    assert b"\x80\x04" not in (tmp_path / MANIFEST).read_bytes()


def test_overwrite_and_failed_save_keep_the_old_model(tmp_path):
    save_quantized(quantized_net(0), tmp_path / "m")
    save_quantized(quantized_net(1), tmp_path / "m")                 # existing directory
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "m", Net())(IDS), quantized_net(1)(IDS))
    bad = quantized_net(2)
    bad.layers[0].lowbit_state = lambda: ({}, {"not json": object()})
    with pytest.raises(TypeError):
        save_quantized(bad, tmp_path / "m")
    with pytest.raises(TypeError):
        save_quantized(bad, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(os.listdir(tmp_path)) == ["m"]
    assert sorted(os.listdir(tmp_path / "m")) == [MANIFEST, TENSORS]
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "m", Net())(IDS), quantized_net(1)(IDS))


def test_tied_tensors_are_stored_once(tmp_path):
    net = Net()
    net.head.weight = net.emb.weight
    save_quantized(net, tmp_path)
    assert read_manifest(tmp_path)["aliases"] in ({"head.weight": "emb.weight"},
                                                  {"emb.weight": "head.weight"})
    assert os.path.getsize(tmp_path / TENSORS) < model_bytes(Net()) - 40 * 64 * 4 + 4096
    like = load_quantized(tmp_path, Net())
    assert torch.equal(like.head.weight, net.emb.weight)
    assert torch.equal(like.emb.weight, net.emb.weight)


def _flip_byte(path, offset_from_end=100):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not a lowbit model directory"):
        load_quantized(tmp_path / "nothing", Net())
    save_quantized(quantized_net(), tmp_path)
    good_t, good_m = (tmp_path / TENSORS).read_bytes(), (tmp_path / MANIFEST).read_text()

    _flip_byte(tmp_path / TENSORS)
    with pytest.raises(ValueError, match="corrupt or not the file"):
        load_quantized(tmp_path, Net())
    (tmp_path / TENSORS).write_bytes(good_t[:-10])
    with pytest.raises(ValueError, match="corrupt or not the file"):
        load_quantized(tmp_path, Net())
    (tmp_path / TENSORS).write_bytes(good_t)

    (tmp_path / MANIFEST).write_text(good_m[:-20])
    with pytest.raises(ValueError, match="corrupt manifest"):
        load_quantized(tmp_path, Net())
    m = json.loads(good_m)
    m["format_version"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="format_version 99 is not supported"):
        load_quantized(tmp_path, Net())
    # a manifest whose scheme disagrees with the stored codes: the module is named
    m = json.loads(good_m)
    m["modules"][1]["meta"]["weight"]["scheme"] = "int8:g32"
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match=r"module 'layers.1' \(test-dummy-linear\).*codes must"):
        load_quantized(tmp_path, Net())
    m = json.loads(good_m)
    m["modules"][0]["kind"] = "martian"
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="unknown quantized module kind 'martian'.*test-dummy"):
        load_quantized(tmp_path, Net())
    # checksum fixed up but the safetensors header is garbage
    junk = b"\xff" * 64
    m = json.loads(good_m)
    import hashlib
    m["tensors_file"] = {"name": TENSORS, "bytes": 64, "sha256": hashlib.sha256(junk).hexdigest()}
    (tmp_path / TENSORS).write_bytes(junk)
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ValueError, match="corrupt safetensors file"):
        load_quantized(tmp_path, Net())


def test_mismatched_model_names_the_module_and_leaves_it_untouched(tmp_path):
    save_quantized(quantized_net(), tmp_path)
    wide = Net(width=96)
    before = copy.deepcopy(wide.state_dict())
    with pytest.raises(ValueError, match=r"module 'layers.0' .*weight shape \(64, 64\)"):
        load_quantized(tmp_path, wide)
    assert all(torch.equal(before[k], v) for k, v in wide.state_dict().items())
    assert isinstance(wide.layers[0], nn.Linear)

    short = Net()
    del short.layers[5]
    with pytest.raises(ValueError, match="'layers.5' .*no counterpart.*saved from Net"):
        load_quantized(tmp_path, short)

    other = Net()
    other.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="model_like tensors not saved: extra.bias, extra.weight"):
        load_quantized(tmp_path, other)

    save_quantized(Net(), tmp_path / "float")
    with pytest.raises(ValueError, match=r"tensor 'emb.weight': saved shape \(40, 64\)"):
        load_quantized(tmp_path / "float", Net(width=96))


@pytest.mark.filterwarnings("ignore")
def test_bundled_model_round_trip(tmp_path):
    """Real names: MiniLM with its encoder Linears as int4 g128 stand-ins, bit-identical."""
    from lowbit.models import minilm

    model, tok = minilm.load()
    for name, rule in Recipe.preset("bert-a8w4").plan(model).items():
        if rule.weight is not None and name.startswith("encoder."):
            parent, _, child = name.rpartition(".")
            lin = model.get_submodule(name)
            setattr(model.get_submodule(parent), child, DummyQLinear.from_float(lin, "int4:g128"))
    like = copy.deepcopy(model)
    for name, module in list(like.named_modules()):
        if isinstance(module, DummyQLinear):                 # back to float Linears to fill
            parent, _, child = name.rpartition(".")
            shape = module.weight_q.shape
            setattr(like.get_submodule(parent), child, nn.Linear(shape[1], shape[0]))
    save_quantized(model, tmp_path)
    assert len(read_manifest(tmp_path)["modules"]) == 36
    load_quantized(tmp_path, like)
    batch = next(minilm.batches(tok, minilm.sentences("eval", 8), 8))
    with torch.no_grad():
        assert torch.equal(like(**batch).last_hidden_state, model(**batch).last_hidden_state)
    assert abs(os.path.getsize(tmp_path / TENSORS) - model_bytes(model)) < 40_000
