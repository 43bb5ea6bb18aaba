"""Recipes: rules parse once and validate, first match wins, presets are data that match the
issue's table, and TOML / YAML / JSON files mean the same thing."""

import importlib.util
import json
import warnings

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.recipes import PRESETS, Recipe, Rule

ISSUE_PRESETS = {"fp16", "bf16", "int8", "a8w8", "a8w4", "w4a16", "w8a16", "fp8", "mxfp8",
                 "mxfp4", "mx6", "nvfp4", "bert-a8w4"}


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(128, 128)
        self.dense = nn.Linear(128, 256)
        self.LayerNorm = nn.LayerNorm(128)
        self.act = nn.GELU()


class Tiny(nn.Module):
    """Names shaped like transformers' BertModel, small enough to build in a test."""

    def __init__(self):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(50, 128)
        self.embeddings.position_embeddings = nn.Embedding(16, 128)
        self.embeddings.LayerNorm = nn.LayerNorm(128)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([Block(), Block()])
        self.pooler = nn.Linear(128, 128)
        self.conv = nn.Conv2d(3, 8, 3)


class MyLinear(nn.Linear):
    pass


@pytest.fixture(scope="module")
def tiny():
    return Tiny()


def test_presets_cover_the_issue_and_are_data():
    assert set(Recipe.presets()) == ISSUE_PRESETS == set(PRESETS)
    for name, data in PRESETS.items():
        assert isinstance(data["rules"], list) and data["description"]
        r = Recipe.preset(name)
        assert r.name == name and Recipe.from_dict(r.to_dict()) == r
        json.dumps(r.to_dict())


@pytest.mark.parametrize("name,weight,act,mode,extra", [
    ("int8", "int8:channel", "int8", "static", {"observer": "minmax", "smooth": 0.8}),
    ("a8w8", "int8:channel", "int8:token", "dynamic", {}),
    ("a8w4", "int4:g128", "int8:token", "dynamic", {"weight_clip": "gptq_mse", "smooth": 0.5}),
    ("w4a16", "int4:g128:asym", None, None, {}),
    ("w8a16", "int8:channel", None, None, {}),
    ("fp8", "fp8_e4m3fn:channel", "fp8_e4m3fn:token", "dynamic", {}),
    ("mxfp8", "mxfp8", "mxfp8", "dynamic", {}),
    ("mxfp4", "mxfp4", "mxfp4", "dynamic", {}),
    ("mx6", "mx6", "mx6", "dynamic", {}),
    ("nvfp4", "nvfp4", "nvfp4", "dynamic", {}),
])
def test_preset_schemes(tiny, name, weight, act, mode, extra):
    rule = Recipe.preset(name).match("encoder.layer.0.query", tiny.encoder.layer[0].query)
    assert rule.weight == lb.Scheme.parse(weight)
    assert rule.act == (act and lb.Scheme.parse(act))
    assert rule.act_mode == mode
    for k, v in extra.items():
        assert getattr(rule, k) == v
    # quantizing presets leave LayerNorm alone and store embeddings int8 per row
    assert Recipe.preset(name).match("embeddings.LayerNorm", tiny.embeddings.LayerNorm) is None
    emb = Recipe.preset(name).match("embeddings.word_embeddings", tiny.embeddings.word_embeddings)
    bits = 6 if name == "a8w4" else 8  # a8w4 stores embeddings int6 to fit MiniLM in 16 MB
    assert emb.weight == lb.Scheme.parse(f"int{bits}:channel") and emb.act is None


@pytest.mark.parametrize("name,dtype", [("fp16", "fp16"), ("bf16", "bf16")])
def test_float_presets_keep_everything(tiny, name, dtype):
    plan = Recipe.preset(name).plan(tiny)
    owners = {n for n, m in tiny.named_modules() if list(m.parameters(recurse=False))}
    assert set(plan) == owners and all(r.keep == dtype for r in plan.values())


