"""Native A8W4 GEMM against its pure-torch reference: bit for bit, on every path here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.kernels import native as nt

PATHS = nt.supported_isas()  # e.g. avx512_vnni, avx2, scalar, reference


def _canonical(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes [N, K] the canonical way: even k in the low nibble."""
    c = codes.to(torch.int32) & 0x0F
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


def _problem(m, n, k, g, sym, seed=0, zero_rows=()):
    gen = torch.Generator().manual_seed(seed)
    groups = k // g
    x = torch.randn(m, k, generator=gen) * 3
    for r in zero_rows:
        if r < m:
            x[r] = 0
    if sym:
        codes, zeros = torch.randint(-8, 8, (n, k), generator=gen), None
    else:
        codes = torch.randint(0, 16, (n, k), generator=gen)
        zeros = torch.randint(0, 16, (n, groups), generator=gen).to(torch.uint8)
    scales = torch.rand(n, groups, generator=gen) * 0.02 + 1e-3
    bias = torch.randn(n, generator=gen)
    return x, codes, scales, zeros, bias


CASES = [  # (M, N, K, g)
    (1, 1, 32, 32), (2, 7, 64, 32), (15, 33, 128, 64), (16, 100, 256, 128),
    (17, 7, 96, 32), (64, 33, 512, 512), (257, 33, 128, 32), (3, 20, 36, 36),
    (1, 100, 1024, 128), (16, 48, 256, 256),
]


@pytest.mark.parametrize("m,n,k,g", CASES)
@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_bit_exact_all_paths(m, n, k, g, sym):
    x, codes, scales, zeros, bias = _problem(m, n, k, g, sym, seed=m * 1000 + n,
                                             zero_rows=(0, m - 1) if m > 2 else ())
    packed = _canonical(codes)
    pw = nt.pack_a8w4(packed, scales, zeros, group_size=g)
    ref = nt.reference_a8w4_linear(x, packed, scales, zeros, group_size=g, bias=bias)
    ref_nb = nt.reference_a8w4_linear(x, packed, scales, zeros, group_size=g)
    ref_acc = nt.reference_a8w4_accumulators(x, packed, scales, zeros, group_size=g)
    assert ref_acc.shape == (m, n, k // g) and ref_acc.dtype == torch.int32
    for path in PATHS:
        assert torch.equal(nt.a8w4_linear(x, pw, bias, isa=path), ref), path
        assert torch.equal(nt.a8w4_linear(x, pw, isa=path), ref_nb), path
        assert torch.equal(nt.a8w4_accumulators(x, pw, isa=path), ref_acc), path


@pytest.mark.parametrize("m,n,k,g", [(1, 7, 64, 32), (17, 33, 96, 32), (64, 20, 1024, 128)])
def test_fused_column_multiplier_is_the_premultiplied_input(m, n, k, g):
    """x_mul (SmoothQuant's 1 / s) is applied inside the quantization: bit for bit the
    result of multiplying x first, on every path, odd K tails included."""
    x, codes, scales, zeros, bias = _problem(m, n, k, g, sym=True, seed=k, zero_rows=(0,))
    x_mul = torch.rand(k, generator=torch.Generator().manual_seed(1)) * 4 + 0.05
    packed = _canonical(codes)
    pw = nt.pack_a8w4(packed, scales, zeros, group_size=g)
    ref = nt.reference_a8w4_linear(x * x_mul, packed, scales, zeros, group_size=g, bias=bias)
    ref_acc = nt.reference_a8w4_accumulators(x * x_mul, packed, scales, zeros, group_size=g)
    for path in PATHS:
        assert torch.equal(nt.a8w4_linear(x, pw, bias, isa=path, x_mul=x_mul), ref), path
        assert torch.equal(nt.a8w4_accumulators(x, pw, isa=path, x_mul=x_mul), ref_acc), path
    with pytest.raises(ValueError, match=r"x_mul: expected a CPU float32 tensor of shape"):
        nt.a8w4_linear(x, pw, x_mul=x_mul[:-1])
    with pytest.raises(ValueError, match="x_mul"):
        nt.a8w4_linear(x, pw, x_mul=x_mul.double())


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_reference_matches_float_math(sym):
    """The reference is the dequantized product, up to fp32 rounding (independent check)."""
    m, n, k, g = 9, 21, 256, 64
    x, codes, scales, zeros, bias = _problem(m, n, k, g, sym, seed=7, zero_rows=(3,))
    qx, sx = nt.quantize_activations(x)
    z = 0 if sym else zeros.double().repeat_interleave(g, 1)
    w = (codes.double() - z) * scales.double().repeat_interleave(g, 1)
    want = (qx.double() * sx.double()[:, None]) @ w.T + bias.double()
    got = nt.reference_a8w4_linear(x, codes, scales, zeros, group_size=g, bias=bias)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[3], bias)  # all-zero row: s_x = 1, qx = 0, y = bias
    # and the whole thing is a decent approximation of the float product
    rel = (got.double() - (x.double() @ w.T + bias.double())).norm() / want.norm()
    assert rel < 0.02


