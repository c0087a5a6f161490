"""A fit that diverges (NaN/inf loss or parameters) stops with one DivergedError naming the epoch and round, on every
master and execution, and writes no model; a barrier fit whose worker dies fails once, without a retry."""
import os
import sys

import numpy as np
import pytest
import torch
from pyspark import cloudpickle

from sparkdl.config import AveragingConfig, HeadConfig, RunConfig, SharingConfig, TrainConfig
from sparkdl.data import tables
from sparkdl.data.features import read_features
from sparkdl.errors import DivergedError, WorkerFailedError
from sparkdl.launch.spark import SparkBarrierLauncher
from sparkdl.model import build_head
from sparkdl.train.driver import build_master
from sparkdl.train.tracker import EpochTracker

pytestmark = pytest.mark.spark
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors cannot import this test module

DIM, CLASSES = 4, 2
ADVICE = r"lower --lr \(now 0\.01\) or scale the features"


@pytest.fixture(scope="module")
def exploding(spark, tmp_path_factory):
    """16 train + 8 valid rows of small features, two of the train rows all +3e38 / -3e38 (finite float32)."""
    rng = np.random.default_rng(0)
    rows = [(f"file:/gen/{i:03d}.jpg", f"c{i % 2}", i % 2, "train" if i < 16 else "valid",
             [float(v) for v in rng.normal(size=DIM)]) for i in range(24)]  # fmt: skip
    rows[3] = ("file:/gen/003.jpg", "c1", 1, "train", [3e38] * DIM)
    rows[8] = ("file:/gen/008.jpg", "c0", 0, "train", [-3e38] * DIM)
    uri = str(tmp_path_factory.mktemp("diverge") / "features.parquet")
    df = spark.createDataFrame(rows, "path string, label string, label_index int, split string, features array<float>")
    df.write.parquet(uri)
    tables.write_meta(spark, uri, {"format": "sparkdl.features/1", "labels": ["c0", "c1"], "feature_dim": DIM,
                                   "backbone": {"name": "synthetic", "feature_dim": DIM}})  # fmt: skip
    return uri


def _overflowing_head():
    """Logits +-4 x 3e38 = +-inf on the huge rows: the loss is NaN on the first minibatch that holds one."""
    head = build_head(HeadConfig(), DIM, CLASSES, seed=0)
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([[1.0] * DIM, [-1.0] * DIM]))
    return head


@pytest.mark.parametrize("master, execution",
                         [("averaging", "barrier"), ("averaging", "rounds"), ("sharing", "barrier")])  # fmt: skip
def test_every_master_stops_with_the_epoch_and_round(spark, exploding, master, execution):
    df, _ = read_features(spark, exploding)
    algorithm = AveragingConfig() if master == "averaging" else SharingConfig()
    cfg = TrainConfig(algorithm=algorithm, run=RunConfig(execution=execution, workers=2), epochs=2, batch_size_per_worker=4)
    unit = "round" if master == "averaging" else "step"
    expected = rf"^training diverged in epoch 1/2, {unit} [1-4]: the training loss is nan; {ADVICE}"
    with pytest.raises(DivergedError, match=expected):
        build_master(cfg).fit(df, _overflowing_head(), CLASSES)


def test_non_finite_parameters_are_named():
    tracker = EpochTracker(TrainConfig(epochs=3))
    tracker.check_loss(1e30, 0, 0)
    tracker.check_finite([np.ones(3, np.float32), np.float32([1e38, -1e38])], 0, 0)  # large but finite: no error
    with pytest.raises(DivergedError, match=rf"epoch 2/3, round 5: the parameters hold NaN or inf; {ADVICE}"):
        tracker.check_finite([np.ones(3, np.float32), np.float32([0.0, np.inf])], 1, 4)


def test_the_cli_prints_one_line_and_writes_no_model(exploding, tmp_path):
    from test_cli import one_line_error, run

    model = tmp_path / "model"
    res = run("train", "--features", exploding, "--output", str(model), "--workers", "2", "--epochs", "2", "--quiet")
    assert res.returncode == 1, res.stderr
    line = one_line_error(res.stderr)  # exactly one error line, the last, and no traceback
    assert line.startswith("sparkdl train: error: training diverged in epoch ")
    assert "round" in line and "lower --lr (now 0.01) or scale the features" in line
    assert not model.exists() and not (tmp_path / "model.partial").exists()


def _dies_on_rank_1(ctx, rows):
    marker = os.path.join(list(rows)[0], f"attempt-rank{ctx.rank}-{os.getpid()}")
    open(marker, "w").close()
    if ctx.rank == 1:
        os._exit(3)  # the Python worker dies: no exception, no goodbye
    ctx.barrier()


def test_a_barrier_fit_whose_worker_dies_fails_once_without_a_retry(spark, tmp_path):
    rdd = spark.sparkContext.parallelize([str(tmp_path)] * 2, 2)
    with pytest.raises(WorkerFailedError, match=r"worker rank 1 died .* does not retry a barrier stage: run it again"):
        SparkBarrierLauncher().run(_dies_on_rank_1, rdd)
    assert len([p for p in os.listdir(tmp_path) if p.startswith("attempt-rank1")]) == 1  # Spark ran it once
