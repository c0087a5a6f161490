"""SparkBarrierLauncher: one Spark barrier stage, one task per rank, all scheduled together.

Each task starts its transport on its own executor host (an ephemeral port), and learns every peer's address
(plus rank 0's freshly drawn job secret) through ``BarrierTaskContext.allGather``, so the secret never travels in
the task closure. After ``fn`` returns, the task flushes its sends and waits at a barrier (over the transport:
``BarrierTaskContext.barrier()`` polls once a second) before closing, so no rank shuts its server while a peer
still talks to it. With ``on_event``, the driver runs a receive-only gRPC sink and rank 0's ``ctx.report`` events
reach it while the stage runs (progress lines, listeners). A failed task fails the stage and the launch: Spark 4.3
does not retry a failed barrier stage ("Could not recover from a failed barrier ResultStage"), so the caller must run
it again.
"""
from __future__ import annotations

import functools
import json
import re
import secrets
import threading
import time
from typing import Callable

from sparkdl.config import TransportConfig
from sparkdl.errors import ConfigError, SparkDLError, WorkerFailedError
from sparkdl.launch.base import Launcher, WorkerContext, WorkerFn, data_error


class _Reporter:
    """Rank 0's line to the driver's event sink (a client-only gRPC transport)."""

    def __init__(self, sink: tuple[str, str] | None, config: TransportConfig) -> None:
        self._transport = None
        self._sequence = 0
        self._lock = threading.Lock()
        if sink is not None:
            from sparkdl.transport.grpc import GrpcTransport

            self._transport = GrpcTransport(0, 2, max_message_bytes=config.max_message_bytes,
                                            connect_timeout_s=config.connect_timeout_s, keepalive_s=config.keepalive_s)  # fmt: skip
            self._transport.connect(["", sink[0]], sink[1])

    def __call__(self, event: dict) -> None:
        from sparkdl.transport.base import Kind

        self._send(Kind.CONTROL, json.dumps(event).encode())

    def deliver(self, data: bytes) -> None:
        from sparkdl.transport.base import Kind

        self._send(Kind.ARTIFACT, data)

    def _send(self, kind, payload: bytes) -> None:
        if self._transport is None:
            return
        from sparkdl.transport.base import UpdateMessage

        with self._lock:  # events from the loop, checkpoints from its sending thread: one sequence
            self._sequence += 1
            self._transport.send(1, UpdateMessage(kind, self._sequence, 0, self._sequence, payload))

    def close(self, timeout_s: float) -> None:
        if self._transport is not None:
            try:
                self._transport.flush(timeout_s)
            finally:
                self._transport.close()


