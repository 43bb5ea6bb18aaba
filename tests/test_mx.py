"""Block-scaled schemes against their references: torchao's MX and NVFP4 emulation (bit for
bit, every scale rule), and a direct transcription of the shared-microexponent formats."""

import math
import warnings

import pytest
import torch

import lowbit as lb

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    mx_tensor = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    nvfp4 = pytest.importorskip("torchao.prototype.mx_formats.nvfp4_tensor")
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.kernels import unpack_uint4

ELEMENTS = {
    "mxfp8": torch.float8_e4m3fn,
    "mxfp8_e5m2": torch.float8_e5m2,
    "mxfp6_e2m3": DTYPE_FP6_E2M3,
    "mxfp6_e3m2": DTYPE_FP6_E3M2,
    "mxfp4": torch.float4_e2m1fn_x2,
}


def _data(seed=0, rows=24, cols=256):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-6, 6, rows)[:, None]
    x[0, :32] = 0.0  # an all-zero block
    x[1, 5] = 7.0 * x[1].abs().max()  # an outlier
    x[2, :32] = torch.tensor([2.0**k for k in range(-16, 16)])  # exact powers of two
    return x


def _torchao_mx(x, name, mode):
    scale, data = mx_tensor.to_mx(x, ELEMENTS[name], 32, mx_tensor.ScaleCalculationMode[mode])
    if ELEMENTS[name] == torch.float4_e2m1fn_x2:
        data = unpack_uint4(data.view(torch.uint8)).reshape(x.shape)
    return scale.view(torch.uint8), data.view(torch.uint8)


@pytest.mark.parametrize("mode", ["FLOOR", "CEIL", "EVEN", "RCEIL"])
@pytest.mark.parametrize("name", list(ELEMENTS))
def test_mx_matches_torchao_bit_for_bit(name, mode):
    for seed in range(3):
        x = _data(seed)
        scale, codes = _torchao_mx(x, name, mode)
        q = lb.quantize(x, f"{name}:{mode.lower()}")
        assert torch.equal(q.scale, scale)
        assert torch.equal(q.unpacked_codes(), codes)


def test_mx_dequantize_matches_torchao():
    x = _data(4)
    for name, dtype in ELEMENTS.items():
        t = mx_tensor.MXTensor.to_mx(x, dtype, 32)
        assert torch.equal(lb.quantize(x, name).dequantize(), t.dequantize(torch.float32))


def test_nvfp4_matches_torchao_two_level():
    for seed in range(3):
        x = _data(seed, cols=128)
        ts = nvfp4.per_tensor_amax_to_scale(x.abs().amax())
        scale, data = nvfp4.nvfp4_quantize(x, 16, ts)
        q = lb.quantize(x, "nvfp4")
        assert torch.equal(q.tensor_scale, ts)
        assert torch.equal(q.scale, scale.view(torch.uint8))
        assert torch.equal(q.unpacked_codes(), unpack_uint4(data).reshape(x.shape))


def test_mx_worked_example_from_the_docstring():
    # amax 7.0 in mxfp4: scale 2^0; 5.0 -> 4 (tie to even), 7.0 -> 6 (clamped), 2.5 -> 2
    x = torch.zeros(1, 32)
    x[0, :4] = torch.tensor([7.0, 5.0, 2.5, -0.25])
    q = lb.quantize(x, "mxfp4")
    assert q.scale.item() == 127
    assert q.dequantize()[0, :4].tolist() == [6.0, 4.0, 2.0, -0.0]


def _shared_microexponent_reference(x, mbits, block=16):
    """Rouhani et al. 2023, transcribed one element at a time: E = floor(log2 amax16);
    a pair whose own floor(log2 amax2) is below E shifts down by one (micro-exponent 1);
    sign + mbits magnitude at step 2^(E - d - (mbits - 1))."""
    out = torch.empty_like(x)
    flat, res = x.reshape(-1, block), out.view(-1, block)
    for b in range(flat.shape[0]):
        amax = flat[b].abs().max().item()
        E = math.frexp(amax)[1] - 1 if amax > 0 else -127
        for p in range(0, block, 2):
            pmax = flat[b, p:p + 2].abs().max().item()
            e_p = math.frexp(pmax)[1] - 1 if pmax > 0 else -127
            d = 1 if e_p < E else 0
            step = 2.0 ** (max(E - d, -126) - (mbits - 1))
            for i in (p, p + 1):
                v = flat[b, i].item() / step
                m = min(max(round(v), -(2**mbits - 1)), 2**mbits - 1)  # round(): half-even
                res[b, i] = m * step
    return out


@pytest.mark.parametrize("name,mbits", [("mx9", 7), ("mx6", 4), ("mx4", 2)])
def test_shared_microexponents_match_the_paper(name, mbits):
    x = _data(7, rows=6, cols=64)
    x[3, 16:32] = torch.tensor([8.0, 0.1] * 4 + [1.0, 0.9] * 4)  # pairs above and below E-1
    assert torch.equal(lb.quantize(x, name).dequantize(), _shared_microexponent_reference(x, mbits))


def test_microexponent_storage_is_counted():
    x = _data(1, rows=4, cols=64)
    q = lb.quantize(x, "mx6")
    n = x.numel()
    meta = q.nbytes - sum(t.numel() * t.element_size() for t in q.tensors().values())
    # 5-bit codes + one 8-bit exponent per 16 + one bit per pair = 6 bits per element
    assert q.nbytes - meta == n * 5 // 8 + n // 16 + n // 2 // 8
    assert lb.QTensor.from_state(*q.state()).dequantize().equal(q.dequantize())


def test_nan_block_gets_nan_scale_and_other_blocks_are_untouched():
    x = _data(2, rows=3, cols=64)
    clean = lb.quantize(x, "mxfp8").dequantize()
    x[0, 3] = float("nan")
    q = lb.quantize(x, "mxfp8")
    assert q.scale[0, 0].item() == 255
    y = q.dequantize()
    assert torch.isnan(y[0, :32]).all()
    assert torch.equal(y[0, 32:], clean[0, 32:]) and torch.equal(y[1:], clean[1:])


def test_block_formats_reject_bad_shapes_and_qparams():
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        lb.quantize(torch.randn(4, 48), "mxfp4")
    q = lb.quantize(torch.randn(4, 48), "mxfp4:pad")
    assert q.shape == (4, 48) and q.dequantize().shape == (4, 48)
    with pytest.raises(ValueError, match="computed from the data"):
        lb.quantize(torch.randn(4, 32), "mxfp8", lb.QParams(torch.ones(4, 1)))


def test_all_zero_blocks_decode_to_zero():
    for name in ["mxfp8", "mxfp4", "mxint8", "nvfp4", "mx6"]:
        y = lb.quantize(torch.zeros(2, 64), name).dequantize()
        assert torch.equal(y, torch.zeros(2, 64)), name


def test_nvfp4_tiny_tensors_stay_finite():
    x = torch.zeros(2, 32)
    x[0, 0] = 1e-38  # amax far below 2^-110: 1 / (amax / 2688) would overflow float32
    y = lb.quantize(x, "nvfp4").dequantize()
    assert torch.isfinite(y).all() and y[1].eq(0).all()
