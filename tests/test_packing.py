"""pack / unpack: literal bytes, round trips, padding, and argument errors."""

import pytest
import torch

from lowbit.formats import pack, packed_length, unpack

BITS = [1, 2, 3, 4, 5, 6, 7, 8]


def group(bits):
    """(codes, bytes) in one packing group: lcm(bits, 8) bits."""
    return {1: (8, 1), 2: (4, 1), 3: (8, 3), 4: (2, 1), 5: (8, 5), 6: (4, 3), 7: (8, 7),
            8: (1, 1)}[bits]


def u8(values):
    return torch.tensor(values, dtype=torch.uint8)


@pytest.mark.parametrize("bits,codes,want", [
    (4, [1, 2, 3], [0x21, 0x03]),                      # element 0 in the low nibble; pad 0
    (4, [0xF, 0x0, 0xA, 0x5], [0x0F, 0x5A]),
    (2, [1, 2, 3, 0, 3], [0b00111001, 0b00000011]),
    (1, [1, 0, 0, 0, 0, 0, 0, 1, 1], [0x81, 0x01]),
    # 6-bit: 4 codes in 3 bytes, little endian 24-bit word 1 | 2<<6 | 3<<12 | 4<<18
    (6, [1, 2, 3, 4], [0x81, 0x30, 0x10]),
    (6, [63, 0, 0, 0, 63], [0x3F, 0x00, 0x00, 0x3F, 0x00, 0x00]),
    (6, [0, 0, 0, 63], [0x00, 0x00, 0xFC]),
    (8, [0, 255, 7], [0, 255, 7]),
    # 3/5/7-bit: the same little-endian bit stream, 8 codes per lcm(bits, 8) bits
    (3, [1, 2, 3, 4, 5, 6, 7, 0], [0xD1, 0x58, 0x1F]),
    (5, [31, 1], [0x3F, 0x00, 0x00, 0x00, 0x00]),
    (7, [1, 127], [0x81, 0x3F, 0x00, 0x00, 0x00, 0x00, 0x00]),
])
def test_literal_bytes(bits, codes, want):
    got = pack(u8(codes), bits=bits)
    assert got.dtype == torch.uint8 and got.tolist() == want
    assert packed_length(len(codes), bits) == len(want)
    assert unpack(got, bits=bits, n=len(codes)).tolist() == codes


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [0, 1, 3, 5, 7, 8, 13, 33])
def test_round_trip_random(bits, n):
    g = torch.Generator().manual_seed(bits * 100 + n)
    codes = torch.randint(0, 1 << bits, (3, 2, n), generator=g, dtype=torch.int64)
    packed = pack(codes, bits)
    assert packed.shape == (3, 2, packed_length(n, bits))
    back = unpack(packed, bits, n)
    assert back.dtype == torch.uint8 and torch.equal(back.long(), codes)


@pytest.mark.parametrize("bits", BITS)
def test_element_zero_in_low_bits(bits):
    per, _ = group(bits)
    for i in range(per):
        codes = torch.zeros(per, dtype=torch.uint8)
        codes[i] = 1
        word = int.from_bytes(bytes(pack(codes, bits).tolist()), "little")
        assert word == 1 << (i * bits)


@pytest.mark.parametrize("bits", BITS[:-1])
def test_padding_is_zero(bits):
    n = 5
    full = torch.full((n,), (1 << bits) - 1, dtype=torch.uint8)
    packed = pack(full, bits)
    word = int.from_bytes(bytes(packed.tolist()), "little")
    assert word == (1 << (n * bits)) - 1  # every bit past the last code is 0


def test_empty_leading_dims():
    assert pack(torch.zeros(0, 5, dtype=torch.uint8), 4).shape == (0, 3)
    assert unpack(torch.zeros(0, 3, dtype=torch.uint8), 4, 5).shape == (0, 5)
    assert pack(torch.zeros(2, 0, dtype=torch.uint8), 6).shape == (2, 0)


def test_accepts_any_integer_dtype():
    for dt in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        assert pack(torch.tensor([1, 2, 3], dtype=dt), 4).tolist() == [0x21, 0x03]


@pytest.mark.parametrize("codes", [[16], [-1]])
def test_codes_out_of_range(codes):
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 15\]"):
        pack(torch.tensor(codes), 4)


@pytest.mark.parametrize("bad", [torch.tensor([1.0]), torch.tensor([True]), [1, 2]])
def test_codes_must_be_integer_tensor(bad):
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        pack(bad, 4)


def test_pack_scalar_rejected():
    with pytest.raises(ValueError, match="codes must have at least one dimension"):
        pack(torch.tensor(3), 4)


@pytest.mark.parametrize("bits", [0, -4, 9, 16, 4.0, True, "4", None])
def test_unsupported_bits(bits):
    for call in (lambda: pack(u8([1]), bits), lambda: unpack(u8([1]), bits, 1),
                 lambda: packed_length(1, bits)):
        with pytest.raises(ValueError, match="bits must be one of"):
            call()


def test_wrong_packed_length():
    with pytest.raises(ValueError, match=r"packed must be packed_length\(5, 4\) = 3"):
        unpack(u8([1, 2]), 4, 5)
    with pytest.raises(ValueError, match="packed_length"):
        unpack(u8([1, 2, 3, 4]), 6, 4)


def test_packed_must_be_uint8():
    with pytest.raises(TypeError, match="packed must be a uint8 tensor"):
        unpack(torch.tensor([1, 2], dtype=torch.int32), 4, 4)
    with pytest.raises(TypeError, match="packed must be a uint8 tensor"):
        unpack([1, 2], 4, 4)


@pytest.mark.parametrize("n", [-1, 2.0, None])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        unpack(u8([1]), 4, n)


@pytest.mark.parametrize("n,bits,want", [(0, 4, 0), (1, 4, 1), (2, 4, 1), (3, 4, 2),
                                         (1, 6, 3), (4, 6, 3), (5, 6, 6), (9, 1, 2), (5, 2, 2),
                                         (7, 8, 7), (1, 3, 3), (9, 5, 10), (8, 7, 7)])
def test_packed_length(n, bits, want):
    assert packed_length(n, bits) == want


@pytest.mark.parametrize("bits", BITS)
def test_packed_length_counts_whole_groups(bits):
    per, nbytes = group(bits)
    for n in range(3 * per + 1):
        assert packed_length(n, bits) == -(-n // per) * nbytes
        assert packed_length(n, bits) * 8 >= n * bits  # never fewer bytes than bits
