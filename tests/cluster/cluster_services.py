"""Helpers of the cluster tests (the fixtures are in conftest.py): ports, Spark's scripts, spark-submit, the
local HDFS script."""
from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_bin(name: str) -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / name)


def submit(cluster, job: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [spark_bin("spark-submit"), "--master", cluster["url"], "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.executor.memory=1g", "--conf", "spark.ui.enabled=false", str(REPO / "jobs" / f"{job}.py"), *args]  # fmt: skip
    return subprocess.run(cmd, env={**cluster["env"], **(env or {})}, capture_output=True, text=True, timeout=600)


def local_hdfs_module():
    spec = importlib.util.spec_from_file_location("local_hdfs", REPO / "scripts" / "local_hdfs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_hdfs"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
