"""QAT: LSQ and STE gradients against hand-computed values, fake-quant modules, prepare."""

import math

import pytest
import torch

import lowbit as lb
from lowbit import qat
from lowbit.models.digits import DigitsCNN, demo_recipe
from lowbit.qat import FakeQuant, lsq_fake_quantize, lsq_init
from lowbit.recipes import Recipe, Rule


def _lsq(x, s, scheme="int4", g=1.0, upstream=None):
    x = torch.tensor(x, requires_grad=True)
    s = torch.tensor(s, requires_grad=True)
    shape = lb.quant.expected_scale_shape(x.shape, lb.Scheme.parse(scheme))
    y = lsq_fake_quantize(x, s.reshape(shape), scheme, grad_scale=g)
    y.backward(torch.ones_like(y) if upstream is None else torch.tensor(upstream))
    return y.detach(), x.grad, s.grad


def test_lsq_hand_computed_gradients_int4():
    # s = 0.5: r = x/s = [0.6, -2.4, 10, -10]; v = [1, -2, 7, -8] (clipped to 7 and -8)
    y, gx, gs = _lsq([[0.3, -1.2, 5.0, -5.0]], [[0.5]], upstream=[[2.0, -1.0, 3.0, 1.0]])
    assert y.tolist() == [[0.5, -1.0, 3.5, -4.0]]
    assert gx.tolist() == [[2.0, -1.0, 0.0, 0.0]]          # STE inside, 0 outside
    # dy/ds = v - r inside, v outside: [0.4, 0.4, 7, -8]; sum(upstream * dy/ds)
    assert gs.item() == pytest.approx(2 * 0.4 - 1 * 0.4 + 3 * 7 - 8, abs=1e-6)


def test_lsq_default_gradient_scale_per_channel():
    # int4:channel on [2, 4]: N = 4 elements per step, Qp = 7 -> g = 1 / sqrt(28)
    x = [[0.3, -1.2, 5.0, 0.0], [1.0, 1.0, -1.0, 2.9]]
    _, _, gs1 = _lsq(x, [[0.5], [1.0]], "int4:channel", g=1.0)
    x_ = torch.tensor(x, requires_grad=True)
    s_ = torch.tensor([[0.5], [1.0]], requires_grad=True)
    lsq_fake_quantize(x_, s_, "int4:channel").sum().backward()
    assert torch.allclose(s_.grad, gs1 / math.sqrt(28))
    # row 0: [0.4, 0.4, 7, 0]; row 1: r = [1, 1, -1, 2.9], v = [1, 1, -1, 3] -> 0.1
    assert gs1.flatten().tolist() == pytest.approx([7.8, 0.1], abs=1e-5)


def test_lsq_binary_and_ternary_gradients():
    # binary, s = 1: x = [0.3, -2.0]: v = [1, -1]; 0.3 inside [-1, 1] -> 1 - 0.3; -2 outside -> -1
    _, gx, gs = _lsq([[0.3, -2.0]], [[1.0]], "binary")
    assert gx.tolist() == [[1.0, 0.0]] and gs.item() == pytest.approx(0.7 - 1.0)
    # ternary, s = 2: x = [0.9, 1.1, -7]: r = [0.45, 0.55, -3.5], v = [0, 1, -1]
    _, gx, gs = _lsq([[0.9, 1.1, -7.0]], [[2.0]], "ternary")
    assert gx.tolist() == [[1.0, 1.0, 0.0]]
    assert gs.item() == pytest.approx(-0.45 + 0.45 - 1.0, abs=1e-6)


@pytest.mark.parametrize("scheme", ["int8", "int4:channel", "int2:channel", "ternary:channel",
                                    "binary:channel", "fp8_e4m3fn:channel", "int4:g16"])
def test_lsq_forward_is_fake_quantize_exactly(scheme):
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    s = lsq_init(x, scheme)
    y = lsq_fake_quantize(x, s, scheme)
    assert torch.equal(y, lb.fake_quantize(x, scheme, lb.QParams(s)))


def test_lsq_init_and_errors():
    x = torch.tensor([[1.0, -3.0], [0.0, 0.0]])
    s = lsq_init(x, "int4:channel")        # 2 * mean|x| / sqrt(7); an all-zero row gets 1
    assert s.flatten().tolist() == pytest.approx([4 / math.sqrt(7), 1.0])
    with pytest.raises(ValueError, match="symmetric"):
        lsq_init(x, "int4:asym")
    with pytest.raises(ValueError, match="no step to learn"):
        lsq_fake_quantize(torch.randn(2, 32), torch.ones(2, 1), "mxfp4")
    with pytest.raises(ValueError, match="shape"):
        lsq_fake_quantize(x, torch.ones(3, 1), "int4:channel")


