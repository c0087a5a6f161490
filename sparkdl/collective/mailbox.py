"""Messages held until asked for: a fast neighbour may already be a step ahead; duplicates dropped by message id."""
from __future__ import annotations

import time
from typing import Iterable

from sparkdl.errors import TransportError
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