class _EventSink:
    """A receive-only gRPC server on the driver; a thread hands rank 0's events to ``on_event`` and its artifacts
    (checkpoints) to ``on_artifact`` as they come, in the order rank 0 sent them."""

    def __init__(self, host: str, on_event: Callable[[dict], None] | None, on_artifact: Callable[[bytes], None] | None,
                 config: TransportConfig) -> None:  # fmt: skip
        from sparkdl.transport.grpc import GrpcTransport

        self._on_event = on_event or (lambda event: None)
        self._on_artifact = on_artifact or (lambda data: None)
        self._transport = GrpcTransport(1, 2, host=host, max_message_bytes=config.max_message_bytes,
                                        keepalive_s=config.keepalive_s)
        self.address = self._transport.start()
        self.secret = secrets.token_hex(16)
        self._transport.connect(["", self.address], self.secret)
        self._stop = threading.Event()
        self._broken = False
        self._thread = threading.Thread(target=self._pump, name="sparkdl-event-sink", daemon=True)
        self._thread.start()
        self.errors: list[BaseException] = []

    def _pump(self) -> None:
        while not self._stop.is_set() and not self._broken:
            self._drain(0.2)

    def _drain(self, timeout_s: float) -> int:
        from sparkdl.errors import TransportError

        if self._broken:
            return 0
        try:
            msgs = self._transport.receive(timeout_s)
        except TransportError:
            # rank 0's stream broke (its task killed when the stage failed, its host partitioned away): the stage's
            # own failure says why; what arrived before is delivered, nothing more will come
            self._broken = True
            return 0
        from sparkdl.transport.base import Kind

        for msg in sorted(msgs, key=lambda m: m.step):
            try:
                if msg.kind == Kind.ARTIFACT:
                    self._on_artifact(msg.payload)
                else:
                    self._on_event(json.loads(msg.payload))
            except BaseException as e:  # noqa: BLE001 - a listener's bug must not kill the launch
                self.errors.append(e)
        return len(msgs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        while self._drain(0.0):  # rank 0 flushed before its task ended: whatever is left is already here
            pass
        self._transport.close()


def _barrier_task(rows, fn_blob: bytes, config: TransportConfig, sink: tuple[str, str] | None):
    from pyspark import BarrierTaskContext, cloudpickle

    from sparkdl.transport import build_transport

    ctx = BarrierTaskContext.get()
    rank = ctx.partitionId()
    infos = ctx.getTaskInfos()
    world = len(infos)
    host = infos[rank].address.rsplit(":", 1)[0]
    transport = build_transport(config, rank, world, host=host)
    reporter = _Reporter(sink if rank == 0 else None, config)
    gather_errors: list[BaseException] = []

    def exchange(address: str) -> None:
        try:
            token = secrets.token_hex(16) if rank == 0 else ""
            peers = [json.loads(m) for m in ctx.allGather(json.dumps({"address": address, "secret": token}))]
            transport.connect([p["address"] for p in peers], peers[0]["secret"])
            if rank == 0:  # where this attempt runs, for the driver's record (train: metrics.json "placements")
                reporter({"type": "placement", "addresses": [p["address"] for p in peers]})
        except BaseException as e:  # noqa: BLE001 - surfaces through the transport and after fn
            gather_errors.append(e)
            transport.abort(f"rank {rank}: exchanging addresses failed: {type(e).__name__}: {e}")

    try:
        address = transport.start()
        # allGather answers after a poll of up to a second: overlap it with fn's own start (shard, model, optimizer);
        # the first send waits for connect()
        gather = threading.Thread(target=exchange, args=(address,), name="sparkdl-allgather", daemon=True)
        gather.start()
        fn = cloudpickle.loads(fn_blob)  # its imports (torch, ...) run while the exchange waits
        wctx = WorkerContext(rank, world, transport, config.receive_timeout_s, cpus=ctx.cpus(), report=reporter,
                             deliver=reporter.deliver)  # fmt: skip
        result = fn(wctx, rows)
        gather.join()
        if gather_errors:
            raise gather_errors[0]
        transport.flush(config.receive_timeout_s)
        reporter.close(config.receive_timeout_s)
        wctx.barrier()
    finally:
        transport.close()
    yield rank, result


class SparkBarrierLauncher(Launcher):
    def __init__(self, transport: TransportConfig = TransportConfig()) -> None:
        if transport.name == "inproc":
            raise ConfigError("the inproc transport cannot link Spark tasks: use --transport grpc")
        if transport.name == "aeron":
            from sparkdl.transport.aeron import unavailable

            raise unavailable()
        self.transport = transport

    def run(self, fn: WorkerFn, data, on_event: Callable[[dict], None] | None = None,
            on_artifact: Callable[[bytes], None] | None = None) -> list:
        """``data``: an RDD with one partition per rank. The barrier job runs on this thread, so it carries this
        thread's job group / description (``sparkdl.session.job_description``, local properties are per Python
        thread); the event sink's thread only hands events to ``on_event`` and starts no Spark job."""
        sc = data.context
        world = data.getNumPartitions()
        task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
        slots = sc.defaultParallelism // max(1, task_cpus)
        if world > slots:
            raise ConfigError(
                f"{world} workers need {world} task slots running at once, but this Spark application has about "
                f"{slots} ({sc.defaultParallelism} cores / spark.task.cpus={task_cpus}): lower --workers or add executors"
            )
        sink = None
        if on_event is not None or on_artifact is not None:
            sink = _EventSink(sc.getConf().get("spark.driver.host", "127.0.0.1"), on_event, on_artifact, self.transport)
        from pyspark import cloudpickle

        task = functools.partial(_barrier_task, fn_blob=cloudpickle.dumps(fn), config=self.transport,
                                 sink=(sink.address, sink.secret) if sink else None)  # fmt: skip
        try:
            pairs = data.barrier().mapPartitions(task).collect()
        except Exception as e:
            raise _stage_error(e) from e
        finally:
            if sink is not None:
                sink.close()
        return [result for _, result in sorted(pairs, key=lambda p: p[0])]


def _stage_error(error: Exception) -> SparkDLError:
    """One line for a failed barrier stage: a ``DataError`` a rank raised as itself, a dead Python worker by its
    rank, anything else as the last line of the Python traceback. Spark does not retry a failed barrier stage."""
    cause = _python_cause(error)
    name, _, message = cause.partition(": ")
    found = data_error(name, message)
    if found is not None:
        return found
    text = str(error)
    rank = _failed_rank(text)
    lost = re.search(r"ExecutorLostFailure \(([^)]*)\)(?: Reason: ([^\n]*))?", text)
    if lost:
        who = f"worker rank {rank}'s executor" if rank is not None else "an executor"
        why = (lost[2] or lost[1]).strip()
        return WorkerFailedError(f"the barrier stage failed: {who} was lost ({why})", rank=rank,
                                 cause=f"{who} was lost ({why})")  # fmt: skip
    if "Python worker exited unexpectedly" in text:
        who = f"worker rank {rank}" if rank is not None else "a worker"
        return WorkerFailedError(f"the barrier stage failed: {who} died (killed, or out of memory?) and Spark does "
                                 "not retry a barrier stage: run it again", rank=rank,
                                 cause=f"{who} died (killed, or out of memory?)")  # fmt: skip
    return WorkerFailedError(f"the barrier stage failed: {cause}", rank=rank, cause=cause)


def spark_failure(error: Exception, context: str, epoch: int | None = None, step: int | None = None) -> SparkDLError:
    """One line for a failed Spark job that is not a barrier stage (a round of the ``rounds`` execution): a
    ``DataError`` a task raised as itself, anything else as ``WorkerFailedError`` with the last Python cause."""
    cause = _python_cause(error)
    name, _, message = cause.partition(": ")
    found = data_error(name, message)
    if found is not None:
        return found
    return WorkerFailedError(f"{context}: {cause}", epoch=epoch, step=step, cause=cause)


def _failed_rank(text: str) -> int | None:
    """The rank (barrier task partition) Spark names as the one that failed, if it does."""
    task = re.search(r"barrier task ResultTask\(\d+, (\d+)\)", text)
    return int(task[1]) if task else None


def _python_cause(error: Exception) -> str:
    """The last line of the Python traceback Spark wraps (``SomeError: message``), else the error's first line."""
    text = str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error: " in line or "Exception: " in line:
            if not line.startswith(("at ", "org.apache", "py4j")):
                return line.lstrip(": ")
    return lines[0] if lines else type(error).__name__


_ADDRESS = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})\b")


