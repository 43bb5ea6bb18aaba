"""lowbit.kernels: registry, references against independent oracles, fast paths against
their references (integer paths bit for bit, accumulator and output), errors."""

import math

import pytest
import torch

import lowbit as lb
import lowbit.kernels as K
from lowbit.kernels import cpu_int4, cpu_int8, reference, registry
from lowbit.kernels.problem import Problem

# The int8 x int8 paths: the native fused kernel where the CPU has VNNI, else torch._int_mm.
A8W8_BACKENDS = ("cpu.int8.int_mm", cpu_int8.a8w8_name())


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _oracle_acc(a: lb.QTensor, w: lb.QTensor, gb: int) -> torch.Tensor:
    """Independent exact block sums: int64 products summed per block, from dequantized
    integer codes recovered as (x_hat / scale) + zero point (no reference code used)."""
    def centered(q):
        codes = q.int_values().long()[..., : q.shape[-1]]
        if q.zero_point is None:
            return codes.reshape(-1, q.shape[-1])
        block = q.scheme.granularity.block_shape(tuple(q.padded_shape))
        zp = q.zero_point.long()
        for i in range(zp.dim()):
            zp = zp.repeat_interleave(block[i], dim=i)
        return (codes - zp[..., : q.shape[-1]]).reshape(-1, q.shape[-1])
    ac, wc = centered(a), centered(w)
    k = ac.shape[1]
    out = []
    for start in range(0, k, gb):
        sl = slice(start, min(start + gb, k))
        out.append((ac[:, None, sl] * wc[None, :, sl]).sum(-1))
    return torch.stack(out, -1)


# -- registry ----------------------------------------------------------------------------

def test_every_key_ends_with_a_reference():
    for a in registry.ACT_KINDS:
        for w in registry.WEIGHT_KINDS:
            impls = K.implementations(a, w)
            assert impls, (a, w)
            assert impls[-1].name in ("reference", "emulated"), (a, w)


def test_register_puts_fast_paths_before_the_reference():
    calls = []
    try:
        registry.register("int", "int", "test.fast", lambda p: calls.append(1) or
                          reference.integer_reference(p), lambda p: p.m == 3)
        names = [i.name for i in K.implementations("int", "int")]
        assert names == ["test.fast", "reference"]
        w = lb.quantize(_rand(5, 16), "int2:channel")
        x = lb.quantize(_rand(3, 16, seed=1), "int4:token")
        assert K.backend(x, w, op="linear") == "test.fast"
        K.linear(x, w)
        assert calls == [1]
        assert K.backend(lb.quantize(_rand(2, 16), "int4:token"), w, op="linear") == "reference"
    finally:
        registry._REGISTRY[("int", "int")] = [i for i in registry._REGISTRY[("int", "int")]
                                              if i.name != "test.fast"]


# -- integer reference -------------------------------------------------------------------

