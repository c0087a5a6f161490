"""LocalLauncher: all ranks on this machine, as threads of this process or as spawned processes.

Threads suit the in-process transport (tests, a laptop); processes use a network transport (gRPC) and a pipe per
child to the parent, which plays the part of Spark's barrier coordinator: it gathers the addresses, hands out
addresses + a fresh job secret, and releases the children to close only once every rank has flushed.
A failing rank aborts the others' blocked receives, and ``run`` raises ``WorkerFailedError`` naming the rank.
Threads share torch's global RNG: a fit with dropout is reproducible on processes (and Spark), not on threads.
"""
from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import secrets
import threading
import traceback
from typing import Callable, Sequence

from sparkdl.config import TransportConfig
from sparkdl.errors import ConfigError, TransportError, WorkerFailedError
from sparkdl.launch.base import Launcher, WorkerContext, WorkerFn, data_error
from sparkdl.transport import build_transport
from sparkdl.transport.inproc import InProcessNetwork

MODES = ("threads", "processes")


def _failure(rank: int, error: BaseException) -> WorkerFailedError:
    return WorkerFailedError(f"worker rank {rank} failed: {type(error).__name__}: {error}", rank=rank,
                             cause=f"{type(error).__name__}: {error}")  # fmt: skip


def _first_cause(errors: Sequence[BaseException | None]) -> tuple[int, BaseException] | None:
    """The error that started it: a rank's own failure beats the TransportErrors it caused elsewhere."""
    found = [(r, e) for r, e in enumerate(errors) if e is not None]
    for r, e in found:
        if not isinstance(e, TransportError):
            return r, e
    return found[0] if found else None


