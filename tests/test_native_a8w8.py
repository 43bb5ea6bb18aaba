"""The native A8W8 kernel (lowbit.kernels.native.a8w8) against lowbit's reference GEMM.

Oracle: :func:`lowbit.kernels.reference.integer_reference` / ``reference.accumulators`` on
the same Problem (activations quantized by ``lb.quantize``): int32 accumulators and fp32
outputs must match bit for bit on every path that runs here (avx512_vnni, scalar, torch).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lowbit as lb
import lowbit.kernels as K
from lowbit.kernels import cpu_int8, reference
from lowbit.kernels import native as nat
from lowbit.kernels.native.a8w8 import MAX_K
from lowbit.kernels.problem import Problem

_ORDER = ("avx512_vnni", "scalar", "reference")
ISAS = list(_ORDER[_ORDER.index(nat.a8w8_isa()):])
VNNI = nat.a8w8_isa() == "avx512_vnni"


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _problem(m, k, n, wscheme="int8:channel", act="int8:token", bias=True, seed=0):
    x = _rand(m, k, seed=seed) * 3
    if m > 2:
        x[1] = 0  # all-zero row: scale 1
        x[2, :] = 0
        x[2, 5] = -1e-37  # amax / 127 below FLT_MIN: the scale is clamped to it
    w = lb.quantize(_rand(n, k, seed=seed + 1), wscheme)
    b = _rand(n, seed=seed + 2) if bias else None
    return Problem(x, K.prepare(w, act), b)


def _packed(p):
    w = p.w.weight
    return nat.pack_a8w8(w.codes.view(torch.int8), w.scale.float())


SHAPES = [(1, 64, 33), (2, 64, 17), (15, 100, 31), (16, 4096, 33), (17, 66, 47),
          (64, 4100, 19), (257, 1028, 35)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("wscheme", ["int8:channel", "int8"])
def test_every_path_is_bit_exact_with_the_reference(m, k, n, wscheme):
    p = _problem(m, k, n, wscheme, bias=(m % 2 == 1))
    acc, _, _, _ = reference.accumulators(p.xq, p.w.weight)
    want = reference.integer_reference(p)
    pw = _packed(p)
    for isa in ISAS:
        assert torch.equal(nat.a8w8_accumulators(p.x, pw, isa=isa), acc[:, :, 0]), isa
        assert torch.equal(nat.a8w8_linear(p.x, pw, p.bias, isa=isa), want), isa


@pytest.mark.parametrize("m,k,n", [(1, 64, 33), (17, 100, 31), (64, 4100, 19)])
def test_fused_column_multiplier_is_the_premultiplied_input(m, k, n):
    """x_mul (SmoothQuant's 1 / s) fused into the quantization == multiplying x first."""
    p = _problem(m, k, n)
    x_mul = torch.rand(k, generator=torch.Generator().manual_seed(3)) * 4 + 0.05
    pw = _packed(p)
    want = nat.a8w8_linear(p.x * x_mul, pw, p.bias, isa=ISAS[-1])
    want_acc = nat.a8w8_accumulators(p.x * x_mul, pw, isa=ISAS[-1])
    for isa in ISAS:
        assert torch.equal(nat.a8w8_linear(p.x, pw, p.bias, isa=isa, x_mul=x_mul), want), isa
        assert torch.equal(nat.a8w8_accumulators(p.x, pw, isa=isa, x_mul=x_mul), want_acc), isa
    with pytest.raises(ValueError, match=r"x_mul: expected a CPU float32 tensor of shape"):
        nat.a8w8_linear(p.x, pw, x_mul=x_mul[None])


@pytest.mark.parametrize("m,k,n", [(1, 64, 33), (17, 4096, 31), (257, 100, 17)])
def test_registry_runs_it_first_and_matches_int_mm(m, k, n):
    p = _problem(m, k, n)
    name = K.backend(p.x, p.w, p.bias)
    assert name == (cpu_int8.a8w8_name() if VNNI else "cpu.int8.int_mm")
    y = K.linear(p.x, p.w, p.bias)
    assert torch.equal(y, reference.integer_reference(p))
    assert torch.equal(y, cpu_int8.int_mm_linear(p))
    if VNNI:
        assert torch.equal(cpu_int8.native_accumulators(p), cpu_int8.a8w8_accumulators(p))
        assert "cpu.a8w8" in repr(p.w)  # packed once, kept on the PackedWeight


_STATIC = ("int8", lb.QParams(torch.tensor(0.03)))


@pytest.mark.parametrize("act", ["int8:token", _STATIC], ids=["dynamic", "static"])
def test_given_codes_and_static_activations(act):
    p = _problem(33, 200, 21, act=act)
    assert torch.equal(K.linear(p.x, p.w, p.bias), reference.integer_reference(p))
    qx = p.xq.int_values().reshape(p.m, p.k)
    pw = _packed(p)
    for isa in ISAS:
        y = nat.a8w8_linear_codes(qx, p.xq.scale, pw, p.bias, isa=isa)
        assert torch.equal(y, reference.integer_reference(p)), isa
    xq = lb.quantize(_rand(2, 3, 64), "int8:token")  # a QTensor with leading dims
    w = lb.quantize(_rand(5, 64, seed=1), "int8:channel")
    y = K.linear(xq, w)
    assert y.shape == (2, 3, 5)
    assert torch.equal(y.reshape(6, 5), reference.integer_reference(Problem(xq, K.prepare(w))))


_STATIC_SCHEMES = [  # (scheme, scale, zero point): symmetric int8, asymmetric int8 and uint8
    ("int8", 0.03, None), ("int8:asym", 0.02, -5), ("uint8:asym", 0.025, 131)]


@pytest.mark.parametrize("scheme,scale,zp", _STATIC_SCHEMES)
@pytest.mark.parametrize("m,k", [(1, 64), (19, 132), (40, 1000)])
def test_static_activations_quantized_inside_the_kernel(scheme, scale, zp, m, k):
    """Static (calibrated) activations are quantized by the kernel itself: the same codes as
    lb.quantize (ties to even, clamped ranges, K tails), with or without SmoothQuant's 1/s,
    on every path."""
    zero = None if zp is None else torch.tensor(zp, dtype=torch.int32)
    qp = lb.QParams(torch.tensor(scale), zero)
    p = _problem(m, k, 21, act=(scheme, qp))
    p.x[0, :4] = torch.tensor([0.5, 1.5, -2.5, 1e3]) * scale  # ties to even; saturated
    x_mul = torch.rand(k, generator=torch.Generator().manual_seed(2)) + 0.5
    fmt = p.act.format
    args = {"zero_point": zp or 0, "qmin": fmt.min, "qmax": fmt.max,
            "offset": 0 if fmt.signed else 128}
    pw = _packed(p)
    for xm in (None, x_mul):
        xs = p.x if xm is None else p.x * xm
        want = reference.integer_reference(Problem(xs, p.w, p.bias))
        for isa in ISAS:
            y = nat.a8w8_linear_static(p.x, pw, scale, p.bias, isa=isa, x_mul=xm, **args)
            assert torch.equal(y, want), (isa, xm is None)
    with pytest.raises(ValueError, match="static: scale must be finite and > 0"):
        nat.a8w8_linear_static(p.x, pw, 0.0, **args)
    with pytest.raises(ValueError, match="codes minus the offset within int8"):
        nat.a8w8_linear_static(p.x, pw, scale, qmin=0, qmax=255, offset=0)


_ASYM = [("uint8:asym", lb.QParams(torch.tensor(0.025), torch.tensor(131, dtype=torch.int32))),
         ("int8:asym", lb.QParams(torch.tensor(0.02), torch.tensor(-5, dtype=torch.int32))),
         "uint8:token:asym", "int8:asym"]


@pytest.mark.parametrize("act", _ASYM, ids=["static_uint8", "static_int8", "token_uint8",
                                            "tensor_int8"])
def test_asymmetric_activations(act):
    p = _problem(19, 132, 21, act=act)
    want = reference.integer_reference(p)
    assert K.backend(p.x, p.w, p.bias) == (cpu_int8.a8w8_name() if VNNI else "cpu.int8.int_mm")
    assert torch.equal(K.linear(p.x, p.w, p.bias), want)
    xq = p.xq  # uint8 codes enter shifted to int8: c - 128 with zero point z - 128
    shift = 0 if xq.scheme.format.signed else 128
    qx = (xq.int_values().to(torch.int32) - shift).to(torch.int8).reshape(p.m, p.k)
    zx = xq.zero_point.to(torch.int32) - shift
    acc, _, _, _ = reference.accumulators(xq, p.w.weight)
    pw = _packed(p)
    for isa in ISAS:
        y = nat.a8w8_linear_codes(qx, xq.scale, pw, p.bias, zx=zx, isa=isa)
        assert torch.equal(y, want), isa
        got = nat.a8w8_accumulators(None, pw, codes=(qx, xq.scale, zx), isa=isa)
        assert torch.equal(got, acc[:, :, 0]), isa


def test_past_the_asymmetric_bound_int_mm_runs():
    act = _ASYM[0]  # K * 255 * 128 > 2^31 - 1 >= K * 255 * 127: int_mm's bound only
    p = _problem(1, 66000, 3, act=act, seed=3)
    assert K.backend(p.x, p.w, p.bias) == "cpu.int8.int_mm"


def test_worked_example_and_extreme_accumulators():
    pw = nat.pack_a8w8(torch.tensor([[3, -1]], dtype=torch.int8), torch.tensor([0.5]))
    for isa in ISAS:  # x = [127, 2.5]: s_x = 1, qx = [127, 2] (tie to even), acc = 379
        assert nat.a8w8_linear(torch.tensor([[127.0, 2.5]]), pw, isa=isa).item() == 189.5
    k = MAX_K  # every product -128 * 127: acc = -128 * 127 * K, the int32 bound
    pw = nat.pack_a8w8(torch.full((3, k), -128, dtype=torch.int8), torch.ones(3))
    for isa in ISAS:
        acc = nat.a8w8_accumulators(torch.ones(2, k), pw, isa=isa)
        assert torch.equal(acc, torch.full((2, 3), -128 * 127 * k, dtype=torch.int32)), isa


def test_pack_roundtrip_and_errors():
    codes = torch.randint(-128, 128, (19, 10), dtype=torch.int8)
    scales = torch.rand(19)
    pw = nat.pack_a8w8(codes, scales)
    back, s = nat.unpack_a8w8(pw)
    assert torch.equal(back, codes) and torch.equal(s, scales)
    assert pw.data.shape == (2, 3, 64) and pw.nbytes == 2 * 3 * 64 + 32 * 4 * 2
    assert torch.equal(pw.wsum[:19], codes.sum(1, dtype=torch.int32))
    with pytest.raises(TypeError, match="codes"):
        nat.pack_a8w8(codes.float(), scales)
    with pytest.raises(ValueError, match="scales"):
        nat.pack_a8w8(codes, torch.rand(3))
    with pytest.raises(ValueError, match="K=132105"):
        nat.pack_a8w8(torch.zeros(1, MAX_K + 1, dtype=torch.int8), torch.ones(1))
    with pytest.raises(ValueError, match="in_features K=10"):
        nat.a8w8_linear(torch.randn(2, 11), pw)
    with pytest.raises(ValueError, match="isa"):
        nat.a8w8_linear(torch.randn(2, 10), pw, isa="avx2")


def test_weights_in_huge_pages_give_the_same_results():
    """Weights of 2 MiB and more are copied into transparent-huge-page memory at packing
    (see in_huge_pages); the copy is exact and the kernels read it like any tensor."""
    from lowbit.kernels.native._layout import in_huge_pages

    small = torch.arange(10.0)
    assert in_huge_pages(small) is small  # below one huge page: kept as is
    t = _rand(1024, 600)  # 2.3 MiB: one huge page, the rest in 4 KiB pages
    h = in_huge_pages(t)
    assert torch.equal(h, t) and h.dtype == t.dtype and h.is_contiguous()
    if h is not t:  # t itself where the OS offers no huge pages
        assert h.data_ptr() % 2**21 == 0
    p = _problem(3, 2048, 1030)  # int8 codes: 2.1 MB
    pw = _packed(p)
    assert pw.data.numel() >= 2**21
    want = reference.integer_reference(p)
    for isa in ISAS:
        assert torch.equal(nat.a8w8_linear(p.x, pw, p.bias, isa=isa), want), isa
    w4 = lb.quantize(_rand(2048, 2048, seed=5), "int4:g128")  # packed int4: 2 MiB
    x = _rand(3, 2048, seed=6)
    pw4 = K.prepare(w4, "int8:token")
    assert torch.equal(K.linear(x, pw4), reference.integer_reference(Problem(x, pw4)))


def test_fallback_without_the_native_library():
    code = (
        "import torch, lowbit as lb, lowbit.kernels as K\n"
        "from lowbit.kernels import native as nat, reference\n"
        "from lowbit.kernels.problem import Problem\n"
        "x, w = torch.randn(3, 64), lb.quantize(torch.randn(5, 64), 'int8:channel')\n"
        "pw = K.prepare(w, 'int8:token')\n"
        "assert nat.a8w8_isa() == 'reference', nat.a8w8_isa()\n"
        "assert K.backend(x, pw) == 'cpu.int8.int_mm', K.backend(x, pw)\n"
        "assert torch.equal(K.linear(x, pw), reference.integer_reference(Problem(x, pw)))\n"
        "p = nat.pack_a8w8(w.codes.view(torch.int8), w.scale)\n"
        "assert torch.equal(nat.a8w8_linear(x, p), K.linear(x, pw))\n"
        "print('ok')\n"
    )
    env = {**os.environ, "LOWBIT_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
