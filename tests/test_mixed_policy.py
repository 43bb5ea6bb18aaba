"""Mixed-precision policy, the precision selector's rule, and the dynamic per-layer mode."""

import pytest
import torch

import lowbit as lb
from lowbit.mixed import DynamicPrecision, Policy, apply_precision, select_precision


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 4), torch.nn.Softmax(-1))


def _record_dtypes(model):
    seen = {}
    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(
                lambda m, a, o, name=name: seen.__setitem__(name, (a[0].dtype, o.dtype)))
    return seen


@pytest.mark.parametrize("compute", ["bf16", "fp16"])
def test_policy_low_precision_gemms_fp32_norms_and_output(compute):
    model = _net()
    seen = _record_dtypes(model)
    handle = Policy(compute=compute, output="fp32").apply(model)
    y = model(torch.randn(8, 16))
    low = {"bf16": torch.bfloat16, "fp16": torch.float16}[compute]
    assert seen["0"][1] == low and seen["3"][1] == low            # Linear: compute type
    assert seen["1"] == (torch.float32, torch.float32)             # LayerNorm kept fp32
    assert seen["4"] == (torch.float32, torch.float32)             # Softmax kept fp32
    assert y.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())   # master weights
    handle.remove()
    model(torch.randn(8, 16))
    assert seen["0"][1] == torch.float32                          # hooks gone


def test_policy_without_keep_lets_autocast_run_norms_low():
    # the control for the test above: torch's CPU autocast alone runs LayerNorm in bf16
    model = _net()
    seen = _record_dtypes(model)
    Policy(compute="bf16", keep_fp32=()).apply(model)
    model(torch.randn(8, 16))
    assert seen["1"][1] == torch.bfloat16


def test_accumulation_is_fp32():
    # 4096 products of 1 * 1: an fp16 accumulator stalls at 2048 (2048 + 1 rounds to 2048),
    # fp32 accumulation gives 4096 exactly, representable in fp16 and bf16.
    lin = torch.nn.Linear(4096, 1, bias=False)
    torch.nn.init.ones_(lin.weight)
    for compute in ("fp16", "bf16"):
        handle = Policy(compute=compute, output=None).apply(lin)
        assert lin(torch.ones(1, 4096)).item() == 4096.0
        handle.remove()


def test_policy_trains_fp32_master_weights():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    Policy(compute="bf16").apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert model.weight.dtype == torch.float32 and model.weight.grad.dtype == torch.float32
    assert loss.item() < 0.8 * first


def test_policy_arguments():
    with pytest.raises(ValueError, match="compute"):
        Policy(compute="fp8")
    with pytest.raises(ValueError, match="accumulate"):
        Policy(accumulate="fp16")
    with pytest.raises(ValueError, match="master weights"):
        Policy().apply(torch.nn.Linear(2, 2).half())


# -- the selector ------------------------------------------------------------------------

def _gauss(n=4096, seed=0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_selector_rule_branch_by_branch():
    g = _gauss()
    assert select_precision(g, "matmul").precision == "int8"        # amax ~3.6 rms
    assert select_precision(g, "softmax").precision == "fp32"
    assert select_precision(g, "norm").precision == "fp32"
    assert select_precision(g, "add").precision == "fp16"           # elementwise, in range
    bad = g.clone()
    bad[0] = float("nan")
    assert select_precision(bad, "matmul").precision == "fp32"
    assert select_precision(torch.zeros(10), "matmul").precision == "int8"
    out = g.clone()
    out[:4] = 50.0                                                 # outliers > 8 rms
    c = select_precision(out, "linear")
    assert c.precision == "fp8_e4m3fn" and 0 < c.stats.large_share < 0.01
    wide = g * 1e-7
    wide[:4] = 100.0                                               # 2^30 span, outliers
    assert select_precision(wide, "matmul").precision == "bf16"    # p1 below fp16 normal
    assert select_precision(g * 1e5, "add").precision == "bf16"    # beyond fp16 max
    assert select_precision(g * 1e5, "matmul").precision == "int8" # scaled: amax is fine
    assert select_precision(g * 1e-6, "add").precision == "bf16"   # fp16 subnormals
    assert str(select_precision(g, "conv")) == "int8"


def test_selector_stats_ignore_zeros():
    x = _gauss()
    sparse = torch.cat([x, torch.zeros(3 * 4096)])
    a, b = select_precision(x, "matmul"), select_precision(sparse, "matmul")
    assert b.stats.sparsity == 0.75 and a.stats.amax == b.stats.amax
    assert a.stats.rms == b.stats.rms and a.precision == b.precision


def test_selector_arguments():
    with pytest.raises(ValueError, match="op must be one of"):
        select_precision(_gauss(), "gemm")
    with pytest.raises(ValueError, match="empty"):
        select_precision(torch.zeros(0), "matmul")


def test_dynamic_mode_applies_and_reports_per_layer():
    model = _net()
    x = torch.randn(8, 16)
    ref = model(x)
    seen = []
    model[3].register_forward_hook(lambda m, a, o: seen.append(a[0]))
    with DynamicPrecision(model) as dp:
        y = model(x)
        model(x)
    rows = {r["layer"]: r for r in dp.report()}
    assert rows["0"]["chosen"] == {"int8": 2} and rows["1"]["chosen"] == {"fp32": 2}
    assert rows["4"]["last"] == "fp32" and rows["3"]["op"] == "linear"
    h = model[2](model[1](model[0](lb.fake_quantize(x, "int8:token"))))
    assert torch.equal(seen[0], lb.fake_quantize(h, "int8:token"))  # what layer 3 saw
    assert not torch.equal(y, ref) and (y - ref).abs().max() < 0.05
    assert "layer" in dp.format_report()
    assert torch.equal(model(x), ref)                             # hooks removed on exit


def test_apply_precision_roundtrips():
    x = _gauss(64) * 3
    assert torch.equal(apply_precision(x, "bf16"), x.bfloat16().float())
    assert torch.equal(apply_precision(x, "fp8_e4m3fn"), lb.fake_quantize(x, "fp8_e4m3fn"))
    assert apply_precision(x, "fp32") is x
    with pytest.raises(ValueError, match="precision"):
        apply_precision(x, "int4")
