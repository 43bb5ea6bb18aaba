"""FRACTAL_NZ and 64-byte-aligned int4 layouts: literal example, exact round trips."""

import pytest
import torch

import lowbit as lb
from lowbit.kernels import from_aligned_int4, from_fractal_nz, to_aligned_int4, to_fractal_nz


def test_fractal_nz_worked_example():
    x = torch.arange(1, 16).reshape(3, 5)  # a..o = 1..15
    z = to_fractal_nz(x, m0=2, n0=2)
    want = torch.tensor([
        [[1, 2], [6, 7], [11, 12], [0, 0]],
        [[3, 4], [8, 9], [13, 14], [0, 0]],
        [[5, 0], [10, 0], [15, 0], [0, 0]],
    ])
    assert torch.equal(z, want)
    assert torch.equal(from_fractal_nz(z, (3, 5)), x)


@pytest.mark.parametrize("shape", [(1, 1), (16, 16), (17, 33), (2, 3, 40, 7), (5, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_fractal_nz_round_trip(shape, dtype):
    x = (torch.randn(shape) * 50).to(dtype)
    z = to_fractal_nz(x)
    n0 = 32 if dtype == torch.int8 else 16
    m, n = shape[-2:]
    assert z.shape == (*shape[:-2], -(-n // n0), -(-m // 16) * 16, n0)
    assert torch.equal(from_fractal_nz(z, shape), x)


def test_fractal_nz_errors():
    with pytest.raises(ValueError, match="x: a tensor with at least 2 dimensions"):
        to_fractal_nz(torch.zeros(5))
    z = to_fractal_nz(torch.zeros(4, 40))
    with pytest.raises(ValueError, match="does not hold"):
        from_fractal_nz(z, (4, 10))  # 3 blocks of 16 cannot hold only 10 columns


@pytest.mark.parametrize("n,k", [(1, 2), (7, 100), (4, 128), (3, 129)])
def test_aligned_int4_round_trip(n, k):
    q = lb.quantize(torch.randn(n, k), "int4")
    a = to_aligned_int4(q.codes)
    assert a.shape[1] % 64 == 0 and a.data_ptr() % 64 == 0
    assert not a[:, q.codes.shape[1]:].any()
    assert torch.equal(from_aligned_int4(a, k), q.codes)
    with pytest.raises(ValueError, match="aligned: expected uint8"):
        from_aligned_int4(a[:, :10], k)