def test_activation_quantization_golden():
    x = torch.tensor([[127.0, 2.5, -0.5, 3.5, -126.5], [0.0, 0.0, 0.0, 0.0, 0.0]])
    q, s = nt.quantize_activations(x)
    assert s.tolist() == [1.0, 1.0]  # amax 127 -> s 1; all-zero row -> s 1 (not 0, no NaN)
    assert q.tolist() == [[127, 2, 0, 4, -126], [0, 0, 0, 0, 0]]  # ties to even


@pytest.mark.parametrize("path", PATHS)
def test_docstring_example_every_path(path):
    """x = [127, 2.5], w = [3, -1], s_w = 0.5: qx = [127, 2], acc = 379, y = 189.5."""
    pw = nt.pack_a8w4(torch.tensor([[3, -1]]), torch.tensor([[0.5]]), group_size=2)
    x = torch.tensor([[127.0, 2.5]])
    assert nt.a8w4_accumulators(x, pw, isa=path).tolist() == [[[379]]]
    assert nt.a8w4_linear(x, pw, torch.tensor([0.25]), isa=path).tolist() == [[189.75]]


def test_layout_literal_bytes():
    """u[j, k] = k on one block of 16 rows: every dword is bytes 0x40 0x51 0x62 0x73."""
    codes = torch.arange(8).repeat(16, 1)
    pw = nt.pack_a8w4(codes, torch.ones(16, 1), torch.zeros(16, 1, dtype=torch.uint8),
                      group_size=8)
    assert pw.data.shape == (1, 1, 64)
    assert pw.data.flatten().tolist() == [0x40, 0x51, 0x62, 0x73] * 16
    # symmetric: the two's-complement nibble becomes offset binary (q + 8)
    pws = nt.pack_a8w4(torch.full((1, 8), -8), torch.ones(1, 1), group_size=8)
    assert pws.data.flatten()[:4].tolist() == [0, 0, 0, 0]
    assert pws.zeros.flatten()[:2].tolist() == [8, 0]  # padded rows carry zero point 0


@pytest.mark.parametrize("sym", [True, False], ids=["sym", "asym"])
def test_repack_round_trip(sym):
    _, codes, scales, zeros, _ = _problem(1, 37, 192, 64, sym, seed=3)
    packed = _canonical(codes)
    for src in (packed, codes):
        back, s2, z2 = nt.unpack_a8w4(nt.pack_a8w4(src, scales, zeros, group_size=64))
        assert torch.equal(back, packed) and torch.equal(s2, scales)
        assert (z2 is None) if sym else torch.equal(z2, zeros)


def test_threads_and_batch_dims_agree():
    x, codes, scales, zeros, bias = _problem(40, 70, 512, 128, False, seed=11)
    pw = nt.pack_a8w4(codes, scales, zeros, group_size=128)
    before = nt.get_num_threads()
    try:
        nt.set_num_threads(1)
        one = nt.a8w4_linear(x, pw, bias)
        nt.set_num_threads(2)
        two = nt.a8w4_linear(x, pw, bias)
    finally:
        nt.set_num_threads(before)
    assert torch.equal(one, two)
    y3 = nt.a8w4_linear(x.view(4, 10, 512), pw, bias)
    assert y3.shape == (4, 10, 70) and torch.equal(y3.reshape(40, 70), one)
    xt = x.T.contiguous().T  # non-contiguous input is copied, same answer
    assert torch.equal(nt.a8w4_linear(xt, pw, bias), one)


