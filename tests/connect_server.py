"""A real Spark Connect server for the tests, and Connect clients in child Python processes.

The server is the ``SparkConnectServer`` class pyspark ships (``pyspark/jars/spark-connect_*.jar``), started with
``spark-submit`` as a process group this module owns: ``local[2]``, driver and gRPC bound to 127.0.0.1, and its
Python workers on this interpreter (they import sparkdl, numpy, torch).

Clients run in child processes, never in the pytest process: pyspark.ml picks classic or Connect code from one
process-wide environment variable (``SPARK_CONNECT_MODE_ENABLED``), so a Connect client next to the classic
``spark`` fixture breaks one of the two (Connect ML fails on ``_jdf`` without it, classic ML on ``client`` with it),
and ``SparkSession.builder.remote(...)`` refuses to start while a classic session exists.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyspark

HOST = "127.0.0.1"
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
CLIENT_PACKAGES = ("grpc_status", "google.rpc", "zstandard")  # what pyspark's Connect client imports beyond grpcio
TESTS_DIR = Path(__file__).resolve().parent
# variables that switch a pyspark process into (or out of) Connect mode: a client's environment starts clean
_CONNECT_VARS = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "SPARK_API_MODE",
                 "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET")  # fmt: skip


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick on 127.0.0.1)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def missing_client_packages() -> list[str]:
    """The Connect client's extra modules this interpreter lacks (the ``connect`` extra installs them)."""
    import importlib.util

    missing = []
    for name in CLIENT_PACKAGES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ModuleNotFoundError:
            missing.append(name)
    return missing


def log_tail(log: Path, lines: int = 40) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _started(log: Path, port: int) -> bool:
    """The server logged that it listens on ``port`` (so whatever accepts there is this server, not a process that
    took the port between ``free_port`` and the server's bind)."""
    return f"Spark Connect server started at: {HOST}:{port}" in log.read_text(errors="replace")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.parent.name))
    return found


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    except OSError:  # no /proc: signal 0 said it exists
        return True
    return state != "Z"  # a zombie has ended


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


@dataclass
class ConnectServer:
    """A running server: ``url`` for clients, ``log`` its output, ``startup_seconds`` from spawn to accepting."""

    url: str
    port: int
    process: subprocess.Popen
    log: Path
    startup_seconds: float

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (the JVM); its Python workers (their own group) end with it.
        Whatever is still alive after ``timeout_s`` is killed, by PID."""
        if self.process.poll() is not None:
            return
        spawned = _descendants(self.process.pid)  # pyspark.daemon and its workers: a process group of their own
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in filter(_alive, spawned):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:  # ended meanwhile
                pass


def _server_command(port: int) -> list[str]:
    spark_home = Path(pyspark.__file__).parent
    confs = {
        "spark.connect.grpc.binding.address": HOST,
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.port.maxRetries": "0",  # a taken port fails the start, never moves it elsewhere
        "spark.driver.host": HOST,
        "spark.driver.bindAddress": HOST,
        "spark.ui.enabled": "false",
        "spark.python.worker.reuse": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.pyspark.python": sys.executable,
    }
    cmd = [str(spark_home / "bin" / "spark-submit"), "--class", SERVER_CLASS, "--name", "sparkdl-tests-connect",
           "--master", "local[2]", "--driver-memory", "1g"]  # fmt: skip
    for key, value in confs.items():
        cmd += ["--conf", f"{key}={value}"]
    return cmd + ["spark-internal"]  # SparkSubmit's placeholder primary resource for a class in Spark's own jars


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_VARS}
    env.update(SPARK_LOCAL_IP=HOST, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    for name in ("SPARK_HOME", "SPARK_CONF_DIR"):  # the pip package's own scripts, jars and log4j defaults (INFO)
        env.pop(name, None)
    return env


def start_connect_server(workdir: Path, timeout_s: float = 120.0) -> ConnectServer:
    """Start a Spark Connect server in ``workdir`` (its log, warehouse, scratch) and wait until it accepts
    connections; ``RuntimeError`` with the log's tail when it exits or does not answer within ``timeout_s``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "connect-server.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        process = subprocess.Popen(_server_command(port), cwd=workdir, env=_server_env(), stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    server = ConnectServer(f"sc://{HOST}:{port}", port, process, log, 0.0)
    deadline = time.monotonic() + timeout_s
    while not (_started(log, port) and _accepts(port)):
        code = process.poll()
        if code is not None or time.monotonic() > deadline:
            server.stop()
            why = f"exited with code {code}" if code is not None else f"did not accept connections in {timeout_s:g} s"
            raise RuntimeError(f"the Spark Connect server on {HOST}:{port} {why}; its log ends:\n{log_tail(log)}")
        time.sleep(0.2)
    server.startup_seconds = time.perf_counter() - start
    return server


def client_env(url: str) -> dict[str, str]:
    """A clean environment for a Connect client: ``SPARK_REMOTE`` set (``SparkSession.builder.getOrCreate()``
    connects), no classic gateway, the tests folder importable (``datagen``)."""
    env = {k: v for k, v in os.environ.items() if k not in _CONNECT_VARS}
    env["SPARK_REMOTE"] = url
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    return env


def run_connect_client(url: str, script: str | Path, args: tuple[str, ...] | list[str] = (), timeout_s: float = 300.0,
                       check: bool = True) -> subprocess.CompletedProcess:  # fmt: skip
    """Run a Connect client in a child Python process: ``script`` is a file (``Path``) or Python source (``str``),
    ``args`` its ``sys.argv[1:]``; ``SPARK_REMOTE`` holds ``url``. With ``check``, a non-zero exit raises
    ``AssertionError`` showing the client's stderr tail. Returns the completed process (text stdout / stderr)."""
    program = [str(script)] if isinstance(script, Path) else ["-c", script]
    done = subprocess.run([sys.executable, *program, *map(str, args)], env=client_env(url), capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)  # fmt: skip
    if check and done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if not ln.lstrip().startswith("at ")]  # JVM frames: noise
        tail = "\n".join(lines[-40:])
        raise AssertionError(f"the Connect client exited with code {done.returncode}; its stderr ends:\n{tail}")
    return done