def drop_unreachable_hosts(sc, cause: str, timeout_s: float = 3.0, removal_wait_s: float = 30.0) -> list[str]:
    """After a failed attempt whose ``cause`` names peers by address (a broken link, an unanswered ping): the hosts
    among them that the driver cannot reach either — no executor port there answers a TCP connect within
    ``timeout_s`` — are partitioned away or dead; their executors are removed from the application now
    (``killExecutorsOnHost``), so the re-launch does not wait for Spark's heartbeat timeout
    (``spark.network.timeout``, 120 s by default) with a barrier stage that cannot get its slots. Returns the hosts
    dropped (once the driver no longer lists their executors, at most ``removal_wait_s`` later); a host the driver
    still reaches is left alone (a dead task on a live host is Spark's to retry)."""
    import socket

    named = {host for host, _port in _ADDRESS.findall(cause or "")}
    if not named:
        return []
    try:
        jsc = sc._jsc.sc()
        infos = jsc.statusTracker().getExecutorInfos()
        ports: dict[str, list[int]] = {}
        for info in infos:
            ports.setdefault(info.host(), []).append(int(info.port()))
    except Exception:  # noqa: BLE001 - no JVM status tracker (Connect): nothing to drop
        return []
    driver = sc.getConf().get("spark.driver.host", "")
    dropped = []
    for host in sorted(named):
        if host == driver or host not in ports:
            continue
        reachable = False
        for port in ports[host]:
            try:
                with socket.create_connection((host, port), timeout=timeout_s):
                    reachable = True
                    break
            except OSError:
                continue
        if not reachable:
            try:
                jsc.schedulerBackend().killExecutorsOnHost(host)
            except Exception:  # noqa: BLE001 - a backend that cannot kill: Spark's heartbeat timeout will
                continue
            dropped.append(host)
    # the kill is asynchronous: until the driver has removed them, Spark still counts their slots, and a barrier
    # stage submitted for that many would wait for slots that never come back
    deadline = time.monotonic() + removal_wait_s
    while dropped and time.monotonic() < deadline:
        try:
            hosts_now = {info.host() for info in jsc.statusTracker().getExecutorInfos()}
        except Exception:  # noqa: BLE001
            break
        if not hosts_now & set(dropped):
            break
        time.sleep(0.5)
    return dropped