def test_concurrent_callers_share_the_pool():
    """Python threads calling at once (ctypes drops the GIL) each get their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    probs = [_problem(33, 70, 1024, 64, sym=i % 2 == 0, seed=100 + i) for i in range(6)]
    packed = [nt.pack_a8w4(c, s, z, group_size=64) for _, c, s, z, _ in probs]
    want = [nt.reference_a8w4_linear(x, c, s, z, group_size=64, bias=b)
            for x, c, s, z, b in probs]

    def run(i):
        return all(torch.equal(nt.a8w4_linear(probs[i][0], packed[i], probs[i][4]), want[i])
                   for _ in range(5))

    with ThreadPoolExecutor(4) as ex:
        assert all(ex.map(run, range(len(probs))))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 20), n=st.integers(1, 40), groups=st.integers(1, 4),
       g=st.sampled_from([32, 64, 128]), sym=st.booleans(), seed=st.integers(0, 2**16))
def test_random_shapes(m, n, groups, g, sym, seed):
    k = g * groups
    x, codes, scales, zeros, bias = _problem(m, n, k, g, sym, seed=seed)
    pw = nt.pack_a8w4(codes, scales, zeros, group_size=g)
    ref = nt.reference_a8w4_linear(x, codes, scales, zeros, group_size=g, bias=bias)
    assert torch.equal(nt.a8w4_linear(x, pw, bias), ref)


def test_bad_inputs_raise_clear_errors():
    s = torch.ones(4, 2)
    with pytest.raises(ValueError, match="K=100.*group_size=32"):
        nt.pack_a8w4(torch.zeros(4, 100, dtype=torch.int8), torch.ones(4, 3), group_size=32)
    with pytest.raises(ValueError, match="even"):
        nt.pack_a8w4(torch.zeros(4, 33, dtype=torch.int8), torch.ones(4, 1), group_size=33)
    with pytest.raises(ValueError, match="multiple of 8"):
        nt.pack_a8w4(torch.zeros(4, 48, dtype=torch.int8), torch.ones(4, 4), group_size=12)
    with pytest.raises(ValueError, match="scales"):
        nt.pack_a8w4(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 3), group_size=32)
    with pytest.raises(TypeError, match="scales"):
        nt.pack_a8w4(torch.zeros(4, 64, dtype=torch.int8), s.double(), group_size=32)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        nt.pack_a8w4(torch.full((4, 64), 9), s, group_size=32)
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        nt.pack_a8w4(torch.full((4, 64), -1), s, torch.zeros(4, 2, dtype=torch.uint8), group_size=32)
    with pytest.raises(ValueError, match="zeros"):
        nt.pack_a8w4(torch.zeros(4, 64, dtype=torch.int8), s, torch.zeros(4, 3, dtype=torch.int32), group_size=32)
    with pytest.raises(TypeError, match="zeros"):
        nt.pack_a8w4(torch.zeros(4, 64, dtype=torch.uint8), s, torch.zeros(4, 2), group_size=32)
    with pytest.raises(ValueError, match="overflow"):  # per channel, K = 2^20
        nt.pack_a8w4(torch.zeros(1, 2**20, dtype=torch.int8), torch.ones(1, 1), group_size=2**20)
    pw = nt.pack_a8w4(torch.zeros(4, 64, dtype=torch.int8), s, group_size=32)
    with pytest.raises(TypeError, match="x"):
        nt.a8w4_linear(torch.zeros(2, 64, dtype=torch.float64), pw)
    with pytest.raises(ValueError, match="K=64"):
        nt.a8w4_linear(torch.zeros(2, 63), pw)
    with pytest.raises(ValueError, match="bias"):
        nt.a8w4_linear(torch.zeros(2, 64), pw, torch.zeros(5))
    with pytest.raises(TypeError, match="weight"):
        nt.a8w4_linear(torch.zeros(2, 64), torch.zeros(4, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="isa"):
        nt.a8w4_linear(torch.zeros(2, 64), pw, isa="neon")
    assert nt.a8w4_linear(torch.zeros(0, 64), pw).shape == (0, 4)


_CHILD = textwrap.dedent("""
    import torch
    from lowbit.kernels import native as nt
    x = torch.randn(5, 128)
    codes = torch.randint(-8, 8, (9, 128)); s = torch.rand(9, 2)
    pw = nt.pack_a8w4(codes, s, group_size=64)
    ref = nt.reference_a8w4_linear(x, codes, s, group_size=64)
    assert torch.equal(nt.a8w4_linear(x, pw), ref)
    print(nt.isa(), nt.available())
""")


def _child(env_extra: dict[str, str]) -> str:
    env = {**os.environ, **env_extra}  # the compiled kernel, if any, is reused from the cache
    out = subprocess.run([sys.executable, "-c", _CHILD], check=False, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_fallback_without_compiler():
    """No C compiler (or native disabled): the package imports and the torch reference runs."""
    assert _child({"CC": "/nonexistent/cc"}) == "reference False"
    assert _child({"LOWBIT_NATIVE": "0"}) == "reference False"


@pytest.mark.skipif("scalar" not in PATHS, reason="no native build here")
def test_isa_cap_env():
    assert _child({"LOWBIT_NATIVE_ISA": "scalar"}) == "scalar True"
