"""Elastic training on a real standalone cluster: three Workers of one core each, ``sparkdl train --workers 3
--min-workers 2``; after the second checkpoint one Worker process is killed (its executor goes with it). The driver
re-launches from the checkpoint on the two slots left, the shards dealt again, and the fit finishes within a point
of a clean three-worker run."""
from __future__ import annotations

import json
import os
import re
import signal
import sys

import pytest

from cluster_services import FIT_ARGS, FIT_CLASSES, FIT_DIM, standalone, watched

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DIM, CLASSES = FIT_DIM, FIT_CLASSES
ARGS = ["--workers", "3", *FIT_ARGS]


@pytest.fixture(scope="module")
def three_workers(tmp_path_factory):
    with standalone(tmp_path_factory.mktemp("elastic-logs"), [1, 1, 1], memory="1g") as running:
        yield running


@pytest.fixture
def features(fit_features):
    return fit_features


def test_losing_a_worker_goes_on_with_the_slots_left(spark, three_workers, features, tmp_path):
    from sparkdl.cli import build_parser
    from sparkdl.cli.options import train_config
    from sparkdl.evaluate import evaluate_head
    from sparkdl.launch.local import LocalLauncher
    from sparkdl.model import HeadSpec, build_head
    from sparkdl.train.driver import build_master

    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "sparkdl.cli", "train", "--features", features, "--output", str(out),
           "--spark-master", three_workers["url"], "--min-workers", "2", "--slot-wait", "5", *ARGS]  # fmt: skip
    killed: list[int] = []

    def on_line(line: str) -> None:
        if not killed and re.search(r"train: checkpoint after epoch 2\b", line):
            victim = three_workers["workers"][0]
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    code, lines = watched(cmd, on_line, env=three_workers["env"])
    tail = "".join(lines[-40:])
    assert code == 0 and killed, tail
    metrics = json.loads((out / "metrics.json").read_text())
    [failure] = metrics["failures"]
    assert failure["resume_epoch"] == 2 and failure["workers_after"] == 2, metrics["failures"]
    assert metrics["workers_final"] == 2 and metrics["attempts"] == 2 and metrics["epochs_run"] == 8

    # a clean three-worker run of the same options (same math, in-process ranks)
    args = build_parser().parse_args(["train", "--features", features, "--output", str(tmp_path / "clean"), *ARGS])
    cfg = train_config(args)
    df = spark.read.parquet(features)
    result = build_master(cfg, LocalLauncher()).fit(df, build_head(cfg.head, DIM, CLASSES, seed=cfg.seed), CLASSES)
    spec = HeadSpec.from_module(cfg.head, DIM, CLASSES, result.head)
    clean = evaluate_head(df.filter("split = 'test'"), spec, CLASSES).accuracy
    assert abs(metrics["test"]["accuracy"] - clean) <= 0.01, (metrics["test"]["accuracy"], clean)
