"""convert: the real quantized modules hold exactly the fake-quantized model's codes, and
their outputs agree within the stated float32 accumulation bound.

What is exact: the weight codes and scales (``weight_q``), the activation qparams, and the
activation codes the kernel computes (``lb.quantize(x, act, act_qparams)``), each equal to
what the fake quantizers used. What is not: the fake path sums ``x_hat * w_hat`` in
float32, an integer kernel sums ``qx * qw`` exactly and scales once, so outputs agree to
``|y - y_exact| <= (K + 4) * 2**-24 * sum_k |x_hat_k * w_hat_k| + 2**-24 * |b|``.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

import lowbit as lb
from lowbit import qat
from lowbit.models.digits import DigitsCNN, demo_recipe

U = 2.0 ** -24

CASES = [("int4:channel", "int8", "ema"), ("int4:channel", "int8", "lsq"),
         ("ternary:channel", "int8", "lsq"), ("mxfp4", "mxfp4", "ema")]


def _prepared(weight, act, ranges):
    model = qat.prepare(DigitsCNN(seed=1), demo_recipe(weight, act), ranges=ranges)
    x = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        for i in range(3):                  # ranges / LSQ steps see data
            model(x[i * 8:(i + 1) * 8] * (1 + i))
    return model.eval(), x


def _inputs(model, x):
    seen = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, (a[0], o)))
             for n, m in qat.qat_modules(model).items()]
    with torch.no_grad():
        y = model(x)
    for h in hooks:
        h.remove()
    return y, seen


def _gemm_input(mod, x):
    """The [rows, K] matrix the real module multiplies (conv: unfolded patches)."""
    if isinstance(mod, torch.nn.Conv2d):
        return F.unfold(x, mod.kernel_size, mod.dilation, mod.padding,
                        mod.stride).transpose(1, 2).reshape(-1, mod.weight[0].numel())
    return x.reshape(-1, x.shape[-1])


@pytest.mark.parametrize("weight,act,ranges", CASES)
def test_convert_keeps_codes_exactly(weight, act, ranges):
    model, x = _prepared(weight, act, ranges)
    _, seen = _inputs(model, x)
    fake = qat.qat_modules(model)
    real = qat.convert(copy.deepcopy(model))
    for name, f in fake.items():
        r = real.get_submodule(name)
        assert type(r).__name__ == ("QuantConv2d" if "conv" in name else "QuantLinear")
        w2 = f.weight.detach().reshape(f.weight.shape[0], -1)
        want = lb.quantize(w2, f.weight_fq.scheme, f.weight_fq.qparams(w2))
        assert torch.equal(r.weight_q.codes, want.codes)                 # weight codes
        assert torch.equal(r.weight_q.scale, want.scale)
        w_fake = f.gemm_weight() if hasattr(f, "gemm_weight") else f.quantized_weight()
        assert torch.equal(r.weight_q.dequantize(), w_fake.detach())     # = fake weight
        xin = _gemm_input(f, seen[name][0])
        aq = lb.quantize(xin, r.act, r.act_qparams)                      # the kernel's codes
        assert torch.equal(aq.dequantize(), f.act_fq(xin).detach())       # = fake input


@pytest.mark.parametrize("weight,act,ranges", CASES)
def test_convert_outputs_within_the_accumulation_bound(weight, act, ranges):
    model, x = _prepared(weight, act, ranges)
    _, seen = _inputs(model, x)
    real = qat.convert(copy.deepcopy(model))
    worst = 0.0
    for name, f in qat.qat_modules(model).items():
        r = real.get_submodule(name)
        xin, y_fake = seen[name]
        if isinstance(f, torch.nn.Conv2d):
            y_fake = y_fake.flatten(2).transpose(1, 2)
        y_fake = y_fake.reshape(-1, y_fake.shape[-1]).double()
        xh = lb.quantize(_gemm_input(f, xin), r.act, r.act_qparams).dequantize().double()
        wh = r.weight_q.dequantize().double()
        b = r.bias.double()
        exact = xh @ wh.T + b            # products exact in float64: the integer result
        k = wh.shape[1]
        bound = (k + 4) * U * (xh.abs() @ wh.abs().T) + U * b.abs()
        err = (y_fake - exact).abs()
        assert (err <= bound).all(), name
        worst = max(worst, float((err / bound.clamp(min=1e-30)).max()))
    assert worst < 1.0


@pytest.mark.parametrize("weight,act,ranges", CASES)
def test_converted_model_runs_within_the_bound(weight, act, ranges):
    model, x = _prepared(weight, act, ranges)
    with torch.no_grad():
        y_fake = model(x)
    real = qat.convert(copy.deepcopy(model))
    with torch.no_grad():
        y_real = real(x)
    # end to end the per-layer bound compounds through ReLU/max-pool; measured (backends
    # cpu.int8.int_mm, reference, emulated): max |y_real - y_fake| 1.5e-8 to 2.2e-8 on
    # logits up to 0.2
    assert (y_real - y_fake).abs().max() <= 1e-6
    assert torch.equal(y_real.argmax(1), y_fake.argmax(1))


def test_convert_needs_prepared_model_and_calibrated_ranges():
    with pytest.raises(ValueError, match="prepare"):
        qat.convert(DigitsCNN())
    model = qat.prepare(DigitsCNN(), demo_recipe("int4:channel", "int8"), ranges="ema")
    with pytest.raises(RuntimeError, match="count == 0"):
        qat.convert(model)
