"""GrpcTransport: the production transport. One bidirectional stream per link, raw bytes, no generated code.

- Server: a generic handler for ``/sparkdl.Transport/Stream`` bound to the task's own host on an ephemeral port
  (never 0.0.0.0). A stream must carry the job secret in its metadata (``sparkdl-secret``) or it is aborted with
  ``UNAUTHENTICATED`` before any frame is read (a call that comes before this rank's own ``connect`` waits for
  it, up to ``connect_timeout_s``); a call to any other method is refused with ``UNIMPLEMENTED``. Both count in
  ``stats.rejected`` (the masters sum it over the ranks as ``transport_rejected``). Each frame is parsed (magic,
  length, checksum) before it is put in the inbox, and acknowledged with one byte on the response stream; a
  malformed frame aborts the stream with ``INVALID_ARGUMENT`` (counted too) and nothing of it is delivered.
- Client: one stream per peer, opened on the first send (which waits for ``connect`` if the launcher is still
  exchanging addresses) (after ``grpc.channel_ready_future`` within
  ``connect_timeout_s``); ``send`` only queues. A reader thread counts acknowledgements, so ``flush`` knows when
  every frame reached its peer's inbox, and turns a failed stream into a ``TransportError`` for the next call.
- Limits: ``max_message_bytes`` both ways (a larger frame is refused at ``send`` with the limit named), a stream
  deadline of ``stream_deadline_s``.
- Liveness: HTTP/2 keepalive pings both ways every ``keepalive_s`` of silence, answered within ``keepalive_s``: a
  peer that is partitioned away or frozen breaks its links within ``2 x keepalive_s``; a broken outgoing link is a
  ``TransportError`` at the next receive/send, a broken incoming stream aborts the inbox (naming the peer), so the
  attempt fails in bounded time instead of waiting ``receive_timeout_s``.
- ``close`` ends the request streams, waits for the readers, closes channels and stops the server: no thread or
  port outlives it.
"""
from __future__ import annotations

import hmac
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import grpc

from sparkdl.config import TransportConfig
from sparkdl.errors import TransportError
from sparkdl.transport.base import Inbox, Transport, UpdateMessage

SERVICE = "sparkdl.Transport"
METHOD = f"/{SERVICE}/Stream"
SECRET_KEY = "sparkdl-secret"
ACK = b"\x01"


class _Link:
    """The client end of one stream to one peer."""

    def __init__(self, owner: GrpcTransport, peer: int, address: str) -> None:
        self.peer = peer
        self.address = address
        self.channel = grpc.insecure_channel(address, options=owner._options)
        try:
            grpc.channel_ready_future(self.channel).result(timeout=owner.connect_timeout_s)
        except grpc.FutureTimeoutError:
            self.channel.close()
            raise TransportError(
                f"rank {owner.rank} cannot reach rank {peer} at {address} within {owner.connect_timeout_s:g} s "
                "(is a firewall between executors, or did that task die?)"
            ) from None
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.sent = 0
        self.acked = 0
        self.error: TransportError | None = None
        self.closing = False
        stream = self.channel.stream_stream(METHOD, request_serializer=None, response_deserializer=None)
        self.call = stream(
            self._frames(), metadata=((SECRET_KEY, owner._secret or ""),), timeout=owner.stream_deadline_s
        )
        self.reader = threading.Thread(
            target=self._read_acks, args=(owner.rank,), name=f"sparkdl-grpc-acks-{owner.rank}->{peer}", daemon=True
        )
        self.reader.start()

    def _frames(self):
        while True:
            frame = self.requests.get()
            if frame is None:
                return
            yield frame

    def _read_acks(self, rank: int) -> None:
        try:
            for _ack in self.call:
                with self.cond:
                    self.acked += 1
                    self.cond.notify_all()
        except grpc.RpcError as e:
            if not self.closing:
                self.error = TransportError(
                    f"link rank {rank} -> rank {self.peer} ({self.address}) failed: {e.code().name}: {e.details()}"
                )
        finally:
            with self.cond:
                self.closing = True
                self.cond.notify_all()

    def send(self, frame: bytes) -> None:
        if self.error is not None:
            raise self.error
        with self.cond:
            self.sent += 1
        self.requests.put(frame)

    def wait_acked(self, deadline: float) -> None:
        with self.cond:
            while self.acked < self.sent and self.error is None and not self.closing:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TransportError(
                        f"rank {self.peer} ({self.address}) acknowledged {self.acked} of {self.sent} messages in time"
                    )
                self.cond.wait(left)
        if self.error is not None:
            raise self.error
        if self.acked < self.sent:
            raise TransportError(f"the stream to rank {self.peer} ({self.address}) ended with messages unacknowledged")

    def close(self) -> None:
        self.requests.put(None)
        self.reader.join(timeout=10)
        if self.reader.is_alive():
            self.closing = True
            self.call.cancel()
            self.reader.join(timeout=5)
        self.channel.close()


