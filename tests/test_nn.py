"""Quantized modules against float math on their own dequantized weights."""

import pytest
import torch
import torch.nn.functional as F

import lowbit as lb
from lowbit.nn import KeepPrecision, QuantConv2d, QuantEmbedding, QuantLinear, quantized_class


def _linear(k=64, n=48, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(k, n)


def _token_fake_quant(x):
    return lb.fake_quantize(x, "int8:token")


@pytest.mark.parametrize("weight", ["int8:channel", "int8", "int4:g32", "int4:g32:asym",
                                    "int4:channel", "fp8_e4m3fn:channel", "mxfp4", "nvfp4"])
def test_linear_weight_only_matches_dequantized_weight(weight):
    lin = _linear()
    q = QuantLinear.from_float(lin, weight)
    x = torch.randn(5, 64)
    ref = F.linear(x, q.weight_q.dequantize(), lin.bias)
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(q.backend, str) and q.backend


@pytest.mark.parametrize("weight", ["int8:channel", "int4:g32", "int4:g32:asym"])
def test_linear_dynamic_int8_activations(weight):
    lin = _linear()
    q = QuantLinear.from_float(lin, weight, "int8:token")
    x = torch.randn(3, 7, 64)
    ref = F.linear(_token_fake_quant(x), q.weight_q.dequantize(), lin.bias)
    torch.testing.assert_close(q(x), ref, rtol=1e-4, atol=1e-4)


def test_linear_static_activations_need_qparams():
    lin = _linear()
    with pytest.raises(ValueError, match="needs act_qparams"):
        QuantLinear.from_float(lin, "int8:channel", "int8")
    qp = lb.QParams(torch.tensor([[0.02]]))
    q = QuantLinear.from_float(lin, "int8:channel", "int8", act_qparams=qp)
    x = torch.randn(4, 64)
    ref = F.linear(lb.fake_quantize(x, "int8", qp), q.weight_q.dequantize(), lin.bias)
    torch.testing.assert_close(q(x), ref, rtol=1e-4, atol=1e-4)


def test_linear_state_round_trip_is_bit_identical():
    lin = _linear()
    q = QuantLinear.from_float(lin, "int4:g32:asym", "int8:token")
    tensors, meta = q.lowbit_state()
    q2 = QuantLinear.from_lowbit_state(lin, tensors, meta)
    x = torch.randn(2, 64)
    assert torch.equal(q(x), q2(x))
    with pytest.raises(ValueError, match="expects"):
        QuantLinear.from_lowbit_state(torch.nn.Linear(32, 48), tensors, meta)


@pytest.mark.parametrize("weight", ["int8:channel", "int4:g32"])
def test_smoothquant_input_scale_is_applied_and_follows_the_buffer(weight):
    """x is multiplied by 1 / input_scale (fused in the native kernels); loading another
    scale into the buffer (in place, as load_state_dict does) takes effect at once."""
    lin = _linear()
    s = torch.rand(64) * 2 + 0.5
    q = QuantLinear.from_float(lin, weight, "int8:token", input_scale=s.clone())
    plain = QuantLinear(q.weight_q, q.bias, q.act, None)
    x = torch.randn(5, 64)
    assert torch.equal(q(x), plain(x * (1 / s)))
    new = s * 2  # (the buffer may be s itself: compute the new value first)
    q.input_scale.copy_(new)
    assert torch.equal(q(x), plain(x * (1 / new)))


def test_int4_linear_really_stores_half_a_byte_per_weight():
    q = QuantLinear.from_float(_linear(256, 128), "int4:g128")
    assert q.weight_q.codes.numel() == 256 * 128 // 2
    assert q.nbytes < 256 * 128 * 0.6


def test_embedding_gathers_dequantized_rows():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(100, 32, padding_idx=0)
    for scheme in ["int8:channel", "int4:g16", "mxfp8", "int8"]:
        q = QuantEmbedding.from_float(emb, scheme)
        ids = torch.tensor([[3, 0, 99], [5, 5, 1]])
        table = q.weight_q.dequantize()
        assert torch.equal(q(ids), table[ids]), scheme
    assert quantized_class(emb) is QuantEmbedding
    with pytest.raises(ValueError, match="no input activations"):
        QuantEmbedding.from_float(emb, "int8:channel", "int8:token")


@pytest.mark.parametrize("act", [None, "int8:token"])
def test_conv2d_runs_as_unfold_plus_quantized_matmul(act):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    q = QuantConv2d.from_float(conv, "int8:channel", act)
    x = torch.randn(2, 3, 9, 9)
    w = q.weight_q.dequantize().reshape(conv.weight.shape)
    if act is None:
        ref = F.conv2d(x, w, conv.bias, 2, 1)
        torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)
    else:
        y = q(x)
        assert y.shape == (2, 8, 5, 5)
        torch.testing.assert_close(y, F.conv2d(x, w, conv.bias, 2, 1), rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="groups=1"):
        QuantConv2d.from_float(torch.nn.Conv2d(4, 4, 3, groups=2), "int8:channel")


def test_keep_precision_runs_in_half_and_returns_float():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(64)
    k = KeepPrecision(ln, "fp16")
    x = torch.randn(4, 64)
    y = k(x)
    assert y.dtype == torch.float32 and k.module.weight.dtype == torch.float16
    torch.testing.assert_close(y, F.layer_norm(x, (64,)), rtol=0, atol=5e-3)
