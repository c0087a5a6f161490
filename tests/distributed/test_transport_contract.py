"""One contract, every transport: ordering per link, authentication, framing errors, flush, abort, shutdown."""
import threading
import time

import numpy as np
import pytest

from sparkdl.config import TransportConfig
from sparkdl.errors import ConfigError, TransportError, WorkerFailedError
from sparkdl.launch.local import LocalLauncher
from sparkdl.collective.allreduce import Mailbox, pack, tree_allreduce, unpack
from sparkdl.transport import build_transport
from sparkdl.transport.base import FRAME, Kind, UpdateMessage
from sparkdl.transport.inproc import InProcessNetwork

TRANSPORTS = ["inproc", "grpc"]


def _pair(name, world=2, secrets=None):
    secrets = secrets or ["s3cret"] * world
    network = InProcessNetwork()
    ts = [build_transport(TransportConfig(name=name, connect_timeout_s=5), r, world, network=network) for r in range(world)]
    addresses = [t.start() for t in ts]
    for t, secret in zip(ts, secrets):
        t.connect(addresses, secret)
    return ts


def _drain(t, n, timeout=10.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += t.receive(0.2)
    return got


@pytest.mark.parametrize("name", TRANSPORTS)
def test_messages_arrive_in_order_per_link_and_intact(name):
    a, b, c = _pair(name, world=3)
    try:
        rng = np.random.default_rng(0)
        payloads = [rng.bytes(int(n)) for n in rng.integers(0, 5000, 200)]
        for i, p in enumerate(payloads):
            a.send(2, UpdateMessage(Kind.UPDATE, i, 0, i, p))
            b.send(2, UpdateMessage(Kind.UPDATE, i, 1, 10_000 + i, p[::-1]))
        a.flush(10)
        b.flush(10)
        got = _drain(c, 400)
        from_a = [m for m in got if m.sender == 0]
        from_b = [m for m in got if m.sender == 1]
        assert [m.step for m in from_a] == list(range(200)) and [m.payload for m in from_a] == payloads
        assert [m.payload for m in from_b] == [p[::-1] for p in payloads]
        assert c.stats.messages_received == 400 and a.stats.messages_sent == 200
    finally:
        for t in (a, b, c):
            t.close()


@pytest.mark.parametrize("name", TRANSPORTS)
def test_a_peer_without_the_secret_is_rejected(name):
    a, b = _pair(name, secrets=("right", "wrong"))
    try:
        with pytest.raises(TransportError, match="secret"):
            b.send(0, UpdateMessage(Kind.UPDATE, 0, 1, 1, b"x"))
            b.flush(5)
        assert a.receive(0.3) == []
        assert a.stats.rejected >= 1
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("name", TRANSPORTS)
def test_abort_wakes_a_blocked_receive(name):
    a, b = _pair(name)
    try:
        threading.Timer(0.2, a.abort, args=("rank 1 failed: boom",)).start()
        start = time.monotonic()
        with pytest.raises(TransportError, match="boom"):
            a.receive(30)
        assert time.monotonic() - start < 5
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("name", TRANSPORTS)
def test_close_is_clean_and_idempotent(name):
    before = {t.name for t in threading.enumerate()}
    a, b = _pair(name)
    a.send(1, UpdateMessage(Kind.CONTROL, 0, 0, 1, b"hello"))
    a.flush(5)
    assert [m.payload for m in _drain(b, 1)] == [b"hello"]
    for t in (a, b, a, b):
        t.close()
    time.sleep(0.2)
    leaked = {t.name for t in threading.enumerate()} - before
    assert not {n for n in leaked if n.startswith("sparkdl")}, leaked
    with pytest.raises(TransportError):
        a.send(1, UpdateMessage(Kind.CONTROL, 0, 0, 2, b"late"))


def test_grpc_refuses_an_oversized_message_naming_the_limit():
    a, b = (build_transport(TransportConfig(max_message_bytes=4096), r, 2) for r in range(2))
    try:
        addresses = [a.start(), b.start()]
        a.connect(addresses, "k")
        b.connect(addresses, "k")
        with pytest.raises(TransportError, match="max_message_bytes=4,096"):
            a.send(1, UpdateMessage(Kind.UPDATE, 0, 0, 1, bytes(5000)))
    finally:
        a.close()
        b.close()


def test_grpc_binds_the_given_host_only():
    t = build_transport(TransportConfig(), 0, 1, host="127.0.0.1")
    try:
        assert t.start().startswith("127.0.0.1:")
    finally:
        t.close()


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda f: f[:10], "truncated"),
        (lambda f: b"XXXX" + f[4:], "magic"),
        (lambda f: f + b"extra", "payload bytes"),
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), "checksum"),
        (lambda f: f[:4] + bytes([99]) + f[5:], "unknown message kind"),
    ],
)
def test_malformed_frames_raise_transport_error(mangle, message):
    frame = UpdateMessage(Kind.UPDATE, 3, 1, 7, b"payload!").to_bytes(sender=1)
    assert UpdateMessage.from_bytes(frame).payload == b"payload!"
    with pytest.raises(TransportError, match=message):
        UpdateMessage.from_bytes(mangle(frame))
    assert FRAME.size == 41  # magic, kind, origin, sender, step, id, length, crc32


def test_aeron_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="aeron transport is not available.*Python 3.11"):
        build_transport(TransportConfig(name="aeron"), 0, 1)


def test_pack_unpack_round_trip_and_size_check():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.5, 2.5])]
    back = unpack(pack(arrays), arrays)
    assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(arrays, back))
    with pytest.raises(TransportError, match="expected 40"):
        unpack(b"\0" * 8, arrays)


def _allreduce(ctx, rows):
    rng = np.random.default_rng(ctx.rank)
    out = []
    for step in range(5):
        vec = rng.standard_normal(1000).astype(np.float32)
        out.append(tree_allreduce(ctx.mailbox, step, [vec, np.array([float(ctx.rank)])], fanout=2))
    return [[a.tobytes() for a in step] for step in out]


@pytest.mark.parametrize("name, world", [("inproc", 1), ("inproc", 7), ("grpc", 5)])
def test_tree_allreduce_gives_every_rank_the_same_bits(name, world):
    results = LocalLauncher(TransportConfig(name=name)).run(_allreduce, [[]] * world)
    assert all(r == results[0] for r in results)  # bit-identical everywhere
    expected = sum(np.random.default_rng(r).standard_normal(1000).astype(np.float64) for r in range(world))
    first = np.frombuffer(results[0][0][0], dtype=np.float32)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    assert np.frombuffer(results[0][0][1])[0] == sum(range(world))


def _fails_on_rank_2(ctx, rows):
    if ctx.rank == 2:
        raise ValueError("bad shard")
    Mailbox(ctx.transport, 30).take(Kind.CONTROL, 0, [2])  # would wait 30 s without the abort


def test_a_failing_rank_fails_the_launch_promptly_naming_it():
    start = time.monotonic()
    with pytest.raises(WorkerFailedError, match="rank 2 failed: ValueError: bad shard"):
        LocalLauncher().run(_fails_on_rank_2, [[]] * 4)
    assert time.monotonic() - start < 10


def _sum_rows(ctx, rows):
    total = float(sum(rows))
    return float(tree_allreduce(ctx.mailbox, 0, [np.array([total])], fanout=8)[0][0])


def test_processes_over_grpc():
    out = LocalLauncher(TransportConfig(name="grpc"), mode="processes").run(_sum_rows, [[1, 2], [3], [4, 5, 6]])
    assert out == [21.0, 21.0, 21.0]