def test_bert_a8w4_on_bert_names(tiny):
    plan = Recipe.preset("bert-a8w4").plan(tiny)
    assert plan["encoder.layer.0.query"].weight == lb.Scheme.parse("int4:g128")
    assert plan["encoder.layer.1.dense"].act == lb.Scheme.parse("int8:token")
    assert plan["encoder.layer.1.dense"].weight_clip == "gptq_mse"
    assert plan["encoder.layer.1.dense"].smooth == 0.5
    assert plan["encoder.layer.0.LayerNorm"].keep == "fp16"
    assert plan["embeddings.LayerNorm"].keep == "fp16"
    assert plan["embeddings.word_embeddings"].weight == lb.Scheme.parse("int6:channel")
    assert plan["embeddings.position_embeddings"].weight == lb.Scheme.parse("int8:channel")
    assert "pooler" not in plan and "conv" not in plan      # unmatched: stays as it is


def test_first_match_wins_and_types_use_base_classes():
    m = nn.Sequential(MyLinear(4, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    r = Recipe([Rule("1", keep="fp32"), Rule(types=("Linear",), weight="int8:channel"),
                Rule(weight="int4:channel")])
    plan = r.plan(m)
    assert plan["0"].weight == lb.Scheme.parse("int8:channel")     # MyLinear is a Linear
    assert plan["1"].keep == "fp32"                                  # shielded by rule 1
    assert plan["2"].weight == lb.Scheme.parse("int4:channel")      # falls to the catch-all
    assert "" not in plan                                            # containers never planned


def test_glob_crosses_dots_and_is_case_sensitive(tiny):
    r = Recipe([Rule("encoder.*", weight="int8")])
    assert set(r.plan(tiny)) == {f"encoder.layer.{i}.{n}" for i in (0, 1)
                                 for n in ("query", "dense", "LayerNorm")}
    assert Recipe([Rule("*layernorm", weight="int8")]).plan(tiny) == {}


def test_rule_defaults_and_strings_parsed_once():
    r = Rule(weight="int4:g128", act="int8")
    assert isinstance(r.weight, lb.Scheme) and r.act_mode == "static" and r.observer == "minmax"
    assert r.weight_clip == "minmax"
    assert Rule(act="int8:token").act_mode == "dynamic"
    assert Rule(act="mxfp8").act_mode == "dynamic"                 # block-scaled: per input
    assert Rule(act="int8", act_mode="dynamic").observer is None
    assert Rule(types="Linear", weight="int8").types == ("Linear",)


@pytest.mark.parametrize("kwargs,match", [
    ({"weight": "int9"}, "weight: unknown scheme 'int9'"),
    ({"act": "int8:foo"}, "act: unknown option 'foo'"),
    ({}, "does nothing"),
    ({"keep": "fp8"}, "keep must be one of fp32, fp16, bf16"),
    ({"keep": "fp16", "weight": "int8"}, "cannot be combined with weight"),
    ({"act": "int8", "observer": "entropi"}, "Did you mean 'entropy'"),
    ({"act": "int8:token", "act_mode": "static"}, "needs act_mode='dynamic'"),
    ({"act": "int8:token", "observer": "minmax"}, "dynamic act rule takes no observer"),
    ({"weight": "int8", "observer": "minmax"}, "need an act scheme"),
    ({"act": "int8", "weight_clip": "mse"}, "weight_clip needs a weight scheme"),
    ({"weight": "int8", "types": ("nn.Linear",)}, "class names"),
    ({"weight": "int8", "pattern": ""}, "non-empty glob"),
])
def test_bad_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Rule(**kwargs)


def test_bad_recipes():
    with pytest.raises(ValueError, match="Did you mean 'a8w4'"):
        Recipe.preset("a8w4x")
    with pytest.raises(ValueError, match="rule 2: unknown key 'wieght'.*Did you mean 'weight'"):
        Recipe.from_dict({"rules": [{"weight": "int8"}, {"wieght": "int8"}]})
    with pytest.raises(ValueError, match="non-empty list"):
        Recipe.from_dict({"name": "x", "rules": []})
    with pytest.raises(ValueError, match="unknown keys"):
        Recipe.from_dict({"rule": []})
    with pytest.raises(ValueError, match="at least one rule"):
        Recipe(())
    with pytest.raises(TypeError, match="rules must be a list"):
        Recipe(Rule(weight="int8"))


def test_validate_warns_for_rules_with_no_effect(tiny):
    r = Recipe([Rule(types=("Linear",), weight="int8"), Rule("nothing.*", weight="int4"),
                Rule("pooler", weight="int4")])
    with pytest.warns(UserWarning) as record:
        plan = r.validate(tiny)
    text = [str(w.message) for w in record]
    assert len(text) == 2
    assert "rule 2" in text[0] and "matches no module" in text[0]
    assert "rule 3" in text[1] and "taken by an earlier rule" in text[1]
    assert plan == r.plan(tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Recipe.preset("bert-a8w4").validate(tiny)


@pytest.mark.parametrize("suffix", [".toml", ".json", ".yaml"])
def test_files_round_trip_every_preset(tmp_path, suffix):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    for name in PRESETS:
        path = tmp_path / f"{name}{suffix}"
        Recipe.preset(name).save(path)
        assert Recipe.load(path) == Recipe.preset(name)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_same_recipe_in_three_languages(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "r.toml").write_text(
        'name = "mine"\n[[rules]]\npattern = "*LayerNorm"\nkeep = "fp16"\n'
        '[[rules]]\ntypes = ["Linear"]\nweight = "int4:g128"\nweight_clip = "mse"\n'
        'act = "int8:token"\n')
    (tmp_path / "r.yaml").write_text(
        "name: mine\nrules:\n  - pattern: '*LayerNorm'\n    keep: fp16\n"
        "  - types: [Linear]\n    weight: int4:g128\n    weight_clip: mse\n"
        "    act: int8:token\n")
    (tmp_path / "r.json").write_text(json.dumps({"name": "mine", "rules": [
        {"pattern": "*LayerNorm", "keep": "fp16"},
        {"types": ["Linear"], "weight": "int4:g128", "weight_clip": "mse",
         "act": "int8:token"}]}))
    recipes = [Recipe.load(tmp_path / f"r.{s}") for s in ("toml", "yaml", "json")]
    assert recipes[0] == recipes[1] == recipes[2]
    assert recipes[0].rules[1] == Rule(types=("Linear",), weight="int4:g128", weight_clip="mse",
                                       act="int8:token")


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match="suffix must be one of"):
        Recipe.load(tmp_path / "r.txt")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rules]\n")
    with pytest.raises(ValueError, match="bad.toml.*not valid toml"):
        Recipe.load(bad)
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": [{"weight": "int4:g100x"}]}')
    with pytest.raises(ValueError, match=r"bad.json.*rule 1: weight: unknown option 'g100x'"):
        Recipe.load(bad)
    if importlib.util.find_spec("yaml"):
        bad = tmp_path / "bad.yml"
        bad.write_text("rules: [\n")
        with pytest.raises(ValueError, match="bad.yml.*not valid yml"):
            Recipe.load(bad)


def test_yaml_missing_gives_install_hint(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_yaml(name, *a, **k):
        if name == "yaml":
            raise ImportError("no yaml")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    with pytest.raises(ImportError, match="pip install pyyaml"):
        Recipe.preset("a8w4").save(tmp_path / "r.yaml")


def test_resolve_and_str(tmp_path):
    assert Recipe.resolve("a8w4") == Recipe.preset("a8w4")
    Recipe.preset("int8").save(tmp_path / "x.json")
    assert Recipe.resolve(tmp_path / "x.json") == Recipe.preset("int8")
    with pytest.raises(ValueError, match="presets:"):
        Recipe.resolve("nope")
    text = str(Recipe.preset("bert-a8w4"))
    assert "1. *LayerNorm [LayerNorm] -> keep fp16" in text
    assert "W int4:g128 (gptq_mse clip), A int8:token (dynamic), SmoothQuant alpha 0.5" in text


def test_match_on_a_real_torch_module_type():
    r = Recipe.preset("int8")
    assert r.match("c", nn.Conv2d(1, 1, 1)).weight == lb.Scheme.parse("int8:channel")
    assert r.match("e", nn.Embedding(3, 3)).weight == lb.Scheme.parse("int8:channel")
    assert r.match("l", torch.nn.LayerNorm(3)) is None
