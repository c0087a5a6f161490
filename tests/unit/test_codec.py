"""Threshold codec: round trips (property-based, both formats), format choice, malformed messages."""
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkdl.errors import ConfigError, TransportError
from sparkdl.train.exchange.sharing import codec


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(1, 3000),
    density=st.sampled_from([0.0, 1e-3, 0.01, 0.05, 0.2, 0.6, 1.0]),
    tau=st.floats(1e-6, 10.0),
    fmt=st.sampled_from([None, codec.SPARSE, codec.BITMAP]),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip(length, density, tau, fmt, seed):
    rng = np.random.default_rng(seed)
    residual = (rng.standard_normal(length) * tau * 0.5).astype(np.float32)  # mostly below tau ...
    hot = rng.random(length) < density
    residual[hot] = (np.sign(rng.standard_normal(hot.sum())) * tau * rng.uniform(1.0, 4.0, hot.sum())).astype(np.float32)
    before = residual.copy()
    t = np.float32(tau)
    expected_up, expected_down = np.flatnonzero(before >= t), np.flatnonzero(before <= -t)
    message, sent = codec.encode(residual, tau, step=7, origin=3, msg_id=99, fmt=fmt)
    dec = codec.decode(message)
    up, down = dec.indices()
    assert np.array_equal(up, expected_up) and np.array_equal(down, expected_down)
    assert sent == dec.count == len(up) + len(down)
    assert (dec.step, dec.origin, dec.msg_id, dec.length) == (7, 3, 99, length)
    assert dec.tau == float(t)
    if fmt is None:  # DL4J's rule: bitmap above length / 16 entries
        assert dec.fmt == (codec.BITMAP if sent > length / 16 else codec.SPARSE)
    # the sent part left the residual: exactly +-tau per sent entry, the rest untouched
    sent_dense = dec.dense()
    assert set(np.unique(sent_dense)) <= {np.float32(0), t, -t}
    np.testing.assert_array_equal(residual[sent_dense == 0], before[sent_dense == 0])
    np.testing.assert_allclose(residual + sent_dense, before, rtol=0, atol=float(t) * 1e-6 + 1e-30)
    assert np.all(np.abs(residual[sent_dense == 0]) < t)


def test_smaller_format_is_chosen():
    r = np.zeros(1600, np.float32)
    r[:100] = 1.0  # exactly length / 16: sparse (400 B) == bitmap (400 B) -> sparse
    assert codec.decode(codec.encode(r.copy(), 0.5)[0]).fmt == codec.SPARSE
    r[:101] = 1.0
    msg, _ = codec.encode(r.copy(), 0.5)
    assert codec.decode(msg).fmt == codec.BITMAP and len(msg) == codec.HEADER.size + 2 * 200


def _message(fmt=None, length=1000):
    r = np.zeros(length, np.float32)
    r[::3] = 1.0 if fmt == codec.BITMAP else 0.0
    r[5] = -2.0
    return codec.encode(r, 0.5, fmt=fmt)[0]


def _recrc(msg: bytes) -> bytes:
    """Rewrite the header's checksum so only the planted defect remains."""
    head = list(codec.HEADER.unpack_from(msg))
    body = msg[codec.HEADER.size :]
    head[-1] = zlib.crc32(body)
    return codec.HEADER.pack(*head) + body


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda m: m[:20], "truncated"),
        (lambda m: m[:-4], "body bytes"),
        (lambda m: m[:-1] + bytes([m[-1] ^ 0xFF]), "checksum"),
        (lambda m: b"NOPE" + m[4:], "magic"),
        (lambda m: m[:4] + bytes([9]) + m[5:], "unknown update format"),
        (lambda m: _recrc(m[: codec.HEADER.size] + struct.pack("<i", 5000) + m[codec.HEADER.size + 4 :]), "outside"),
    ],
)
def test_malformed_sparse_messages(mangle, message):
    with pytest.raises(TransportError, match=message):
        codec.decode(mangle(_message(codec.SPARSE)))


def test_malformed_bitmap_messages():
    good = _message(codec.BITMAP, length=1001)  # 126 bytes per plane: 7 bits past the end
    half = (len(good) - codec.HEADER.size) // 2
    both = bytearray(good)
    both[codec.HEADER.size + half] |= 1  # mark parameter 0 as -tau too (it is +tau)
    with pytest.raises(TransportError, match="both"):
        codec.decode(_recrc(bytes(both)))
    past = bytearray(good)
    past[codec.HEADER.size + half - 1] |= 0x80  # bit 7 of the plane's last byte is parameter 1007
    with pytest.raises(TransportError, match="past its length"):
        codec.decode(_recrc(bytes(past)))
    head = list(codec.HEADER.unpack_from(good))
    head[4] += 1  # claimed count
    with pytest.raises(TransportError, match="says"):
        codec.decode(codec.HEADER.pack(*head) + good[codec.HEADER.size :])


def test_bad_arguments():
    with pytest.raises(ConfigError, match="positive"):
        codec.encode(np.ones(4, np.float32), 0.0)
    with pytest.raises(ConfigError, match="1-D float32"):
        codec.encode(np.ones(4), 0.1)
