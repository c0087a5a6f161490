"""The deterministic tree allreduce, and ``Collective``: one rank's collective operations with one id sequence.

``tree_allreduce`` sums arrays over the tree of ``collective.tree``: every rank adds its children's partial sums to
its own in rank order and sends the result up; the root's total comes back down unchanged, so every rank ends with
the same bits, whatever order messages arrived in.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sparkdl.collective import tree
from sparkdl.collective.mailbox import Mailbox
from sparkdl.errors import TransportError
from sparkdl.transport.base import Kind, UpdateMessage


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


class Collective:
    """One rank's collective operations over its transport. Every operation takes the next id of one sequence, and
    every rank calls the same operations in the same order, so ids agree without being passed around (the training
    loop, the validation scoring and the launcher's closing barrier share it)."""

    def __init__(self, mailbox: Mailbox, fanout: int = 8, _sequence: list[int] | None = None) -> None:
        tree.children(0, 1, fanout)  # checks the fan-out
        self.mailbox = mailbox
        self.fanout = fanout
        self.rank, self.world = mailbox.transport.rank, mailbox.transport.world
        self._sequence = _sequence if _sequence is not None else [0]

    def with_fanout(self, fanout: int) -> "Collective":
        """The same rank's operations over a tree of another fan-out, on the same id sequence."""
        return Collective(self.mailbox, fanout, self._sequence)

    def _next(self) -> int:
        self._sequence[0] += 1
        return self._sequence[0]

    def allreduce(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Elementwise sums over all ranks, bit-identical on every rank."""
        return tree_allreduce(self.mailbox, self._next(), arrays, self.fanout)

    def barrier(self) -> None:
        """Every rank waits here until all have arrived (an allreduce of nothing; Spark's own barrier polls once a
        second, this takes well under a millisecond)."""
        self.allreduce([np.zeros(1)])

    def gather(self, payload: bytes) -> list[bytes] | None:
        """Every rank's ``payload``, in rank order, on rank 0 (None elsewhere): each rank sends its subtree's
        payloads to its parent (length-prefixed), so rank 0 receives ``world - 1`` payloads over ``fanout`` links."""
        step, transport = self._next(), self.mailbox.transport
        mine = {self.rank: payload}
        kids = tree.children(self.rank, self.world, self.fanout)
        if kids:
            for msg in self.mailbox.take(Kind.GATHER, step, kids).values():
                mine.update(_unframe(msg.payload))
        up = tree.parent(self.rank, self.world, self.fanout)
        if up is not None:
            transport.send(up, UpdateMessage(Kind.GATHER, step, self.rank, self.mailbox.next_id(), _frame(mine)))
            return None
        return [mine[r] for r in range(self.world)]


def _frame(parts: dict[int, bytes]) -> bytes:
    out = bytearray()
    for rank, blob in sorted(parts.items()):
        out += rank.to_bytes(4, "little") + len(blob).to_bytes(8, "little") + blob
    return bytes(out)


def _unframe(data: bytes) -> dict[int, bytes]:
    parts, at = {}, 0
    while at < len(data):
        if at + 12 > len(data):
            raise TransportError("gather payload is truncated")
        rank, n = int.from_bytes(data[at : at + 4], "little"), int.from_bytes(data[at + 4 : at + 12], "little")
        if at + 12 + n > len(data):
            raise TransportError("gather payload is truncated")
        parts[rank] = data[at + 12 : at + 12 + n]
        at += 12 + n
    return parts
