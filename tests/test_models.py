"""The bundled model and its data: MiniLM loads offline in fp32, embeddings match
sentence-transformers, the pydoc sentences are deterministic and disjoint, metrics agree with
direct loops, and local Hugging Face folders work through the same registry."""

import json
import math

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.models import compare, get_model, minilm, model_bytes, sentences
from lowbit.models.encoder import load_encoder, pool, synthetic_batch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def enc():
    import socket

    def no_network(*a, **k):
        raise AssertionError("network used")

    with pytest.MonkeyPatch.context() as mp:      # the bundled model loads offline
        mp.setattr(socket.socket, "connect", no_network)
        mp.delenv("HF_HUB_OFFLINE", raising=False)
        return get_model("minilm")


@pytest.fixture(scope="module")
def some():
    return sentences("eval", 16)


@pytest.fixture(scope="module")
def ref(enc, some):
    return enc.embed(some, batch_size=8)


# -- data ------------------------------------------------------------------------------

def test_sentences_are_many_disjoint_clean_and_fixed():
    ev, ca = sentences("eval"), sentences("calib")
    assert len(ev) >= 1000 and len(ca) >= 300
    assert not set(ev) & set(ca)
    assert len(set(ev)) == len(ev) and len(set(ca)) == len(ca)
    assert sentences("eval") == ev and sentences("eval", 10) == ev[:10]
    for s in ev + ca:
        assert s == " ".join(s.split()) and 6 <= len(s.split()) <= 60 and len(s) <= 400
        assert s[0].isupper() and s[-1] in ".!?" and ">>>" not in s
    from pydoc_data.topics import topics
    corpus = " ".join(" ".join(t.split()) for t in topics.values())
    assert all(s in corpus for s in ev[:200])               # real text, not invented


def test_sentences_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of eval, calib"):
        sentences("train")
    with pytest.raises(ValueError, match="has only"):
        sentences("calib", 10**6)


# -- the bundled model -------------------------------------------------------------------

def test_bundled_model_loads_fp32_eval(enc):
    assert enc.name == minilm.NAME and type(enc.model).__name__ == "BertModel"
    assert not enc.model.training
    assert {p.dtype for p in enc.model.parameters()} == {torch.float32}
    assert (enc.pooling, enc.normalize, enc.max_length) == ("mean", True, 256)
    assert sum(p.numel() for p in enc.model.parameters()) == 22_713_216


def test_embeddings_match_sentence_transformers(enc, some, ref):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(minilm.model_path(), device="cpu")
    want = model.encode(some, convert_to_tensor=True, batch_size=8)
    assert ref.shape == (16, 384) and ref.dtype == torch.float32
    torch.testing.assert_close(ref, want.float(), atol=2e-6, rtol=0)


def test_embeddings_are_unbatched_masked_means(enc, some, ref):
    """Each row equals the mean over that sentence's own tokens, run alone (no padding)."""
    with torch.no_grad():
        for i in (0, 15):
            b = enc.tokenizer([some[i]], return_tensors="pt")
            h = enc.model(**b).last_hidden_state[0]
            torch.testing.assert_close(ref[i], nn.functional.normalize(h.mean(0), dim=0),
                                       atol=1e-6, rtol=0)
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(16))
    # minilm's function form gives the same numbers
    torch.testing.assert_close(minilm.embed(enc.model, enc.tokenizer, some, 8), ref,
                               atol=1e-6, rtol=0)


