"""Helpers of the cluster tests (the fixtures are in conftest.py): ports, Spark's scripts, spark-submit, a command
watched line by line, the local HDFS script. The multi-host standalone cluster is ``spark_hosts.py``."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_bin(name: str) -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / name)


def submit(cluster, job: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """spark-submit a job of ``jobs/`` to ``cluster["url"]``."""
    cmd = [spark_bin("spark-submit"), "--master", cluster["url"], "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.ui.enabled=false", str(REPO / "jobs" / f"{job}.py"), *args]  # fmt: skip
    return subprocess.run(cmd, env={**cluster["env"], **(env or {})}, capture_output=True, text=True, timeout=600)


def local_submitter() -> dict:
    """What ``submit`` needs to run the jobs with ``spark-submit --master local[2]`` (the HDFS tests)."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}  # fmt: skip
    env.pop("HADOOP_CONF_DIR", None)
    return {"url": "local[2]", "env": env}


def local_hdfs_module():
    spec = importlib.util.spec_from_file_location("local_hdfs", REPO / "scripts" / "local_hdfs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_hdfs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def watched(cmd: list[str], on_line: Callable[[str], None], env: dict | None = None, timeout: float = 420,
            log=None, started: Callable[[int], None] | None = None, merged: bool = False) -> tuple[int, list[str]]:  # fmt: skip
    """Run ``cmd``, handing each line of its stderr to ``on_line`` as it comes (e.g. to kill something at the
    right moment; ``started`` gets the process id first); returns (exit code, stderr lines). Killed when it
    outlives ``timeout``. ``merged``: stdout and stderr as one stream (spark-submit hands the Python driver's stderr
    to its own stdout)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merged else subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    if started is not None:
        started(proc.pid)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout if merged else proc.stderr:
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