class _Handler(grpc.GenericRpcHandler):
    """The one method, and a count of calls to any other (a probe of the port: answered ``UNIMPLEMENTED``)."""

    def __init__(self, transport: GrpcTransport) -> None:
        self._transport = transport
        self._stream = grpc.stream_stream_rpc_method_handler(transport._serve)

    def service(self, handler_call_details):
        if handler_call_details.method == METHOD:
            return self._stream
        self._transport._count_rejected()
        return None


class GrpcTransport(Transport):
    name = "grpc"

    def __init__(
        self,
        rank: int,
        world: int,
        host: str = "127.0.0.1",
        max_message_bytes: int = TransportConfig.max_message_bytes,
        connect_timeout_s: float = TransportConfig.connect_timeout_s,
        stream_deadline_s: float = 24 * 3600.0,
        keepalive_s: float = TransportConfig.keepalive_s,
    ) -> None:
        super().__init__(rank, world)
        self.host = host
        self.max_message_bytes = max_message_bytes
        self.connect_timeout_s = connect_timeout_s
        self.stream_deadline_s = stream_deadline_s
        keepalive_ms = max(1, int(keepalive_s * 1000))
        limits = [("grpc.max_send_message_length", max_message_bytes),
                  ("grpc.max_receive_message_length", max_message_bytes)]  # fmt: skip
        # HTTP/2 pings every keepalive_s on an idle link, each to be answered within keepalive_s: a partitioned or
        # frozen peer breaks the link (a TransportError) in at most twice that, not after receive_timeout_s
        pings = [("grpc.keepalive_time_ms", keepalive_ms), ("grpc.keepalive_timeout_ms", keepalive_ms),
                 ("grpc.keepalive_permit_without_calls", 1),
                 # else gRPC sends no ping more often than every 5 minutes on a link without data going out
                 ("grpc.http2.min_time_between_pings_ms", keepalive_ms),
                 # and a ping's answer is awaited 1 minute unless told (newer gRPC cores read this, not only the above)
                 ("grpc.http2.ping_timeout_ms", keepalive_ms)]  # fmt: skip
        self._options = limits + pings + [("grpc.http2.max_pings_without_data", 0)]
        # the server's own pings: not throttled to one per 5 minutes without data (else a peer frozen after an
        # answered ping goes unnoticed there); the clients' pings welcome as often as they come
        self._server_options = limits + pings + [("grpc.http2.min_ping_interval_without_data_ms", keepalive_ms),
                                                 ("grpc.http2.min_recv_ping_interval_without_data_ms", keepalive_ms // 2),
                                                 ("grpc.http2.max_ping_strikes", 0)]  # fmt: skip
        self._inbox = Inbox()
        self._server: grpc.Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._secret: str | None = None
        self._addresses: list[str] = []
        self._links: dict[int, _Link] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._connected = threading.Event()

    # -- server side ---------------------------------------------------------------------------------------------
    def _serve(self, frames, context):
        metadata = dict(context.invocation_metadata())
        given = metadata.get(SECRET_KEY, "")
        self._connected.wait(self.connect_timeout_s)  # a fast peer may call before this rank has the secret
        if self._secret is None or not hmac.compare_digest(str(given), self._secret):
            self._count_rejected()
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"rank {self.rank}: wrong or missing job secret")
        peer = "a peer"
        try:
            for frame in frames:
                try:
                    msg = UpdateMessage.from_bytes(frame)
                except TransportError as e:
                    self._count_rejected()
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"rank {self.rank}: {e}")
                peer = f"rank {msg.sender}"
                with self._lock:
                    self.stats.messages_received += 1
                    self.stats.bytes_received += len(frame)
                self._inbox.put(msg)
                yield ACK
        except grpc.RpcError:
            # the peer's stream broke without its clean end (unanswered pings, a reset): a partitioned, frozen or
            # dead peer. Wake this rank's receiver now rather than after receive_timeout_s.
            if not self._closed:
                self._inbox.abort(f"rank {self.rank}: the link from {peer} ({context.peer()}) broke: that rank is "
                                  "unreachable or gone")  # fmt: skip
            raise

    def _count_rejected(self) -> None:
        with self._lock:
            self.stats.rejected += 1

    def start(self) -> str:
        if self._server is not None:
            raise TransportError("start() called twice")
        # one thread per incoming stream: at most every other rank links to us
        self._pool = ThreadPoolExecutor(max_workers=max(2, self.world + 1), thread_name_prefix=f"sparkdl-grpc-{self.rank}")
        self._server = grpc.server(self._pool, handlers=[_Handler(self)], options=self._server_options)
        try:
            port = self._server.add_insecure_port(f"{self.host}:0")
        except RuntimeError as e:
            raise TransportError(f"cannot bind a gRPC server on {self.host}: {e}") from e
        if port == 0:
            raise TransportError(f"cannot bind a gRPC server on {self.host} (no free port, or not this host's address)")
        self._server.start()
        return f"{self.host}:{port}"

    # -- client side ---------------------------------------------------------------------------------------------
    def connect(self, addresses: Sequence[str], secret: str) -> None:
        if len(addresses) != self.world:
            raise TransportError(f"expected {self.world} addresses, got {len(addresses)}")
        self._addresses = list(addresses)
        self._secret = secret
        self._connected.set()

    def _link(self, to_rank: int) -> _Link:
        link = self._links.get(to_rank)
        if link is None:
            # the launcher may still be exchanging addresses while the worker prepares: wait for connect()
            if not self._connected.wait(self.connect_timeout_s):
                raise TransportError(
                    f"rank {self.rank} has no peer addresses after {self.connect_timeout_s:g} s (connect() never came)"
                )
            link = self._links[to_rank] = _Link(self, to_rank, self._addresses[to_rank])
        return link

    def send(self, to_rank: int, msg: UpdateMessage) -> None:
        self._check_peer(to_rank)
        if self._closed:
            raise TransportError(f"rank {self.rank} sends after close()")
        frame = msg.to_bytes(self.rank)
        if len(frame) > self.max_message_bytes:
            raise TransportError(
                f"a {len(frame):,}-byte message exceeds the transport's max_message_bytes={self.max_message_bytes:,}"
            )
        self._link(to_rank).send(frame)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(frame)

    def receive(self, timeout_s: float) -> list[UpdateMessage]:
        out = self._inbox.receive(timeout_s)
        if not out:
            self._raise_link_errors()
        return out

    def _raise_link_errors(self) -> None:
        for link in self._links.values():
            if link.error is not None:
                raise link.error

    def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for link in list(self._links.values()):
            link.wait_acked(deadline)

    def abort(self, reason: str) -> None:
        self._inbox.abort(reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self._server is not None:
            self._server.stop(grace=2).wait(10)
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
