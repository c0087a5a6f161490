"""Surviving a lost executor, on ``local-cluster[2,1,1024]`` (two real executor JVMs, their Python workers their
children): ``sparkdl train`` runs as a separate process; after its second checkpoint the test kills one executor's
Python worker, after its fourth the executor JVM itself. The fit is launched again from the latest checkpoint each
time, finishes with exit 0, records both failures, and ends where a clean run ends (bit-identical resume: the same
test accuracy)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from cluster_services import FIT_ARGS, FIT_CLASSES, FIT_DIM, watched

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DIM, CLASSES = FIT_DIM, FIT_CLASSES


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids[ppid].append(int(name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _executors(driver: int) -> list[int]:
    """The executor JVMs started (through the local-cluster Worker) by the driver process ``driver``."""
    return sorted(p for p in _descendants(driver) if "CoarseGrainedExecutorBackend" in _cmdline(p))


def _python_workers(executor: int) -> list[int]:
    """The forked Python workers under ``executor`` (children of its pyspark.daemon): the one running the barrier task,
    and any idle one kept for reuse (killing those too does no harm)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [pid for pid in _descendants(executor)
                 if "pyspark.daemon" in _cmdline(pid) and "pyspark.daemon" in _cmdline(_parent(pid) or 0)]  # fmt: skip
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no Python worker under executor {executor}")


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.fixture
def features(fit_features):
    return fit_features


ARGS = ["--workers", "2", *FIT_ARGS]


def _train(features: str, out: str, master: str, spark_master: str, kills: dict[int, str], log) -> dict:
    """``sparkdl train`` in its own process; ``kills``: after the checkpoint of epoch N, kill ``python`` (rank 0's
    executor's Python worker) or ``jvm`` (that executor). Returns metrics.json."""
    cmd = [sys.executable, "-m", "sparkdl.cli", "train", "--features", features, "--output", out, "--training-master", master,
           "--spark-master", spark_master, "--max-attempts", "3", *ARGS]  # fmt: skip
    killed: list[str] = []

    def on_line(line: str) -> None:
        found = re.search(r"train: checkpoint after epoch (\d+)", line)
        if found and int(found[1]) in kills:
            what = kills[int(found[1])]
            executors = _executors(proc_pid[0])
            assert executors, "no executor JVMs found"
            for target in _python_workers(executors[0]) if what == "python" else [executors[0]]:
                os.kill(target, signal.SIGKILL)
            killed.append(what)

    proc_pid: list[int] = []
    code, lines = watched(cmd, on_line, log=log, started=proc_pid.append)
    assert code == 0, "".join(lines[-40:])
    assert killed == [kills[k] for k in sorted(kills)], "".join(lines[-40:])
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


# sharing only: averaging survives a lost host and a partition on the multi-host cluster (test_multihost_faults)
@pytest.mark.parametrize("master", ["sharing"])
def test_a_fit_survives_a_killed_python_worker_and_a_killed_executor(spark, features, tmp_path, master):
    from sparkdl.config import TrainConfig
    from sparkdl.cli.options import train_config
    from sparkdl.cli import build_parser
    from sparkdl.train.run import train_head

    # the clean run: the same options, in this process on local[2]
    args = build_parser().parse_args(["train", "--features", features, "--output", str(tmp_path / "clean"),
                                      "--training-master", master, *ARGS])  # fmt: skip
    cfg: TrainConfig = train_config(args)
    clean = train_head(spark, features, tmp_path / "clean", cfg)
    with open(tmp_path / "train.log", "w") as log:
        metrics = _train(features, str(tmp_path / "model"), master, "local-cluster[2,1,1024]", {2: "python", 4: "jvm"}, log)
    assert metrics["attempts"] == 3
    first, second = metrics["failures"]
    assert first["resume_epoch"] == 2 and second["resume_epoch"] == 4, metrics["failures"]
    assert first["epoch"] in (2, 3) and second["epoch"] in (4, 5)  # killed while running the epoch after the checkpoint
    assert abs(metrics["test"]["accuracy"] - clean.metrics["test"]["accuracy"]) <= 0.01
    assert metrics["epochs_run"] == 8


EIGHT = """
import json, sys
from sparkdl.config import AveragingConfig, RunConfig, SessionConfig, SharingConfig, ThresholdConfig, TrainConfig
from sparkdl.data.features import read_features
from sparkdl.model import build_head
from sparkdl.session import build_session
from sparkdl.train.driver import build_master

spark = build_session(SessionConfig(master="local-cluster[2,4,1024]"))
df, _ = read_features(spark, sys.argv[1])
out = {}
for algorithm in (AveragingConfig(frequency=2), SharingConfig(threshold=ThresholdConfig("target-sparsity", 0.05))):
    cfg = TrainConfig(algorithm=algorithm, run=RunConfig(workers=8, tree_fanout=2), epochs=2, batch_size_per_worker=8)
    r = build_master(cfg).fit(df, build_head(cfg.head, %d, %d, seed=0), %d)
    out[cfg.master] = {"identical": r.stats["ranks_identical"], "ranks": len(r.stats.get("workers", [])),
                       "loss": [h.train_loss for h in r.history], "valid": r.history[-1].valid_accuracy}
print(json.dumps(out))
spark.stop()
""" % (DIM, CLASSES, CLASSES)


def test_eight_workers_on_two_executor_jvms(features):
    """Both masters at W = 8 on local-cluster (2 executors x 4 slots): sharing's 8 ranks end bit-identical,
    averaging's allreduce gives every rank the root's bits (checked in every fit), both learn."""
    res = subprocess.run([sys.executable, "-c", EIGHT, features], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["averaging"]["identical"] and out["sharing"]["identical"] and out["sharing"]["ranks"] == 8
    for master in ("averaging", "sharing"):
        assert out[master]["loss"][-1] < out[master]["loss"][0] and out[master]["valid"] > 0.5, out
