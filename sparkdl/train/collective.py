"""Protocol helpers the masters run on top of any transport: a mailbox and a deterministic tree allreduce.

``Mailbox`` keeps messages that arrived before they were asked for (a fast neighbour may already be a step ahead)
and drops duplicates by message id. ``tree_allreduce`` sums arrays over the tree of ``sharing.tree``: every rank
adds its children's partial sums to its own in rank order and sends the result up; the root's total comes back
down unchanged, so every rank ends with the same bits, whatever order messages arrived in.
"""
from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np

from sparkdl.errors import TransportError
from sparkdl.train.sharing import tree
from sparkdl.transport.base import Kind, Transport, UpdateMessage, message_id


class Mailbox:
    """``on_arrival(msg)`` runs once for every fresh message as it is pulled off the transport (relaying)."""

    def __init__(self, transport: Transport, timeout_s: float, on_arrival=None) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.on_arrival = on_arrival
        self._held: dict[tuple[int, int, int], UpdateMessage] = {}
        self._seen: set[int] = set()
        self._sequence = 0
        self.duplicates = 0

    def next_id(self) -> int:
        self._sequence += 1
        return message_id(self.transport.rank, self._sequence)

    def _pull(self, timeout_s: float) -> list[UpdateMessage]:
        fresh = []
        for msg in self.transport.receive(timeout_s):
            if msg.msg_id in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(msg.msg_id)
            if self.on_arrival is not None:
                self.on_arrival(msg)
            fresh.append(msg)
        return fresh

    def take(self, kind: Kind, step: int, origins: Iterable[int]) -> dict[int, UpdateMessage]:
        """The messages of ``kind`` for ``step`` from each of ``origins``; waits up to ``timeout_s`` for the rest."""
        wanted = set(origins)
        got: dict[int, UpdateMessage] = {}
        deadline = time.monotonic() + self.timeout_s
        while True:
            for origin in list(wanted):
                msg = self._held.pop((int(kind), step, origin), None)
                if msg is not None:
                    got[origin] = msg
                    wanted.discard(origin)
            if not wanted:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(
                    f"rank {self.transport.rank} waited {self.timeout_s:g} s for {kind.name} of step {step} from "
                    f"rank(s) {sorted(wanted)}: they are stuck or gone"
                )
            self.pull(min(left, 1.0))

    def pull(self, timeout_s: float) -> int:
        """Move what arrives within ``timeout_s`` (at least one message, if any comes) into the held set."""
        fresh = self._pull(timeout_s)
        for msg in fresh:
            self._held[(int(msg.kind), msg.step, msg.origin)] = msg
        return len(fresh)

    def drain(self, kind: Kind) -> list[UpdateMessage]:
        """Every held message of ``kind`` (removed from the held set), in (step, origin) order."""
        keys = sorted(k for k in self._held if k[0] == int(kind))
        return [self._held.pop(k) for k in keys]


def pack(arrays: Sequence[np.ndarray]) -> bytes:
    return b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)


def unpack(payload: bytes, like: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Arrays shaped and typed like ``like`` from ``payload``; ``TransportError`` when the sizes disagree."""
    expected = sum(a.nbytes for a in like)
    if len(payload) != expected:
        raise TransportError(f"allreduce payload has {len(payload)} bytes, expected {expected}")
    out, offset = [], 0
    for a in like:
        out.append(np.frombuffer(payload, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape).copy())
        offset += a.nbytes
    return out


def tree_allreduce(mailbox: Mailbox, step: int, arrays: Sequence[np.ndarray], fanout: int) -> list[np.ndarray]:
    """Elementwise sums of ``arrays`` over all ranks, bit-identical on every rank. ``step`` must be unique per call
    within a launch (it keys the messages)."""
    transport = mailbox.transport
    rank, world = transport.rank, transport.world
    total = [np.array(a, copy=True) for a in arrays]
    if world == 1:
        return total
    kids = tree.children(rank, world, fanout)
    if kids:
        got = mailbox.take(Kind.REDUCE, step, kids)
        for child in kids:  # rank order: the sum's rounding does not depend on arrival order
            for acc, part in zip(total, unpack(got[child].payload, total)):
                acc += part
    up = tree.parent(rank, world, fanout)
    if up is not None:
        transport.send(up, UpdateMessage(Kind.REDUCE, step, rank, mailbox.next_id(), pack(total)))
        down = mailbox.take(Kind.BROADCAST, step, [up])[up]
        total = unpack(down.payload, total)
        payload = down.payload
    else:
        payload = pack(total)
    for child in kids:
        transport.send(child, UpdateMessage(Kind.BROADCAST, step, rank, mailbox.next_id(), payload))
    return total
