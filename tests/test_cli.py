"""The command line end to end: the formats table and the main job on the bundled model."""

import torch

import lowbit as lb
from lowbit.cli import main
from lowbit.models import get_model, sentences


def test_formats_table(capsys):
    assert main(["formats", "--rows", "8", "--cols", "64", "--schemes", "int8", "mxfp4"]) == 0
    out = capsys.readouterr().out
    assert "fp8_e4m3fn" in out and "448" in out and "mxfp4" in out


def test_quantize_job_saves_a_model_that_loads_back(tmp_path, capsys):
    out = tmp_path / "minilm-a8w8"
    assert main(["quantize", "--recipe", "a8w8", "--eval", "40", "--calib", "8",
                 "--repeats", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mean cosine to FP32" in text and "recall@10" in text and "Saved to" in text
    enc = get_model("minilm")
    loaded = lb.load_quantized(out, enc.model)
    assert isinstance(loaded.encoder.layer[0].attention.self.query, lb.nn.QuantLinear)
    emb = enc.embed(sentences("eval", 8), model=loaded)
    assert torch.isfinite(emb).all() and emb.shape == (8, 384)


def test_bad_recipe_is_a_clear_error(capsys):
    assert main(["quantize", "--recipe", "a8w5"]) == 2
    assert "a8w4" in capsys.readouterr().err  # the close match is suggested
