"""Executor preflight: before a stage's first real Spark job, check once per application that the executors can run
sparkdl — they import it at the driver's version, in a Python of the driver's major.minor — so that a user's own
SparkSession whose executors lack sparkdl (or run another sparkdl / Python) fails with one line naming the executor
host and the fix, not with a pickled ``ModuleNotFoundError`` deep inside a task.

The probe is one tiny task per registered executor (free slots are dealt round-robin over executors, so each gets
one at a stage's start); it imports sparkdl and looks torch up without importing it (an import costs seconds a
task). It is pickled *by value* (compiled from source below, in a module of its own that no executor imports), so it
runs even where sparkdl is missing and reports that. Its result is cached per application id: one job per
application, whatever the number of stages; none for a local master whose Python workers run this very interpreter
(nothing could differ). Executors that join later (dynamic allocation, a replaced executor) are not probed again. Spark Connect sessions are not probed (no SparkContext on the client)."""
from __future__ import annotations

import json
import os
import re
import sys
import threading
from dataclasses import dataclass

from sparkdl.errors import ConfigError

# How a user gives the executors what the driver has (the fix every refusal names).
FIX = ("give the executors the driver's environment: spark.pyspark.python (PYSPARK_PYTHON) pointing at a Python "
       "with sparkdl-torch {version} installed, or --archives a packed virtualenv (venv-pack / conda-pack) with "
       "spark.pyspark.python=./<env>/bin/python, or an executor image with it installed")  # fmt: skip

_PROBE_SOURCE = '''
def probe(_rows):
    import json, socket, sys
    address = None
    try:  # the address this executor reaches the driver from (a UDP "connect" sends nothing)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((DRIVER_HOST, 9))
        address = s.getsockname()[0]
        s.close()
    except OSError:
        pass
    report = {"address": address, "python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
              "sparkdl": None, "torch": None, "error": None}
    try:
        import sparkdl
        report["sparkdl"] = getattr(sparkdl, "__version__", "unknown")
        # torch: found and its version read, not imported (an import costs seconds a task; the stage imports it)
        import importlib.metadata, importlib.util
        if importlib.util.find_spec("torch") is None:
            raise ModuleNotFoundError("No module named 'torch'")
        report["torch"] = importlib.metadata.version("torch")
    except Exception as e:
        report["error"] = "%s: %s" % (type(e).__name__, e)
    yield json.dumps(report)
'''


@dataclass(frozen=True)
class ExecutorReport:
    """What one probe task found on its executor."""

    address: str | None
    python: str
    executable: str
    sparkdl: str | None
    torch: str | None
    error: str | None


@dataclass(frozen=True)
class PreflightResult:
    app_id: str
    reports: tuple[ExecutorReport, ...]
    seconds: float


_checked: dict[str, PreflightResult] = {}
_lock = threading.Lock()


def _probe_function(driver_host: str):
    namespace = {"__name__": "sparkdl_preflight_probe", "DRIVER_HOST": driver_host}
    exec(compile(_PROBE_SOURCE, "<sparkdl preflight probe>", "exec"), namespace)  # noqa: S102 - our own constant source
    return namespace["probe"]


def _executor_count(sc) -> int:
    """The executors registered now (the driver left out; local mode: 1), the probe's task count: the scheduler
    deals free slots round-robin over executors, so each gets one task."""
    try:
        infos = sc._jsc.sc().statusTracker().getExecutorInfos()
        return max(1, len(infos) - 1)
    except Exception:  # noqa: BLE001 - no JVM status tracker: one task per slot
        return max(1, sc.defaultParallelism)


def _same_interpreter(sc) -> bool:
    """A local master whose Python workers run this very interpreter: nothing to check (same files, same sparkdl)."""
    from sparkdl.session import is_local_master

    # abspath, not realpath: a virtualenv's python is a link to the base interpreter, with other packages
    return is_local_master(sc.master) and os.path.abspath(getattr(sc, "pythonExec", "") or "") == os.path.abspath(sys.executable)


def check_executors(spark, *, force: bool = False) -> PreflightResult | None:
    """Probe the executors of ``spark``'s application once (cached by application id) and raise ``ConfigError`` with
    one line if any cannot run this sparkdl. Returns the result, or None for Spark Connect."""
    import time

    from sparkdl import __version__
    from sparkdl.session import described_jobs, is_connect

    if is_connect(spark):
        return None
    sc = spark.sparkContext
    app_id = sc.applicationId
    with _lock:
        if not force and app_id in _checked:
            return _checked[app_id]
        if not force and _same_interpreter(sc):
            _checked[app_id] = PreflightResult(app_id, (), 0.0)
            return _checked[app_id]
        started = time.monotonic()
        tasks = _executor_count(sc)
        driver_host = sc.getConf().get("spark.driver.host", "127.0.0.1")
        try:
            with described_jobs(sc, "preflight", "can the executors run sparkdl?"):
                raw = sc.parallelize(range(tasks), tasks).mapPartitions(_probe_function(driver_host)).collect()
        except Exception as e:  # the task could not even start: most often another Python in the workers
            raise ConfigError(explain_failure(str(e), __version__)) from None
        reports = tuple(ExecutorReport(**json.loads(r)) for r in raw)
        problem = find_problem(reports, __version__, "%d.%d" % sys.version_info[:2])
        if problem:
            raise ConfigError(problem)
        result = PreflightResult(app_id, reports, time.monotonic() - started)
        _checked[app_id] = result
        return result


def find_problem(reports: tuple[ExecutorReport, ...], version: str, python: str) -> str | None:
    """The one-line refusal for these probe reports, or None when every executor can run sparkdl ``version``."""
    fix = FIX.format(version=version)
    for r in reports:
        where = f"the executor at {r.address or 'an unknown address'} ({r.executable}, Python {r.python})"
        if r.sparkdl is None:
            return f"{where} cannot import sparkdl ({r.error}): {fix}"
        if r.sparkdl != version:
            return f"{where} runs sparkdl {r.sparkdl}, the driver sparkdl {version}: {fix}"
        if r.error:
            return f"{where} imports sparkdl but not its dependencies ({r.error}): {fix}"
        if ".".join(r.python.split(".")[:2]) != python:
            return f"{where} runs Python {r.python}, the driver Python {python}: {fix}"
    return None


def explain_failure(message: str, version: str) -> str:
    """One line for a probe job that failed before reporting (PySpark refuses a worker Python of another minor
    version itself), naming the executor host Spark's message names."""
    where = re.search(r"\(([^\s()]+) executor ([^\s()]+)\)", message)
    host = f"the executor at {where.group(1)} (executor {where.group(2)})" if where else "an executor"
    mismatch = re.search(r"Python in worker has different version:?\s*\(?([\d., ]+)\)? than that in driver:?\s*([\d.]+)", message)
    if mismatch:
        worker = ".".join(p.strip() for p in mismatch.group(1).split(",")).strip(". ")
        return (f"{host} runs Python {worker}, the driver Python {mismatch.group(2)} (PySpark needs the same "
                f"major.minor): {FIX.format(version=version)}")  # fmt: skip
    first = next((ln.strip() for ln in message.splitlines() if ln.strip()), message)
    return f"{host} could not run sparkdl's preflight task ({first[:300]}): {FIX.format(version=version)}"