@pytest.mark.parametrize("act,wscheme", [
    ("int8:token", "int8:channel"), ("int8:token", "int4:g32:asym"),
    ("int8:g64", "int4:g32"), ("uint8:asym", "int8"), ("int4:token:asym", "int2:g16"),
    ("int8:g32", "int8:channel:asym"),
])
def test_integer_reference_matches_an_int64_oracle(act, wscheme):
    x, w = _rand(5, 128), _rand(7, 128, seed=1)
    xq, wq = lb.quantize(x, act), lb.quantize(w, wscheme)
    acc, gb, _, _ = reference.accumulators(xq, wq)
    assert acc.dtype == torch.int32
    assert torch.equal(acc.long(), _oracle_acc(xq, wq, gb))
    y = K.linear(xq, wq)
    want = xq.dequantize().double() @ wq.dequantize().double().T
    assert torch.allclose(y.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_int32_bound_switches_to_int64_past_it():
    # uint8 asym x uint8 asym: |a_c|, |w_c| <= 255, so K * 255 * 255 > 2^31 - 1 past K=33025
    k = 33100
    xq = lb.quantize(_rand(1, k), "uint8:asym")
    wq = lb.quantize(_rand(2, k, seed=1), "uint8:channel:asym")
    assert k * 255 * 255 > reference.INT32_MAX
    acc, gb, _, _ = reference.accumulators(xq, wq)
    assert acc.dtype == torch.int64 and gb == k
    assert torch.equal(acc, _oracle_acc(xq, wq, gb))
    xs = lb.quantize(_rand(1, 4096), "int8:token")
    ws = lb.quantize(_rand(2, 4096, seed=1), "int8:channel")
    assert reference.accumulators(xs, ws)[0].dtype == torch.int32  # 4096*127*127 < 2^31


# -- A8W8 fast paths ----------------------------------------------------------------------

def test_quantize_rows_is_lb_quantize_int8_token():
    x = _rand(6, 300)
    x[2] = 0
    x[3, 5] = 1e-30
    q, s = cpu_int8.quantize_rows(x)
    ref = lb.quantize(x, "int8:token")
    assert torch.equal(q, ref.int_values()) and torch.equal(s, ref.scale)


_ACTS = [
    "int8:token",
    ("int8", lb.QParams(torch.tensor(0.03))),
    ("int8:asym", lb.QParams(torch.tensor(0.02), torch.tensor(-5, dtype=torch.int32))),
    ("uint8:asym", lb.QParams(torch.tensor(0.025), torch.tensor(131, dtype=torch.int32))),
]


@pytest.mark.parametrize("m,k,n", [(1, 64, 33), (3, 200, 17), (17, 96, 64), (40, 4096, 9)])
@pytest.mark.parametrize("act", _ACTS, ids=["token", "static", "static_asym", "uint8_asym"])
@pytest.mark.parametrize("wscheme", ["int8:channel", "int8"])
def test_a8w8_int_mm_is_bit_exact(m, k, n, act, wscheme):
    x, w, b = _rand(m, k), _rand(n, k, seed=1), _rand(n, seed=2)
    pw = K.prepare(lb.quantize(w, wscheme), act)
    p = Problem(x, pw, b)
    assert K.backend(x, pw, b) in A8W8_BACKENDS
    acc, _, _, _ = reference.accumulators(p.xq, pw.weight)
    assert torch.equal(cpu_int8.a8w8_accumulators(p), acc[:, :, 0])
    assert torch.equal(K.linear(x, pw, b), reference.integer_reference(p))


def test_a8w8_given_activation_qtensor_3d():
    x = lb.quantize(_rand(2, 3, 64), "int8:token")
    w = lb.quantize(_rand(5, 64, seed=1), "int8:channel")
    assert K.backend(x, w, op="linear") in A8W8_BACKENDS
    y = K.linear(x, w)
    assert y.shape == (2, 3, 5)
    p = Problem(x, K.prepare(w))
    assert torch.equal(y.reshape(6, 5), reference.integer_reference(p))


# -- A8W4 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("wscheme", ["int4:g32", "int4:g64:asym", "int4:g128", "uint4:g128:asym",
                                     "int4:channel", "int4:channel:asym"])
@pytest.mark.parametrize("m,n", [(1, 33), (5, 16), (19, 7)])
def test_a8w4_native_is_bit_exact(wscheme, m, n):
    k = 256
    x, w, b = _rand(m, k), _rand(n, k, seed=1), _rand(n, seed=2)
    pw = K.prepare(lb.quantize(w, wscheme), "int8:token")
    p = Problem(x, pw, b)
    want = reference.integer_reference(p)
    mod = cpu_int4.native_module()
    if mod is None:
        assert K.backend(x, pw, b) == "reference"
        pytest.skip("native A8W4 kernel not built here")
    assert K.backend(x, pw, b) == f"cpu.a8w4.{mod.isa()}"
    assert torch.equal(K.linear(x, pw, b), want)
    packed = pw.form("cpu.a8w4", cpu_int4._pack_native)
    acc = reference.accumulators(p.xq, pw.weight)[0]
    assert torch.equal(mod.a8w4_accumulators(x, packed), acc)


