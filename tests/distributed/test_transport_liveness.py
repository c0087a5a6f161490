"""gRPC liveness: a peer that stops answering (frozen with SIGSTOP: its sockets stay open, nothing is closed or
reset, as with a partitioned host) breaks the links within 2 x keepalive_s, whatever the message cadence, on both
sides of a link — the rank that sends to it and the rank that only receives from it. Without keepalive both would
wait receive_timeout_s (600 s by default)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sparkdl.errors import TransportError
from sparkdl.transport.base import Kind, UpdateMessage
from sparkdl.transport.grpc import GrpcTransport

KEEPALIVE_S = 1.0

# rank 1 in its own process: links to rank 0, sends one message, then waits to be frozen
PEER = textwrap.dedent("""
    import sys, time
    from sparkdl.transport.base import Kind, UpdateMessage
    from sparkdl.transport.grpc import GrpcTransport
    t = GrpcTransport(1, 2, keepalive_s=%r, connect_timeout_s=10)
    me = t.start()
    print(me, flush=True)
    peer = sys.stdin.readline().strip()
    t.connect([peer, me], "s3cret")
    t.send(0, UpdateMessage(Kind.UPDATE, 0, 1, 1, b"hello"))
    t.flush(10)
    print("sent", flush=True)
    time.sleep(600)
""" % KEEPALIVE_S)


@pytest.mark.parametrize("rank0_sends", [True, False], ids=["sender", "receiver-only"])
def test_a_frozen_peer_breaks_the_link_within_twice_the_keepalive(rank0_sends):
    rank0 = GrpcTransport(0, 2, keepalive_s=KEEPALIVE_S, connect_timeout_s=10)
    peer = subprocess.Popen([sys.executable, "-c", PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        me = rank0.start()
        other = peer.stdout.readline().strip()
        peer.stdin.write(me + "\n")
        peer.stdin.flush()
        rank0.connect([me, other], "s3cret")
        assert peer.stdout.readline().strip() == "sent"
        assert [m.payload for m in rank0.receive(10)] == [b"hello"]
        if rank0_sends:
            rank0.send(1, UpdateMessage(Kind.UPDATE, 0, 0, 2, b"to you"))
            rank0.flush(10)
        os.kill(peer.pid, signal.SIGSTOP)  # frozen: no reset, no FIN; only unanswered pings tell
        frozen = time.monotonic()
        with pytest.raises(TransportError, match=r"rank 1|link"):
            while time.monotonic() - frozen < 60:
                rank0.receive(0.5)
        took = time.monotonic() - frozen
        # 2 x keepalive, plus gRPC's timer granularity and this loaded machine's scheduling
        assert took < 2 * KEEPALIVE_S + 8, took
    finally:
        os.kill(peer.pid, signal.SIGKILL)
        peer.wait()
        rank0.close()