def test_ema_ranges_momentum_ste_and_eval_freeze():
    fq = FakeQuant("int8", "ema", momentum=0.9).train()
    fq(torch.tensor([-1.0, 2.0]))
    fq(torch.tensor([-3.0, 4.0]))          # lo = 0.9 * -1 + 0.1 * -3, hi = 0.9 * 2 + 0.1 * 4
    assert (fq.lo.item(), fq.hi.item()) == pytest.approx((-1.2, 2.2))
    scale = fq.qparams().scale
    assert scale.item() == pytest.approx(2.2 / 127)
    fq.eval()
    x = torch.tensor([0.5, 10.0, -2.7], requires_grad=True)   # clip range [-128 s, 127 s]
    y = fq(x)
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0]
    assert int(fq.count) == 2                                  # eval does not observe
    assert torch.equal(y.detach(), lb.fake_quantize(x.detach(), "int8", lb.QParams(scale)))


def test_fakequant_state_is_explicit_and_restorable():
    fq = FakeQuant("int8", "ema")
    with pytest.raises(RuntimeError, match="count == 0"):
        fq.qparams()
    fq.train()(torch.tensor([-1.0, 2.0]))
    fresh = FakeQuant("int8", "ema")
    fresh.load_state_dict(fq.state_dict())
    fq(torch.tensor([0.0, 4.0]))
    fresh.train()(torch.tensor([0.0, 4.0]))                     # continues from loaded state
    assert fresh.hi.item() == fq.hi.item() == pytest.approx(2.2)
    lsq = FakeQuant("int4", "lsq").eval()
    with pytest.raises(RuntimeError, match="not initialised"):
        lsq(torch.ones(3))
    with pytest.raises(ValueError, match="per tensor"):
        FakeQuant("int8:channel", "ema")
    with pytest.raises(ValueError, match="computes its scales"):
        FakeQuant("int8:token", "lsq")


def test_prepare_applies_the_recipe_per_layer():
    model = DigitsCNN()
    weights = {n: p for n, p in model.named_parameters()}
    qat.prepare(model, demo_recipe("int4:channel", "int8"), ranges="lsq")
    mods = qat.qat_modules(model)
    assert list(mods) == ["conv1", "conv2", "fc1", "fc2"]
    assert str(mods["conv1"].weight_fq.scheme) == "int8:channel"   # first and last: 8 bits
    assert str(mods["fc2"].weight_fq.scheme) == "int8:channel"
    assert str(mods["conv2"].weight_fq.scheme) == "int4:channel"
    assert mods["fc1"].act_fq.source == "lsq" and mods["conv2"].weight_fq.step.shape == (64, 1)
    for n, p in model.named_parameters():                  # the float parameters are shared
        if n in weights:
            assert p is weights[n]
    with pytest.raises(ValueError, match="already prepared"):
        qat.prepare(model, demo_recipe("int4:channel", "int8"))


def test_prepare_keep_rules_errors_and_ema_sources():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 2))
    r = Recipe([Rule("2", keep="fp32"), Rule("*", ("Linear",), weight="int4:g2",
                                                 act="int8:token")])
    qat.prepare(model, r)
    assert isinstance(model[0], qat.QATLinear) and type(model[2]) is torch.nn.Linear
    assert model[0].weight_fq.source == "tensor" and model[0].act_fq.source == "tensor"
    with pytest.raises(ValueError, match="Linear and Conv2d only"):
        qat.prepare(torch.nn.Sequential(torch.nn.LayerNorm(4)),
                    Recipe([Rule("*", weight="int8")]))
    with pytest.raises(ValueError, match="ranges"):
        qat.prepare(torch.nn.Linear(2, 2), Recipe([Rule("*", weight="int8")]), ranges="adaptive")
    with pytest.raises(ValueError, match="activations only"):
        qat.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4)), Recipe([Rule("*", act="int8")]))


def test_qat_linear_is_fake_quant_of_weight_and_input():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 8)
    m = qat.prepare(torch.nn.Sequential(lin), Recipe([Rule("*", weight="int4:channel",
                                                           act="int8")]))
    x = torch.randn(4, 32)
    m.train()(x)                                            # one batch: the EMA range
    y = m.eval()(x)
    qx = lb.fake_quantize(x, "int8", m[0].act_fq.qparams(x))
    ref = torch.nn.functional.linear(qx, lb.fake_quantize(lin.weight, "int4:channel"), lin.bias)
    assert torch.equal(y, ref)


def test_qat_conv_token_act_quantizes_patches():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1)
    m = qat.prepare(torch.nn.Sequential(conv), Recipe([Rule("*", weight="int8:channel",
                                                            act="int8:token")]))
    x = torch.randn(2, 4, 5, 5)
    y = m(x)
    cols = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2)   # [2, 25, 36]
    w2 = lb.fake_quantize(conv.weight.reshape(8, -1), "int8:channel")
    ref = torch.nn.functional.linear(lb.fake_quantize(cols, "int8:token"), w2, conv.bias)
    ref = ref.transpose(1, 2)
    assert torch.equal(y, ref.reshape(2, 8, 5, 5))
