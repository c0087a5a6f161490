"""The contract every transport implements, the message it carries, and its wire framing.

Life of a transport inside one launch (the launcher drives it; masters only ``send`` / ``receive``):

1. ``start()`` binds (a server on the task's own host, an inbox, ...) and returns this worker's address;
2. the launcher exchanges addresses (Spark: ``BarrierTaskContext.allGather``) and rank 0's job secret;
3. ``connect(addresses, secret)``; from here ``send`` / ``receive`` work;
4. ``flush()`` waits until every message sent has reached its peer's inbox, then the launcher's barrier, then
   ``close()`` (idempotent; no thread or port outlives it).

Guarantees: messages on one link (sender -> receiver) arrive in the order they were sent; a receiver accepts a
message only from a peer that presented the job secret; a malformed frame raises ``TransportError`` and is never
delivered in part. Nothing is retried here: a lost peer is a failed launch (and Spark does not retry a failed
barrier stage: the fit fails and must be run again).
"""
from __future__ import annotations

import enum
import queue
import struct
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from sparkdl.errors import TransportError

MAGIC = b"SDL1"
# magic, kind, origin rank, sender rank, step, message id, payload length, crc32 of payload
FRAME = struct.Struct("<4sBiiqQQI")


class Kind(enum.IntEnum):
    UPDATE = 1  # a threshold-encoded gradient update (sharing master)
    REDUCE = 2  # a partial sum travelling up the tree (allreduce)
    BROADCAST = 3  # a result travelling down the tree (allreduce)
    CONTROL = 4  # small protocol values (thresholds, stop flags)
    GATHER = 5  # per-rank payloads travelling up the tree to rank 0 (checkpoints)
    ARTIFACT = 6  # bytes for the launching side (a checkpoint rank 0 hands the driver)


@dataclass(frozen=True)
class UpdateMessage:
    kind: Kind
    step: int
    origin: int  # the rank that created the message
    msg_id: int  # unique per launch; receivers drop duplicates by it
    payload: bytes = b""
    sender: int = -1  # the rank that put it on this link (a relay differs from the origin)

    def to_bytes(self, sender: int) -> bytes:
        header = FRAME.pack(
            MAGIC, int(self.kind), self.origin, sender, self.step, self.msg_id, len(self.payload),
            zlib.crc32(self.payload),
        )  # fmt: skip
        return header + self.payload

    @staticmethod
    def from_bytes(frame: bytes) -> UpdateMessage:
        if len(frame) < FRAME.size:
            raise TransportError(f"truncated frame: {len(frame)} bytes, the header alone is {FRAME.size}")
        magic, kind, origin, sender, step, msg_id, length, crc = FRAME.unpack_from(frame)
        if magic != MAGIC:
            raise TransportError(f"not a sparkdl frame (magic {magic!r}); is another program talking to this port?")
        if length != len(frame) - FRAME.size:
            raise TransportError(f"frame says {length} payload bytes but carries {len(frame) - FRAME.size}")
        payload = bytes(frame[FRAME.size :])
        if zlib.crc32(payload) != crc:
            raise TransportError(f"frame from rank {sender} (origin {origin}, step {step}) fails its checksum")
        try:
            kind = Kind(kind)
        except ValueError:
            raise TransportError(f"unknown message kind {kind} from rank {sender}") from None
        return UpdateMessage(kind, step, origin, msg_id, payload, sender)


def message_id(origin: int, sequence: int) -> int:
    """Unique per launch: the origin rank in the top 24 bits, its own counter below."""
    return (origin << 40) | sequence


@dataclass
class TransportStats:
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0  # frames, headers included
    bytes_received: int = 0
    rejected: int = 0  # incoming calls or frames refused (bad secret, another method, malformed): a trace of probes
    by_peer_sent: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "messages_sent": self.messages_sent,
            "messages_received": self.messages_received,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "rejected": self.rejected,
        }


class Inbox:
    """Received messages waiting for ``receive``, and the abort that wakes a blocked receiver."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._aborted: str | None = None

    def put(self, msg: UpdateMessage) -> None:
        self._queue.put(msg)

    def abort(self, reason: str) -> None:
        self._queue.put(_Abort(reason))

    def receive(self, timeout_s: float) -> list[UpdateMessage]:
        """Everything queued, waiting up to ``timeout_s`` for the first; raises ``TransportError`` once aborted."""
        if self._aborted is not None:
            raise TransportError(self._aborted)
        out: list[UpdateMessage] = []
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return out
        while True:
            if isinstance(item, _Abort):
                self._aborted = item.reason
                raise TransportError(item.reason)
            out.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return out


class _Abort:
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Transport(ABC):
    """One worker's end of the launch's links. Thread-safe for one sender thread and one receiver thread."""

    name = "abstract"

    def __init__(self, rank: int, world: int) -> None:
        self.rank = rank
        self.world = world
        self.stats = TransportStats()

    @abstractmethod
    def start(self) -> str:
        """Bind and return this worker's address."""

    @abstractmethod
    def connect(self, addresses: Sequence[str], secret: str) -> None:
        """Learn every rank's address (index = rank) and the job secret; accept peers that present it."""

    @abstractmethod
    def send(self, to_rank: int, msg: UpdateMessage) -> None:
        """Queue ``msg`` for ``to_rank``; returns at once. Raises ``TransportError`` once the link has failed."""

    @abstractmethod
    def receive(self, timeout_s: float) -> list[UpdateMessage]:
        """Everything that arrived, waiting up to ``timeout_s`` for at least one message; [] on timeout."""

    @abstractmethod
    def flush(self, timeout_s: float) -> None:
        """Block until every message sent so far sits in its receiver's inbox; ``TransportError`` otherwise."""

    @abstractmethod
    def abort(self, reason: str) -> None:
        """Make a blocked or later ``receive`` raise ``TransportError(reason)`` (a sibling worker failed)."""

    @abstractmethod
    def close(self) -> None:
        """Stop serving and release every thread, socket and port. Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_peer(self, to_rank: int) -> None:
        if not 0 <= to_rank < self.world or to_rank == self.rank:
            raise TransportError(f"rank {self.rank} cannot send to rank {to_rank} (world of {self.world})")