def test_a8w4_large_k_and_packed_weights_stay_packed():
    k = 8192
    x, w = _rand(2, k), _rand(3, k, seed=1)
    q = lb.quantize(w, "int4:g128:asym")
    assert q.codes.shape == (3, k // 2)  # two per byte
    pw = K.prepare(q, "int8:token")
    assert torch.equal(K.linear(x, pw), reference.integer_reference(Problem(x, pw)))


def test_group_not_dividing_k_is_a_clear_error_or_padded():
    w = _rand(8, 200)
    with pytest.raises(ValueError, match="multiple of the group size 128"):
        lb.quantize(w, "int4:g128")
    q = lb.quantize(w, "int4:g128:pad")
    x = _rand(3, 200, seed=1)
    assert K.backend(x, q, act="int8:token", op="linear") == "reference"
    y = K.linear(x, q, act="int8:token")
    want = lb.quantize(x, "int8:token").dequantize() @ q.dequantize().T
    assert torch.allclose(y, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="x: the last axis must be K=200"):
        K.linear(_rand(3, 128), q)


# -- weight-only and float paths (stated bound) -------------------------------------------

def _fp32_bound(x, w):
    """fp32 accumulation in another order: |error| <= 2 K u sum|x||w|, u = 2^-24."""
    return 2 * x.shape[-1] * 2.0**-24 * (x.abs().double() @ w.abs().double().T) + 1e-30


@pytest.mark.parametrize("wscheme", ["int8:channel", "int8", "int4:g32", "int4:g128:asym",
                                     "uint4:g64:asym", "int4:channel"])
@pytest.mark.parametrize("m,n,dtype", [(1, 33, torch.float32), (3, 33, torch.bfloat16),
                                       (130, 64, torch.bfloat16), (9, 16, torch.float16)])
def test_weight_only_paths_within_bound(wscheme, m, n, dtype):
    """Stated bound: fp32 accumulation order (2 K u sum|x||w|) plus, for 16-bit activations
    (output in their dtype), one rounding of each scale and zero (or of each decoded
    weight) to that dtype, |dw| <= 2^-p * 16 * s, and 1 ulp of the output for its
    rounding(s) (p = 9 for bf16, 12 for fp16)."""
    k = 256
    x, w = _rand(m, k).to(dtype), _rand(n, k, seed=1)
    q = lb.quantize(w, wscheme)
    small = m <= cpu_int4.SMALL_M
    want = ("reference" if dtype == torch.float32 else
            ("cpu.w8.int8pack" if small else "cpu.w8.dequant") if wscheme.startswith("int8")
            else "cpu.w4.int4pack" if small else "cpu.w4.dequant")
    assert K.backend(x, q, op="linear") == want
    y = K.linear(x, q)
    assert y.dtype == dtype
    ref = reference.float_reference(Problem(x, K.prepare(q), out_dtype=torch.float32))
    wd, xf = q.dequantize(), x.float()
    bound = _fp32_bound(xf, wd)
    if want != "reference":
        p = 9 if dtype == torch.bfloat16 else 12
        block = q.scheme.granularity.block_shape(tuple(q.padded_shape))
        s = q.scale.repeat_interleave(block[1], dim=1)[:, :k].expand(n, k)
        ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp(min=1e-30))) - (p - 2))
        bound = bound + (xf.abs().double() @ (2.0**-p * 16 * s.double()).T) + ulp.double()
    assert ((y.double() - ref.double()).abs() <= bound).all()


def test_bf16_matmul_within_one_ulp_plus_order_bound():
    for m, k, n in [(1, 64, 31), (16, 1000, 17), (64, 4096, 8)]:
        a, b = _rand(m, k).bfloat16(), _rand(k, n, seed=1).bfloat16()
        assert K.backend(a, b) == "cpu.bf16.onednn"
        y = K.matmul(a, b)
        assert y.dtype == torch.bfloat16
        ref = a.float() @ b.float()
        ulp = torch.exp2(torch.floor(torch.log2(ref.abs().clamp(min=1e-30))) - 7)
        bound = ulp.double() + _fp32_bound(a.float(), b.float().T)
        assert ((y.double() - ref.double()).abs() <= bound).all()
    assert K.backend(a, b, out_dtype=torch.float32) == "reference"
    assert torch.equal(K.matmul(a, b, out_dtype=torch.float32), a.float() @ b.float())


def test_emulated_formats_decode_exactly():
    x, w = _rand(3, 64), _rand(9, 64, seed=1)
    for s in ("fp8_e4m3fn", "fp8_e5m2", "mxfp4", "mxfp8", "nvfp4"):
        q = lb.quantize(w, s)
        assert K.backend(x, q, op="linear") == "emulated"
        assert torch.equal(K.linear(x, q), x @ q.dequantize().T)
        qa = lb.quantize(x, s)
        assert torch.equal(K.linear(qa, q), qa.dequantize() @ q.dequantize().T)


def test_matmul_with_quantized_b():
    a, b = _rand(4, 64), _rand(64, 10, seed=1)
    qb = lb.quantize(b, "int8:channel1")  # one scale per output column
    qa = lb.quantize(a, "int8:token")
    assert K.backend(qa, qb) in A8W8_BACKENDS
    want = qa.dequantize().double() @ qb.dequantize().double()
    assert torch.allclose(K.matmul(qa, qb).double(), want, rtol=1e-5, atol=1e-4)
    qbg = lb.quantize(b, "int8:g5")  # groups along N: scales vary along K, decode first
    assert K.backend(a, qbg) == "emulated"
    assert torch.equal(K.matmul(a, qbg), a @ qbg.dequantize())
    qb4 = lb.quantize(b, "int4")  # per tensor, packed along N: repacked along K
    assert K.backend(a, qb4) == "reference"  # W4A32: fp32 GEMM on the decoded weight
    assert torch.allclose(K.matmul(a, qb4), a @ qb4.dequantize(), rtol=1e-5, atol=1e-5)


