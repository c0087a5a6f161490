"""Threshold codec: round trips (property-based, every format), format choice, sizes, malformed messages (planted
defects and fuzzed bytes: always ``TransportError``, never a partial apply)."""
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkdl.errors import ConfigError, TransportError
from sparkdl.train.exchange.sharing import codec

FORMATS = [codec.SPARSE, codec.BITMAP, codec.ELIAS_FANO]


def _residual(length, density, tau, seed):
    rng = np.random.default_rng(seed)
    residual = (rng.standard_normal(length) * tau * 0.5).astype(np.float32)  # mostly below tau ...
    hot = rng.random(length) < density
    residual[hot] = (np.sign(rng.standard_normal(hot.sum())) * tau * rng.uniform(1.0, 4.0, hot.sum())).astype(np.float32)
    return residual


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 3000),
    density=st.sampled_from([0.0, 1e-3, 0.01, 0.05, 0.2, 0.6, 1.0]),
    tau=st.floats(1e-6, 10.0),
    fmt=st.sampled_from([None, *FORMATS]),
    seed=st.integers(0, 2**31 - 1),
    step=st.sampled_from([0, 7, 300, 2**40]),
)
def test_round_trip(length, density, tau, fmt, seed, step):
    residual = _residual(length, density, tau, seed)
    before = residual.copy()
    t = np.float32(tau)
    expected_up, expected_down = np.flatnonzero(before >= t), np.flatnonzero(before <= -t)
    message, sent = codec.encode(residual, tau, step=step, origin=3, fmt=fmt)
    dec = codec.decode(message)
    up, down = dec.indices()
    assert np.array_equal(up, expected_up) and np.array_equal(down, expected_down)
    assert sent == dec.count == len(up) + len(down)
    assert (dec.step, dec.origin, dec.length) == (step, 3, length)
    assert dec.tau == float(t)
    assert dec.fmt == (fmt or codec.best_format(length, sent))
    assert len(message) == codec.header_size(length, sent, step, 3) + codec.body_size(dec.fmt, length, sent)
    # the sent part left the residual: exactly +-tau per sent entry, the rest untouched
    sent_dense = dec.dense()
    assert set(np.unique(sent_dense)) <= {np.float32(0), t, -t}
    np.testing.assert_array_equal(residual[sent_dense == 0], before[sent_dense == 0])
    np.testing.assert_allclose(residual + sent_dense, before, rtol=0, atol=float(t) * 1e-6 + 1e-30)
    assert np.all(np.abs(residual[sent_dense == 0]) < t)
    # encode_indices writes the same message from the indices
    assert codec.encode_indices(length, up, down, tau, step, 3, fmt=dec.fmt) == message


