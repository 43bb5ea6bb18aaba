"""GPTQ against a direct transcription of the published reference (IST-DASLab's
``fasterquant``: lazy batches of 128 columns, 1% dampening, group parameters taken from
the block-updated weights), on the same input."""

import copy

import pytest
import torch

import lowbit as lb
from lowbit.ptq.gptq import Hessian, gptq
from lowbit.recipes import Recipe, Rule


def _reference_gptq(W, H, bits=4, groupsize=32, blocksize=128, percdamp=0.01):
    """The reference algorithm, line by line, with its symmetric min-max quantizer:
    scale = amax / (2^(bits-1) - 1) per row of the group, q = clamp(round(w / s), -8, 7)."""
    W, H = W.clone().double(), H.clone().double()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    H[range(columns), range(columns)] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    qmax = 2 ** (bits - 1) - 1
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if (i1 + i) % groupsize == 0:
                amax = W[:, (i1 + i):(i1 + i + groupsize)].float().abs().amax(1)
                scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax)).double()
            q = torch.clamp(torch.round((w.float() / scale.float()).double()), -qmax - 1, qmax) * scale
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def _problem(n=48, k=256, samples=1024, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    x = torch.randn(samples, k, generator=g) @ torch.randn(k, k, generator=g) * 0.2
    x[:, 7] = 0.0  # a dead input channel
    h = Hessian()
    for part in x.split(300):
        h.update(part)
    return w, x, h.value()


def test_matches_the_reference_algorithm():
    w, _, H = _problem()
    ours, qp = gptq(w, H, "int4:g32")
    ref = _reference_gptq(w, H).float()
    codes = lambda t: torch.round(t.reshape(48, -1, 32) / qp.scale.unsqueeze(-1))
    assert (codes(ours) == codes(ref)).float().mean() > 0.999
    torch.testing.assert_close(ours, ref, atol=float(qp.scale.max()) + 1e-6, rtol=0)


def test_lowers_output_error_and_codes_are_reproducible():
    w, x, H = _problem(seed=1)
    for scheme in ["int4:g32", "int4:g64:asym", "int4:channel", "int8:channel", "int2:g32"]:
        wq, qp = gptq(w, H, scheme)
        q = lb.quantize(wq, scheme, qp)
        assert torch.equal(q.dequantize(), wq), scheme  # GPTQ's values are on the grid
        rtn = lb.quantize(w, scheme).dequantize()
        err = lambda a: ((x @ (a - w).T) ** 2).mean()
        assert err(wq) < 0.8 * err(rtn), scheme


def test_hessian_is_the_mean_of_2xxT():
    x = torch.randn(50, 8, dtype=torch.float64)
    h = Hessian()
    h.update(x[:20])
    h.update(x[20:])
    torch.testing.assert_close(h.value(), 2 * x.T @ x / 50)
    with pytest.raises(RuntimeError, match="count == 0"):
        Hessian().value()


def test_bad_input():
    w, _, H = _problem()
    with pytest.raises(ValueError, match="per-channel"):
        gptq(w, H, "mxfp4")
    with pytest.raises(ValueError, match="hessian must be"):
        gptq(w, H[:10, :10], "int4:g32")


def test_driver_runs_gptq_from_calibration_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32))
    data = [torch.randn(16, 64) for _ in range(6)]
    ref = copy.deepcopy(model)
    recipe = Recipe([Rule(types=("Linear",), weight="int4:g32", weight_clip="gptq")])
    with pytest.warns(UserWarning, match="GPTQ"):  # no data: plain min-max rounding
        plain = lb.quantize_model(copy.deepcopy(model), recipe, progress=False)
    assert isinstance(plain[0], lb.nn.QuantLinear)
    lb.quantize_model(model, recipe, calib_data=data, progress=False)
    x = torch.cat(data)
    rtn = lb.quantize_model(copy.deepcopy(ref), Recipe([Rule(types=("Linear",), weight="int4:g32")]),
                            progress=False)
    err = lambda m: ((m(x) - ref(x)) ** 2).mean()
    assert err(model) < err(rtn)