def test_pool_modes():
    h = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]])
    assert pool(h, mask, "mean").tolist() == [[1.5, 2.5, 3.5]]
    assert pool(h, mask, "cls").tolist() == [[0.0, 1.0, 2.0]]
    assert pool(h, mask, "max").tolist() == [[3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match="pooling mode must be one of"):
        pool(h, mask, "sum")


def test_batches_feed_the_model(enc, some):
    bs = list(enc.batches(some, batch_size=10))
    assert [b["input_ids"].shape[0] for b in bs] == [10, 6]
    assert set(bs[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    with torch.no_grad():
        assert enc.model(**bs[1]).last_hidden_state.shape[:2] == bs[1]["input_ids"].shape
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        list(minilm.batches(enc.tokenizer, some, 0))


def test_synthetic_batch_and_latency(enc):
    b = synthetic_batch(enc.tokenizer, 3, 32)
    assert b["input_ids"].shape == (3, 32) and bool(b["attention_mask"].all())
    special = set(enc.tokenizer.all_special_ids)
    assert (b["input_ids"][:, 0] == enc.tokenizer.cls_token_id).all()
    assert (b["input_ids"][:, -1] == enc.tokenizer.sep_token_id).all()
    assert not special & set(b["input_ids"][:, 1:-1].flatten().tolist())
    assert torch.equal(synthetic_batch(enc.tokenizer, 3, 32)["input_ids"], b["input_ids"])
    t = minilm.latency(enc.model, enc.tokenizer, batch_size=1, seq_len=8, repeats=2, warmup=1)
    assert 0 < t < 60
    with pytest.raises(ValueError, match="seq_len >= 2"):
        synthetic_batch(enc.tokenizer, 1, 1)


# -- metrics ----------------------------------------------------------------------------

def _recall_loop(a, b, k):
    """Direct definition: per query, share of its top-k (itself excluded) found again."""
    def cos(x, i, j):
        return float(x[i] @ x[j] / (x[i].norm() * x[j].norm()))
    n, total = len(a), 0.0
    for i in range(n):
        ra = sorted((j for j in range(n) if j != i), key=lambda j: -cos(a, i, j))[:k]
        rb = sorted((j for j in range(n) if j != i), key=lambda j: -cos(b, i, j))[:k]
        total += len(set(ra) & set(rb)) / k
    return total / n


def test_compare_against_direct_loops():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 16, generator=g, dtype=torch.float64)
    b = a + 0.6 * torch.randn(30, 16, generator=g, dtype=torch.float64)
    got = compare(a, b, k=5)
    cos = [float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(30)]
    assert math.isclose(got["mean_cos"], sum(cos) / 30, rel_tol=1e-12)
    assert math.isclose(got["min_cos"], min(cos), rel_tol=1e-12)
    assert math.isclose(got["recall_at_5"], _recall_loop(a, b, 5), rel_tol=1e-12)
    assert 0.2 < got["recall_at_5"] < 0.95                 # the test data is not trivial
    same = compare(a, 3 * a)                               # scale does not matter
    assert same == {"mean_cos": pytest.approx(1.0), "min_cos": pytest.approx(1.0),
                    "recall_at_10": 1.0}
    with pytest.raises(ValueError, match="same shape"):
        compare(a, b[:5])
    with pytest.raises(ValueError, match="k must be in"):
        compare(a[:5], b[:5], k=10)


def test_compare_on_the_model(enc, some, ref):
    noisy = ref + 0.02 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    m = compare(ref, noisy)
    assert 0.9 < m["min_cos"] <= m["mean_cos"] < 1.0
    assert compare(ref, ref)["recall_at_10"] == 1.0


def test_model_bytes_counts_every_stored_byte(enc):
    m = enc.model
    expected = sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()])
    assert model_bytes(m) == expected == 90_861_056
    lin = nn.Linear(256, 64)
    q = lb.quantize(lin.weight.detach(), "int4:g128")
    holder = nn.Module()
    holder.weight_q = q
    holder.bias = nn.Parameter(torch.zeros(64))
    holder.register_buffer("codes", q.codes)              # same storage: counted once
    holder._cache = lb.quantize(lin.weight.detach(), "int8")     # private cache: not stored
    assert model_bytes(holder) == q.nbytes + 64 * 4
    assert q.nbytes < 256 * 64 // 2 + 64 * 2 * 4 + 100
    tied = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    tied[1].weight = tied[0].weight
    assert model_bytes(tied) == 4 * 4 * 4


# -- registry and local folders -----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, enc):
    """A small plain-transformers BERT folder (no sentence-transformers files)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    cfg = BertConfig(vocab_size=enc.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    enc.tokenizer.save_pretrained(folder)
    return folder


def test_local_folder_through_the_registry(tiny_folder, some):
    e = get_model(str(tiny_folder))
    assert (e.pooling, e.normalize, e.name) == ("mean", False, tiny_folder.name)
    emb = e.embed(some[:4])
    assert emb.shape == (4, 32) and not torch.allclose(emb.norm(dim=1), torch.ones(4))
    (tiny_folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}]))
    (tiny_folder / "1_Pooling").mkdir()
    (tiny_folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    e = load_encoder(tiny_folder)
    assert (e.pooling, e.normalize) == ("cls", True)
    (tiny_folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(ValueError, match="unsupported pooling"):
        load_encoder(tiny_folder)
    for f in ("modules.json", "1_Pooling/config.json"):
        (tiny_folder / f).unlink()


def test_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'minilmm'.*Did you mean 'minilm'"):
        get_model("minilmm")
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        load_encoder(tmp_path)