# -- prepared weights and errors -----------------------------------------------------------

def test_packed_forms_are_rebuilt_when_the_weight_changes():
    x = _rand(4, 128)
    for wscheme in ("int8:channel", "int4:g32"):
        q = lb.quantize(_rand(16, 128, seed=1), wscheme)
        pw = K.prepare(q, "int8:token")
        y0 = K.linear(x, pw)
        q.codes.copy_(lb.quantize(_rand(16, 128, seed=7), wscheme).codes)  # in place
        y1 = K.linear(x, pw)
        assert not torch.equal(y0, y1)
        assert torch.equal(y1, reference.integer_reference(Problem(x, pw)))


_SMOOTH_CASES = [  # (weight, act, x dtype): fused native paths, torch paths, the references
    ("int8:channel", "int8:token", torch.float32), ("int4:g32", "int8:token", torch.float32),
    ("int8:channel", ("int8", lb.QParams(torch.tensor(0.05))), torch.float32),
    ("int4:g32", None, torch.bfloat16), ("int8:channel", None, torch.bfloat16),
    ("int5:channel", "int8:token", torch.float32),
    ("fp8_e4m3fn:channel", "fp8_e4m3fn:token", torch.float32), (None, None, torch.float32),
]


@pytest.mark.parametrize("wscheme,act,dtype", _SMOOTH_CASES)
def test_input_scale_multiplies_x_by_its_reciprocal_on_every_path(wscheme, act, dtype):
    """prepare(w, act, input_scale=s) == prepare(w, act) applied to x * (1 / s), bit for bit,
    whether the path fuses the multiplication (native int8) or not."""
    x = _rand(2, 5, 64).to(dtype)
    s = torch.rand(64, generator=torch.Generator().manual_seed(5)) * 3 + 0.1
    w = _rand(24, 64, seed=1)
    q = w.to(dtype) if wscheme is None else lb.quantize(w, wscheme)
    smoothed = K.prepare(q, act, input_scale=s)
    plain = K.prepare(q, act)
    xs = (x.float() * (1 / s)).to(dtype)
    assert K.backend(x, smoothed) == K.backend(xs, plain)
    assert torch.equal(K.linear(x, smoothed), K.linear(xs, plain)), K.backend(x, smoothed)


def test_input_scale_errors():
    q = lb.quantize(_rand(8, 32), "int8:channel")
    with pytest.raises(ValueError, match=r"input_scale: expected a float tensor of shape \[32\]"):
        K.prepare(q, "int8:token", input_scale=torch.ones(31))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        s = torch.ones(32)
        s[3] = bad
        with pytest.raises(ValueError, match="input_scale: every value must be finite and > 0"):
            K.prepare(q, "int8:token", input_scale=s)
    with pytest.raises(ValueError, match="x: the weight was prepared with an input_scale"):
        K.linear(lb.quantize(_rand(2, 32), "int8:token"), K.prepare(q, input_scale=torch.ones(32)))


def test_errors_name_the_argument():
    x, w = _rand(2, 32), _rand(4, 32)
    q = lb.quantize(w, "int8:channel")
    with pytest.raises(ValueError, match="act: activation quantization needs a quantized"):
        K.linear(x, w, act="int8:token")
    with pytest.raises(ValueError, match="act: x is already quantized"):
        K.linear(lb.quantize(x, "int8:token"), q, act="int8:token")
    with pytest.raises(ValueError, match="act: w is a PackedWeight"):
        K.linear(x, K.prepare(q, "int8:token"), act="int8:token")
    with pytest.raises(ValueError, match="rounding must be one of"):
        K.matmul(x, w.T, rounding="sideways")
    with pytest.raises(ValueError, match="out_dtype"):
        K.matmul(x, w.T, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="act: a tuple must be"):
        K.linear(x, q, act=("int8", 0.1))
    with pytest.raises(ValueError, match="bias: expected shape"):
        K.linear(x, q, torch.zeros(3))
    with pytest.raises(TypeError, match="x: a float tensor"):
        K.linear(x.int(), q)
    assert math.isfinite(K.linear(x, q, act="int8:token").sum().item())
