"""Helpers of the cluster tests (the fixtures are in conftest.py): ports, Spark's scripts, spark-submit, a
standalone cluster, a command watched line by line, the local HDFS script."""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from where import AppRun, app_logs, registered_apps, submit_conf

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_bin(name: str) -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / name)


def submit(cluster, job: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """spark-submit a job of ``jobs/`` to the loopback ``cluster``; its application writes an event log into
    ``cluster["events"]`` (``assert_ran_on_cluster`` reads it)."""
    cmd = [spark_bin("spark-submit"), "--master", cluster["url"], "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.executor.memory=1g", "--conf", "spark.ui.enabled=false", *submit_conf(cluster["events"]),
           str(REPO / "jobs" / f"{job}.py"), *args]  # fmt: skip
    return subprocess.run(cmd, env={**cluster["env"], **(env or {})}, capture_output=True, text=True, timeout=600)


def assert_ran_on_cluster(cluster, before: set, stages: tuple[str, ...]) -> list:
    """Every application that wrote an event log into ``cluster["events"]`` since ``before`` (``app_logs``) is
    registered with the standalone master, and the tasks of each ``sparkdl-<stage>`` job group ran on its executors
    (separate processes started by the Worker), never in the driver. Returns their ``AppRun``s."""
    runs = [AppRun.read(p) for p in app_logs(cluster["events"]) if p not in before]
    assert runs, "no application wrote an event log: nothing ran on the cluster"
    state = json.load(urllib.request.urlopen(f"{cluster['ui']}/json/", timeout=5))
    for run in runs:
        assert run.app_id in registered_apps(state), f"{run.app_id} is not registered with the master"
        assert run.executors and "driver" not in run.executors, run.executors
        assert run.tasks and all(t.executor in run.executors for t in run.tasks), run.app_id
    groups = {t.group for run in runs for t in run.tasks}
    assert all(f"sparkdl-{stage}" in groups for stage in stages), (stages, groups)
    return runs


def local_hdfs_module():
    spec = importlib.util.spec_from_file_location("local_hdfs", REPO / "scripts" / "local_hdfs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_hdfs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@contextmanager
def standalone(logs: Path, worker_cores: list[int], memory: str = "3g"):
    """A Spark standalone master and one Worker per entry of ``worker_cores`` (that many cores each), on 127.0.0.1;
    yields ``{"url", "env", "workers": [Popen]}`` once all are registered, stops them all afterwards."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_WORKER_DIR": str(logs / "work")}  # fmt: skip
    env.pop("HADOOP_CONF_DIR", None)
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = [subprocess.Popen([spark_bin("spark-class"), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)],
                              env=env, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT)]  # fmt: skip
    workers = []
    try:
        for i, cores in enumerate(worker_cores):
            workers.append(subprocess.Popen(
                [spark_bin("spark-class"), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores",
                 str(cores), "--memory", memory, "--webui-port", str(free_port()), url],
                env=env, stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT))  # fmt: skip
        procs += workers
        deadline = time.monotonic() + 120
        while True:
            try:
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json", timeout=2))
                if state.get("aliveworkers", 0) >= len(worker_cores):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standalone cluster did not come up; logs in {logs}")
            time.sleep(1)
        events = logs / "events"
        events.mkdir(exist_ok=True)
        yield {"url": url, "env": env, "workers": workers, "ui": f"http://127.0.0.1:{ui}", "events": events}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def watched(cmd: list[str], on_line: Callable[[str], None], env: dict | None = None, timeout: float = 420,
            log=None, started: Callable[[int], None] | None = None) -> tuple[int, list[str]]:  # fmt: skip
    """Run ``cmd``, handing each line of its stderr to ``on_line`` as it comes (e.g. to kill something at the
    right moment; ``started`` gets the process id first); returns (exit code, stderr lines). Killed when it
    outlives ``timeout``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if started is not None:
        started(proc.pid)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)
            if log is not None:
                log.write(line)
            on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return proc.returncode, lines


# the fault-tolerance tests (test_faults, test_multihost_faults): one table, one set of training options, so a killed run is
# compared with a clean run of the same math
FIT_DIM, FIT_CLASSES = 32, 5
FIT_ARGS = ["--epochs", "8", "--batch-size-per-worker", "16", "--head", "mlp:64", "--lr", "0.02", "--seed", "5"]


def make_fit_features(spark, uri: str) -> str:
    """Gaussian clusters, 3,000 train / 400 valid / 400 test rows: 8 epochs take long enough to kill things in."""
    from datagen import make_features_table

    make_features_table(spark, uri, n=0, dim=FIT_DIM, n_classes=FIT_CLASSES, seed=11, noise=1.5,
                        split_counts={"train": 3000, "valid": 400, "test": 400})  # fmt: skip
    return uri