@pytest.mark.parametrize("length", [1, 7, 8, 9, 1000, (1 << 17) + 3, 300_001])
@pytest.mark.parametrize("density", [0.0, 1e-4, 0.005, 0.03, 0.5])
def test_round_trip_across_chunks_every_format(length, density):
    """Lengths around the kernels' chunk size, dense and sparse chunks mixed (``threshold_planes``)."""
    for fmt in FORMATS:
        residual = _residual(length, density, 0.01, seed=length)
        residual[: length // 3] *= 8  # the first third: dense chunks; the rest sparse
        before = residual.copy()
        message, sent = codec.encode(residual, 0.01, fmt=fmt)
        dec = codec.decode(message)
        out = np.zeros(length, np.float32)
        dec.add_into(out)
        np.testing.assert_allclose(out + residual, before, rtol=0, atol=1e-8)
        assert dec.count == sent == int(np.count_nonzero(out))


def test_smallest_format_is_chosen_and_sizes():
    length = 1_000_000
    # elias-fano: ~log2(length / count) + 3 bits an entry; at 1e-3: 1,620 body bytes vs 4,000 as int32 indices
    assert codec.best_format(length, 1000) == codec.ELIAS_FANO
    assert codec.body_size(codec.ELIAS_FANO, length, 1000) == (1000 * 9 + 1000 + (999_999 >> 9) + 1000 + 7) // 8 == 1620
    assert codec.body_size(codec.ELIAS_FANO, length, 0) == 0
    # above INDEX_DENSITY of the entries: the bitmap, whatever the sizes
    assert codec.best_format(length, int(length * codec.INDEX_DENSITY) + 1) == codec.BITMAP
    assert codec.best_format(length, int(length * codec.INDEX_DENSITY)) == codec.ELIAS_FANO
    # one entry in a tiny vector: the bitmap's 2 bytes beat elias-fano's and sparse's
    assert codec.best_format(10, 1) == codec.BITMAP
    # a 1 M-parameter message at step < 16,384: a 19-byte header (the first format's took 48)
    assert codec.header_size(1_000_000, 1000, 16_383, 7) == 19


def _message(fmt, length=1000):
    r = np.zeros(length, np.float32)
    r[::3] = 1.0 if fmt == codec.BITMAP else 0.0
    r[5] = -2.0
    r[40 % length] = 2.0
    return codec.encode(r, 0.5, step=12, origin=2, fmt=fmt)[0]


def _fields(msg: bytes):
    """(prefix fields, [length, count, step, origin], body)."""
    magic, fmt, tau, crc = codec.PREFIX.unpack_from(msg)
    at, values = codec.PREFIX.size, []
    for _ in range(4):
        v, at = codec._read_uvarint(msg, at)
        values.append(v)
    return (magic, fmt, tau), values, msg[at:]


def _rebuild(prefix, values, body, fix_crc=True) -> bytes:
    rest = b"".join(codec._uvarint(v) for v in values) + body
    magic, fmt, tau = prefix
    return codec.PREFIX.pack(magic, fmt, tau, zlib.crc32(rest) if fix_crc else 0) + rest


def _with(msg, fmt=None, values=None, body=None, tau=None):
    """The message with one planted defect and a correct checksum (only the defect remains)."""
    (magic, f, t), v, b = _fields(msg)
    return _rebuild((magic, f if fmt is None else fmt, t if tau is None else tau), values or v,
                    b if body is None else body)  # fmt: skip


def _flip(body: bytes, byte: int, mask: int) -> bytes:
    out = bytearray(body)
    out[byte] ^= mask
    return bytes(out)


@pytest.mark.parametrize("fmt", FORMATS)
def test_common_malformations(fmt):
    good = _message(fmt)
    (magic, f, t), values, body = _fields(good)
    cases = [
        (good[:5], "truncated"),
        (_with(good, body=body[:-1]), "body bytes"),
        (_with(good, body=body + b"\x00"), "body bytes"),
        (good[:-1] + bytes([good[-1] ^ 0x01]), "checksum"),
        (b"NO" + good[2:], "magic"),
        (_with(good, fmt=9), "unknown update format"),
        (_with(good, tau=float("nan")), "invalid threshold"),
        (_with(good, tau=-1.0), "invalid threshold"),
        (_with(good, values=[0, *values[1:]]), "claims"),
        (_with(good, values=[values[0], values[0] + 1, *values[2:]]), "claims"),
        (codec.PREFIX.pack(magic, f, t, zlib.crc32(b"\xff" * 11)) + b"\xff" * 11, "10 bytes"),
        (codec.PREFIX.pack(magic, f, t, zlib.crc32(b"\x80")) + b"\x80", "ends inside"),
    ]
    for msg, match in cases:
        with pytest.raises(TransportError, match=match):
            codec.decode(msg)


def test_malformed_sparse():
    good = _message(codec.SPARSE)
    _, values, body = _fields(good)
    idx = np.frombuffer(body, "<i4").copy()
    out_of_range = idx.copy()
    out_of_range[0] = values[0] + 1
    with pytest.raises(TransportError, match="outside"):
        codec.decode(_with(good, body=out_of_range.tobytes()))
    repeated = idx.copy()
    repeated[1] = -repeated[0]  # the same parameter +tau and -tau
    with pytest.raises(TransportError, match="repeats"):
        codec.decode(_with(good, body=repeated.tobytes()))
    zero = idx.copy()
    zero[0] = 0
    with pytest.raises(TransportError, match="outside"):
        codec.decode(_with(good, body=zero.tobytes()))


def test_malformed_bitmap():
    good = _message(codec.BITMAP, length=1001)  # 126 bytes per plane: 7 bits past the end
    _, values, body = _fields(good)
    half = len(body) // 2
    with pytest.raises(TransportError, match="both"):  # parameter 3 is +tau; mark it -tau too, and count it
        codec.decode(_with(good, body=_flip(body, half, 0x08), values=[values[0], values[1] + 1, *values[2:]]))
    with pytest.raises(TransportError, match="past its length"):  # bit 7 of the last byte is parameter 1007
        codec.decode(_with(good, body=_flip(body, half - 1, 0x80), values=[values[0], values[1] + 1, *values[2:]]))
    with pytest.raises(TransportError, match="says"):
        codec.decode(_with(good, values=[values[0], values[1] + 1, *values[2:]]))


def _ef_bits(body: bytes, nbits: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(body, np.uint8), count=nbits, bitorder="little")


def _ef_body(bits: np.ndarray) -> bytes:
    return np.packbits(bits, bitorder="little").tobytes()


def test_malformed_elias_fano():
    length = 1000
    good = _message(codec.ELIAS_FANO, length)  # entries 5 (-tau) and 40 (+tau): 8 low bits each
    _, values, body = _fields(good)
    count = values[1]
    low = codec._low_bits(length, count)
    nbits = codec._ef_bits(length, count, low)
    upper_at, upper_bits = count * low, count + ((length - 1) >> low)
    bits = _ef_bits(body, nbits)
    third = bits.copy()
    third[upper_at + 2] = 1  # a third unary bit
    with pytest.raises(TransportError, match="upper bitmap holds"):
        codec.decode(_with(good, body=_ef_body(third)))
    padded = bytearray(body)
    padded[-1] |= 0x80  # nbits = 2 * 8 + 2 + 3 + 2 = 23: bit 23 is padding
    with pytest.raises(TransportError, match="past its end"):
        codec.decode(_with(good, body=bytes(padded)))
    same = bits.copy()
    same[low : 2 * low] = same[:low]  # entry 1's low part = entry 0's, both high parts 0: index 5 twice
    with pytest.raises(TransportError, match="repeats"):
        codec.decode(_with(good, body=_ef_body(same)))
    far = bits.copy()
    far[upper_at : upper_at + upper_bits] = 0
    far[upper_at] = 1  # entry 0: high 0
    far[upper_at + upper_bits - 1] = 1  # entry 1: high (length - 1) >> low ...
    far[low : 2 * low] = 1  # ... and every low bit set: 3 * 256 + 255 >= 1000
    with pytest.raises(TransportError, match="outside"):
        codec.decode(_with(good, body=_ef_body(far)))


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_fuzzed_messages_never_apply_partly(fmt, data):
    """Any byte flipped, inserted or cut: ``decode`` raises ``TransportError`` or returns a well-formed update (a
    flip the checksum cannot see is re-checksummed here, so the body checks are what is fuzzed)."""
    good = _message(fmt, length=data.draw(st.sampled_from([17, 1000, 4099])))
    mutated = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            mutated[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del mutated[at]
        else:
            mutated.insert(at, data.draw(st.integers(0, 255)))
    candidates = [bytes(mutated)]
    if len(mutated) >= codec.PREFIX.size:  # the same defect behind a valid checksum
        rest = bytes(mutated[codec.PREFIX.size :])
        magic, f, t, _ = codec.PREFIX.unpack_from(bytes(mutated))
        candidates.append(codec.PREFIX.pack(magic, f, t, zlib.crc32(rest)) + rest)
    for msg in candidates:
        try:
            dec = codec.decode(msg)
        except TransportError:
            continue
        if dec.length > 10**6:
            continue  # a mangled length that happens to fit: not worth allocating here
        out = np.zeros(dec.length, np.float32)
        dec.add_into(out)  # a message that decodes is a valid update: unique indices, in range, +-tau
        assert int(np.count_nonzero(out)) == dec.count
        assert set(np.unique(out)) <= {np.float32(0), np.float32(dec.tau), -np.float32(dec.tau)}


def test_bad_arguments():
    with pytest.raises(ConfigError, match="positive"):
        codec.encode(np.ones(4, np.float32), 0.0)
    with pytest.raises(ConfigError, match="1-D float32"):
        codec.encode(np.ones(4), 0.1)
    with pytest.raises(ConfigError, match="unknown codec format"):
        codec.encode(np.ones(4, np.float32), 0.1, fmt=7)
    with pytest.raises(ConfigError, match="both"):
        codec.encode_indices(10, np.array([1]), np.array([1]), 0.1, fmt=codec.BITMAP)