class LocalLauncher(Launcher):
    def __init__(self, transport: TransportConfig = TransportConfig(name="inproc"), mode: str = "threads",
                 cpus_per_worker: int = 1) -> None:  # fmt: skip
        if mode not in MODES:
            raise ConfigError(f"LocalLauncher mode must be one of {MODES}, got {mode!r}")
        if mode == "processes" and transport.name == "inproc":
            raise ConfigError("processes cannot share in-process queues: use transport grpc with mode='processes'")
        self.transport = transport
        self.mode = mode
        self.cpus_per_worker = cpus_per_worker

    def run(self, fn: WorkerFn, data, on_event: Callable[[dict], None] | None = None,
            on_artifact: Callable[[bytes], None] | None = None) -> list:
        """``data``: a sequence with one iterable of rows per rank."""
        shards = list(data)
        if not shards:
            raise ConfigError("LocalLauncher.run needs at least one shard (one per rank)")
        on_event = on_event or (lambda event: None)
        on_artifact = on_artifact or (lambda data: None)
        if self.mode == "threads":
            return self._threads(fn, shards, on_event, on_artifact)
        return self._processes(fn, shards, on_event, on_artifact)

    def _threads(self, fn: WorkerFn, shards: list, on_event: Callable[[dict], None],
                 on_artifact: Callable[[bytes], None]) -> list:  # fmt: skip
        world = len(shards)
        network = InProcessNetwork() if self.transport.name == "inproc" else None
        transports = [build_transport(self.transport, r, world, "127.0.0.1", network) for r in range(world)]
        results: list = [None] * world
        errors: list[BaseException | None] = [None] * world
        report_lock = threading.Lock()

        def report(event: dict) -> None:
            with report_lock:
                on_event(event)

        def deliver(data: bytes) -> None:
            with report_lock:
                on_artifact(data)

        def body(rank: int) -> None:
            ctx = WorkerContext(rank, world, transports[rank], self.transport.receive_timeout_s,
                                cpus=self.cpus_per_worker, report=report, deliver=deliver)  # fmt: skip
            try:
                results[rank] = fn(ctx, iter(shards[rank]))
                transports[rank].flush(self.transport.receive_timeout_s)
                ctx.barrier()
            except BaseException as e:  # noqa: BLE001 - reported below, with the rank
                errors[rank] = e
                for other in transports:
                    if other is not transports[rank]:
                        other.abort(f"worker rank {rank} failed: {type(e).__name__}: {e}")
            finally:
                transports[rank].close()  # all ranks at once, as on Spark: no server waits out a peer's open stream

        try:
            addresses = [t.start() for t in transports]
            secret = secrets.token_hex(16)
            for t in transports:
                t.connect(addresses, secret)
            threads = [threading.Thread(target=body, args=(r,), name=f"sparkdl-rank-{r}") for r in range(world)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for t in transports:
                t.close()
        cause = _first_cause(errors)
        if cause is not None:
            raise data_error(type(cause[1]).__name__, str(cause[1])) or _failure(*cause) from cause[1]
        return results

    def _processes(self, fn: WorkerFn, shards: list, on_event: Callable[[dict], None],
                   on_artifact: Callable[[bytes], None]) -> list:  # fmt: skip
        ctx = mp.get_context("spawn")  # grpc's threads do not survive fork
        world = len(shards)
        pipes, procs = [], []
        try:
            for rank in range(world):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(target=_process_main, args=(child_end, fn, rank, world, shards[rank], self.transport,
                                                               self.cpus_per_worker), daemon=True)  # fmt: skip
                proc.start()
                child_end.close()
                pipes.append(parent_end)
                procs.append(proc)
            addresses = [_expect(p, "address", r) for r, p in enumerate(pipes)]
            secret = secrets.token_hex(16)
            for p in pipes:
                p.send(("peers", (addresses, secret)))
            outcomes: dict[int, tuple] = {}
            while len(outcomes) < world:
                for p in mp.connection.wait([p for r, p in enumerate(pipes) if r not in outcomes]):
                    rank = pipes.index(p)
                    tag, value = _receive(p, rank)
                    if tag == "event":
                        on_event(value)
                        continue
                    if tag == "artifact":
                        on_artifact(value)
                        continue
                    outcomes[rank] = _check_tag(tag, value, "done", rank)
                    if outcomes[rank][0] == "error":
                        for r, other in enumerate(pipes):
                            if r not in outcomes:
                                other.send(("abort", f"worker rank {rank} failed: {outcomes[rank][1]}"))
            failed = [(r, outcomes[r]) for r in range(world) if outcomes[r][0] == "error"]
            for p in pipes:
                p.send(("close", None))
            results = [_expect(p, "closed", r) for r, p in enumerate(pipes)]
        finally:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
        if failed:
            real = [f for f in failed if f[1][1] != "TransportError"] or failed
            rank, (_, kind, text) = real[0]
            found = data_error(kind, text.split("\n", 1)[0])  # text: the message, then the traceback
            raise found or WorkerFailedError(f"worker rank {rank} failed: {kind}: {text}", rank=rank,
                                             cause=f"{kind}: {text.split(chr(10), 1)[0]}")  # fmt: skip
        return results


def _receive(pipe, rank: int):
    try:
        return pipe.recv()
    except EOFError:
        raise WorkerFailedError(f"worker rank {rank} died (killed, or out of memory?)", rank=rank) from None


def _expect(pipe, what: str, rank: int):
    return _check_tag(*_receive(pipe, rank), what, rank)


def _check_tag(tag, value, what: str, rank: int):
    if tag == "crash":
        raise WorkerFailedError(f"worker rank {rank} failed during start-up: {value}", rank=rank)
    if tag != what:
        raise WorkerFailedError(f"worker rank {rank} sent {tag!r} where {what!r} was expected")
    return value


def _process_main(pipe, fn, rank, world, shard, config, cpus) -> None:  # runs in the child
    transport = None
    try:
        transport = build_transport(config, rank, world, "127.0.0.1")
        pipe.send(("address", transport.start()))
        _, (addresses, secret) = pipe.recv()
        transport.connect(addresses, secret)
    except BaseException as e:  # noqa: BLE001
        pipe.send(("crash", f"{type(e).__name__}: {e}"))
        if transport is not None:
            transport.close()
        return
    closing = threading.Event()

    def watch() -> None:  # the parent's abort / close orders, while fn runs
        while True:
            try:
                tag, value = pipe.recv()
            except EOFError:
                transport.abort("the launching process went away")
                closing.set()
                return
            if tag == "abort":
                transport.abort(value)
            elif tag == "close":
                closing.set()
                return

    watcher = threading.Thread(target=watch, name="sparkdl-launch-watch", daemon=True)
    watcher.start()
    result = None
    try:
        send_lock = threading.Lock()

        def report(event: dict) -> None:
            with send_lock:
                pipe.send(("event", event))

        def deliver(data: bytes) -> None:
            with send_lock:
                pipe.send(("artifact", data))

        ctx = WorkerContext(rank, world, transport, config.receive_timeout_s, cpus=cpus, report=report, deliver=deliver)
        result = fn(ctx, iter(shard))
        transport.flush(config.receive_timeout_s)
        ctx.barrier()
        pipe.send(("done", ("ok", None, None)))
    except BaseException as e:  # noqa: BLE001
        pipe.send(("done", ("error", type(e).__name__, f"{e}\n{traceback.format_exc(limit=5)}")))
    closing.wait()  # every rank has flushed (or failed): safe to stop serving
    watcher.join()
    transport.close()
    pipe.send(("closed", result))
