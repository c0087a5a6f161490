"""Faults that only exist with hosts, on a standalone cluster of separate hosts (network namespaces: a master, three
Workers of 2 + 1 + 1 cores, the driver on its own host). ``spark-submit`` of the packaged train job with
``--workers 4 --min-workers 2``; after the second checkpoint one worker host is

* **lost**: every process in its namespace killed (Worker, executor JVM, Python workers);
* **partitioned**: its link taken down (``ip link set ... down``); its processes live on, unreachable.

Either way the fit is launched again from the checkpoint on the slots left (elastic), finishes within a point of a
clean run of the same math, and records the failure; the partition becomes a failed attempt within the transport's
keepalive bound (``2 x keepalive_s``) plus the driver's reachability probe, never a hang."""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest

from cluster_services import FIT_ARGS, FIT_CLASSES, FIT_DIM
from spark_hosts import multihost_cluster
from where import AppRun, app_logs

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ARGS = ["--workers", "4", "--min-workers", "2", "--slot-wait", "3", *FIT_ARGS]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with multihost_cluster(tmp_path_factory.mktemp("mh-faults"), [2, 1, 1], worker_memory="1500m") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def clean_accuracy(spark, fit_features, tmp_path_factory) -> float:
    """The same options' clean four-worker fit (in-process ranks: the same math), its test accuracy."""
    from sparkdl.cli import build_parser
    from sparkdl.cli.options import train_config
    from sparkdl.evaluate import evaluate_head
    from sparkdl.launch.local import LocalLauncher
    from sparkdl.model import HeadSpec, build_head
    from sparkdl.train.driver import build_master

    out = tmp_path_factory.mktemp("clean") / "model"
    cfg = train_config(build_parser().parse_args(["train", "--features", fit_features, "--output", str(out), *ARGS]))
    df = spark.read.parquet(fit_features)
    result = build_master(cfg, LocalLauncher()).fit(df, build_head(cfg.head, FIT_DIM, FIT_CLASSES, seed=cfg.seed), FIT_CLASSES)
    spec = HeadSpec.from_module(cfg.head, FIT_DIM, FIT_CLASSES, result.head)
    return evaluate_head(df.filter("split = 'test'"), spec, FIT_CLASSES).accuracy


def _train_with_fault(hosts, features: str, out, fault) -> tuple[int, str, float | None, AppRun | None]:
    """Submit the train job from the driver's host; call ``fault()`` once, right after the checkpoint of epoch 2.
    Returns (exit code, its output, the fault's wall-clock time, the app's record)."""
    before = set(app_logs(hosts.events))
    cmd = hosts.submit_command(hosts.job("train"), "--features", features, "--output", str(out), *ARGS)
    # spark-submit hands the Python driver's stderr (the progress lines) to its own stdout
    proc = subprocess.Popen(cmd, env=hosts.env(hosts.driver), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    faulted: list[float] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            if not faulted and re.search(r"train: checkpoint after epoch 2\b", line):
                faulted.append(time.time())
                fault()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    (out.parent / "train.log").write_text("".join(lines))  # for a failed test: the driver's whole output
    ours = "".join(ln for ln in lines if ln.startswith(("sparkdl", "train:", "{")) or " train: " in ln)
    return proc.returncode, ours, faulted[0] if faulted else None, hosts.app_of(before)


def _check(out, code: int, log: str, clean: float, app: AppRun | None, hosts, lost_ip: str) -> dict:
    assert code == 0, log[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    [failure] = metrics["failures"]
    assert failure["resume_epoch"] == 2 and failure["workers_after"] == 3, metrics["failures"]
    assert metrics["attempts"] == 2 and metrics["workers_final"] == 3 and metrics["epochs_run"] == 8
    first, second = metrics["placements"]
    assert lost_ip in {a.rsplit(":", 1)[0] for a in first["addresses"]}  # the lost host held a rank...
    assert lost_ip not in {a.rsplit(":", 1)[0] for a in second["addresses"]}  # ...and none after the re-launch
    assert abs(metrics["test"]["accuracy"] - clean) <= 0.01, (metrics["test"]["accuracy"], clean)
    hosts.assert_ran_on_workers(app, "sparkdl-train", min_hosts=3)
    return failure


def test_a_lost_worker_host_is_survived_from_the_checkpoint(hosts, fit_features, clean_accuracy, tmp_path):
    victim = hosts.workers[2]
    killed: list[int] = []
    code, log, _, app = _train_with_fault(hosts, fit_features, tmp_path / "model",
                                          lambda: killed.extend(hosts.kill(victim)))  # fmt: skip
    assert killed, "the fault never happened"
    failure = _check(tmp_path / "model", code, log, clean_accuracy, app, hosts, victim.ip)
    assert "lost" in failure["cause"] or "unreachable" in failure["cause"] or "broke" in failure["cause"], failure
    # the host is back for the next test
    hosts.start_worker(2)
    hosts.wait_for_workers(3)


def test_a_partitioned_worker_host_fails_the_attempt_in_bounded_time(hosts, fit_features, clean_accuracy, tmp_path):
    from sparkdl.config import TransportConfig

    victim = hosts.workers[1]
    try:
        code, log, fault_at, app = _train_with_fault(hosts, fit_features, tmp_path / "model",
                                                     lambda: hosts.partition(victim))  # fmt: skip
    finally:
        hosts.heal(victim)
    assert fault_at is not None, "the fault never happened: " + log[-3000:]
    failure = _check(tmp_path / "model", code, log, clean_accuracy, app, hosts, victim.ip)
    # the peers named it, the driver could not reach it either: its executors were dropped at once
    assert failure.get("hosts_dropped") == [victim.ip], failure
    # never a hang: the barrier job of the partitioned attempt failed within the links' keepalive bound
    # (2 x keepalive_s) and a few seconds of Spark cancelling the stage, not after spark.network.timeout
    [failed] = app.failed_jobs("sparkdl-train")
    took = failed.completed_ms / 1000 - fault_at
    bound = 2 * TransportConfig().keepalive_s + 10
    assert 0 < took < bound, (took, bound)
