"""The jobs on a real Spark standalone cluster: a master and a worker started on 127.0.0.1 from the pip package's
``spark-class``, the stages submitted with the real ``spark-submit``, everything stopped at the end."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from datagen import make_caltech_tree

pytestmark = [pytest.mark.slow, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_bin(name: str) -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster-logs")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_WORKER_DIR": str(logs / "work")}  # fmt: skip
    port, ui, worker_ui = _free_port(), _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(subprocess.Popen([_spark_bin("spark-class"), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                       "--port", str(port), "--webui-port", str(ui)],
                                      env=env, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT))  # fmt: skip
        procs.append(subprocess.Popen([_spark_bin("spark-class"), "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                                       "--cores", "2", "--memory", "3g", "--webui-port", str(worker_ui), url],
                                      env=env, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT))  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            try:
                state = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json", timeout=2))
                if state.get("aliveworkers", 0) >= 1:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standalone cluster did not come up; logs in {logs}")
            time.sleep(1)
        yield {"url": url, "env": env}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def submit(cluster, job: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [_spark_bin("spark-submit"), "--master", cluster["url"], "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.executor.memory=1g", "--conf", "spark.ui.enabled=false", str(REPO / "jobs" / f"{job}.py"), *args]  # fmt: skip
    return subprocess.run(cmd, env=cluster["env"], capture_output=True, text=True, timeout=600)


def test_the_jobs_run_on_a_standalone_cluster(cluster, tmp_path):
    tree = make_caltech_tree(tmp_path / "data", per_class=8, bad_files=False)
    out = tmp_path / "out"
    ing = submit(cluster, "ingest", "--images", f"file://{tree['root']}", "--output", f"file://{out}/images.parquet", "--json", "--quiet")
    assert ing.returncode == 0, ing.stderr[-3000:]
    assert json.loads(ing.stdout)["rows_out"] == 24
    feat = submit(cluster, "featurize", "--input", f"file://{out}/images.parquet", "--output", f"file://{out}/features.parquet",
                  "--backbone", "tiny", "--random-init", "--json", "--quiet")  # fmt: skip
    assert feat.returncode == 0, feat.stderr[-3000:]
    for master in ("averaging", "sharing"):
        tr = submit(cluster, "train", "--features", f"file://{out}/features.parquet", "--output", str(out / f"model-{master}"),
                    "--master", master, "--workers", "2", "--epochs", "2", "--batch-size-per-worker", "4",
                    "--threshold", "target-sparsity:0.1", "--json", "--quiet")  # fmt: skip
        assert tr.returncode == 0, tr.stderr[-3000:]
        assert json.loads(tr.stdout)["epochs_run"] == 2
    ev = submit(cluster, "evaluate", "--model", str(out / "model-sharing"), "--features", f"file://{out}/features.parquet", "--json", "--quiet")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout)["split"] == "test" and 0.0 <= json.loads(ev.stdout)["accuracy"] <= 1.0
    missing = submit(cluster, "ingest", "--images", f"file://{tmp_path}/nope", "--output", f"file://{out}/x.parquet", "--quiet")
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout; the JVM logs on stderr
    errors = [line for line in missing.stdout.splitlines() if ": error: " in line]
    assert missing.returncode == 1 and len(errors) == 1 and "does not exist" in errors[0], missing.stdout[-3000:]
