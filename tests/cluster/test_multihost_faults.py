"""Faults that only exist with hosts, on a standalone cluster of separate hosts (network namespaces: a master, three
Workers of 2 + 1 + 1 cores, the driver on its own host). ``spark-submit`` of the packaged train job with
``--workers 4 --min-workers 2``; after the second checkpoint one worker host is

* **lost**: every process in its namespace killed (Worker, executor JVM, Python workers);
* **partitioned**: its link taken down (``ip link set ... down``); its processes live on, unreachable.

Both in one fit (one application: this cluster costs ~40 s an application on 2 cores): one host lost after the
checkpoint of epoch 2, another partitioned after that of epoch 4. Each time the fit is launched again from the
checkpoint on the slots left (elastic: 4 -> 3 -> 2 workers), no rank on the lost hosts afterwards; it finishes within
a point of a clean run of the same math and records both failures; the partition becomes a failed attempt within the
transport's keepalive bound (``2 x keepalive_s``), never a hang, and the driver drops the unreachable host's
executors."""
from __future__ import annotations

import json
import re
import time

import pytest

from cluster_services import FIT_ARGS, FIT_CLASSES, FIT_DIM, watched
from spark_hosts import multihost_cluster
from where import AppRun, app_logs

pytestmark = [pytest.mark.spark, pytest.mark.slow]

# 20 epochs (8 in FIT_ARGS): after the first, an epoch takes ~0.2 s here; the faults must land before the fit ends
ARGS = ["--workers", "4", "--min-workers", "2", "--slot-wait", "3", *FIT_ARGS, "--epochs", "20"]


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


def _train_with_faults(hosts, features: str, out, faults: dict[int, object]) -> tuple[int, str, dict[int, float], AppRun | None]:
    """Submit the train job from the driver's host; ``faults[N]()`` runs once, right after the checkpoint of epoch N
    (in order: a later one only after the earlier ones). Returns (exit code, sparkdl's lines, when each fault ran
    (wall clock), the app's record)."""
    before = set(app_logs(hosts.events))
    cmd = hosts.submit_command(hosts.job("train"), "--features", features, "--output", str(out), *ARGS)
    done: dict[int, float] = {}
    order = sorted(faults)

    def on_line(line: str) -> None:
        found = re.search(r"train: checkpoint after epoch (\d+)\b", line)
        pending = [n for n in order if n not in done]
        if found and pending and int(found[1]) == pending[0]:
            done[pending[0]] = time.time()
            faults[pending[0]]()

    code, lines = watched(cmd, on_line, env=hosts.env(hosts.driver), timeout=540, merged=True)
    (out.parent / "train.log").write_text("".join(lines))  # for a failed test: the driver's whole output
    ours = "".join(ln for ln in lines if ln.startswith(("sparkdl", "train:", "{")) or " train: " in ln)
    return code, ours, done, hosts.app_of(before)


def _ips(placement: dict) -> set[str]:
    return {a.rsplit(":", 1)[0] for a in placement["addresses"]}


def test_a_lost_then_a_partitioned_worker_host_are_survived_from_checkpoints(hosts, fit_features, clean_accuracy, tmp_path):
    from sparkdl.config import TransportConfig

    lost, cut = hosts.workers[2], hosts.workers[1]
    killed: list[int] = []
    try:
        code, log, when, app = _train_with_faults(hosts, fit_features, tmp_path / "model",
                                                  {2: lambda: killed.extend(hosts.kill(lost)), 4: lambda: hosts.partition(cut)})  # fmt: skip
    finally:
        hosts.heal(cut)
    assert killed and set(when) == {2, 4}, "the faults did not both happen:\n" + log[-3000:]
    assert code == 0, log[-4000:]
    out = tmp_path / "model"
    metrics = json.loads((out / "metrics.json").read_text())
    first, second = metrics["failures"]
    assert (first["resume_epoch"], first["workers_after"]) == (2, 3), metrics["failures"]
    assert (second["resume_epoch"], second["workers_after"]) == (4, 2), metrics["failures"]
    # the partitioned host: the peers named it, the driver could not reach it either, its executors were dropped
    assert second["hosts_dropped"] == [cut.ip], second
    assert metrics["attempts"] == 3 and metrics["workers_final"] == 2 and metrics["epochs_run"] == 20
    p1, p2, p3 = metrics["placements"]
    assert lost.ip in _ips(p1) and lost.ip not in _ips(p2) | _ips(p3), metrics["placements"]
    assert cut.ip in _ips(p2) and cut.ip not in _ips(p3), metrics["placements"]
    assert abs(metrics["test"]["accuracy"] - clean_accuracy) <= 0.01, (metrics["test"]["accuracy"], clean_accuracy)
    hosts.assert_ran_on_workers(app, "sparkdl-train", min_hosts=3)
    # never a hang: the partitioned attempt's barrier job failed within the links' keepalive bound (2 x keepalive_s)
    # and a few seconds of Spark cancelling the stage, not after spark.network.timeout
    failed = app.failed_jobs("sparkdl-train")
    assert len(failed) == 2, failed
    took = failed[-1].completed_ms / 1000 - when[4]
    bound = 2 * TransportConfig().keepalive_s + 15  # < spark.network.timeout (60 s here): not Spark's heartbeat timeout
    assert 0 < took < bound, (took, bound)
