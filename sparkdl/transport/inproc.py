"""InProcessTransport: workers that are threads of one process, linked by queues.

The test double that ships with the package (``LocalLauncher`` in threads mode). It keeps the wire contract:
messages are framed to bytes and parsed back (so framing errors surface here too), links are ordered, a sender
must present the receiver's job secret, and ``close`` unregisters the inbox.
"""
from __future__ import annotations

import hmac
import threading
from typing import Sequence

from sparkdl.errors import TransportError
from sparkdl.transport.base import Inbox, Transport, UpdateMessage


class InProcessNetwork:
    """The switchboard of one launch: address -> (inbox, secret). Create one per launch and pass it explicitly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inboxes: dict[str, InProcessTransport] = {}
        self._next = 0

    def register(self, transport: InProcessTransport) -> str:
        with self._lock:
            address = f"inproc:{self._next}"
            self._next += 1
            self._inboxes[address] = transport
            return address

    def unregister(self, address: str) -> None:
        with self._lock:
            self._inboxes.pop(address, None)

    def lookup(self, address: str) -> InProcessTransport:
        with self._lock:
            peer = self._inboxes.get(address)
        if peer is None:
            raise TransportError(f"no worker listens at {address} (closed, or never started)")
        return peer


class InProcessTransport(Transport):
    name = "inproc"

    def __init__(self, rank: int, world: int, network: InProcessNetwork) -> None:
        super().__init__(rank, world)
        self._network = network
        self._inbox = Inbox()
        self._address: str | None = None
        self._peers: list[str] = []
        self._secret: str | None = None
        self._closed = False

    def start(self) -> str:
        self._address = self._network.register(self)
        return self._address

    def connect(self, addresses: Sequence[str], secret: str) -> None:
        if len(addresses) != self.world:
            raise TransportError(f"expected {self.world} addresses, got {len(addresses)}")
        self._peers = list(addresses)
        self._secret = secret

    def _deliver(self, frame: bytes, secret: str | None) -> None:
        """Called by the sending side; runs the receiver's checks."""
        if self._closed:
            raise TransportError(f"rank {self.rank} has closed its transport")
        if self._secret is None or secret is None or not hmac.compare_digest(secret, self._secret):
            self.stats.rejected += 1
            raise TransportError(f"rank {self.rank} rejected a message: wrong or missing job secret")
        msg = UpdateMessage.from_bytes(frame)
        self.stats.messages_received += 1
        self.stats.bytes_received += len(frame)
        self._inbox.put(msg)

    def send(self, to_rank: int, msg: UpdateMessage) -> None:
        self._check_peer(to_rank)
        if not self._peers:
            raise TransportError("send before connect(): the launcher has not exchanged addresses yet")
        frame = msg.to_bytes(self.rank)
        self._network.lookup(self._peers[to_rank])._deliver(frame, self._secret)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(frame)

    def receive(self, timeout_s: float) -> list[UpdateMessage]:
        return self._inbox.receive(timeout_s)

    def flush(self, timeout_s: float) -> None:
        return None  # delivery is synchronous

    def abort(self, reason: str) -> None:
        self._inbox.abort(reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._address is not None:
            self._network.unregister(self._address)
