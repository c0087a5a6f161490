"""ParameterAveragingTrainingMaster on real Spark local[2]: exactness against single-process references,
bad input, distributed evaluation."""
import numpy as np
import pytest
import torch
from torch import nn

from datagen import make_features_table
from sparkdl.config import AveragingConfig, HeadConfig, OptimizerConfig, RunConfig, TrainConfig
from sparkdl.data.features import read_features
from sparkdl.errors import DataError
from sparkdl.evaluate import evaluate_head, metrics_from_logits
from sparkdl.launch.local import LocalLauncher
from sparkdl.train.driver import ParameterAveragingTrainingMaster
from sparkdl.model import HeadSpec, build_head
from sparkdl.train.local import build_optimizer, get_params

pytestmark = pytest.mark.spark

DIM, CLASSES = 6, 4


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("feat") / "features.parquet")
    return make_features_table(spark, uri, n=0, dim=DIM, n_classes=CLASSES, seed=3,
                               split_counts={"train": 60, "valid": 20, "test": 20})  # fmt: skip


def _rows_by_path(table):
    return {r[0]: (np.asarray(r[4], np.float32), r[2]) for r in table["rows"]}


def _plan(master, df, epoch):
    return master.epoch_plan(df, epoch)


def _replay(master, df, table, model, opt):
    """The single-process reference: every epoch of the master's own plan; in each round, minibatch step ``s``
    takes rows ``s*B .. (s+1)*B - 1`` of every worker's round together, as one optimizer step (mean cross-entropy).
    For ``averaging_frequency = 1`` that is one large-batch step per round; for one worker, plain local training."""
    rows = _rows_by_path(table)
    cfg = master.config
    b = cfg.batch_size_per_worker
    for epoch in range(cfg.epochs):
        plan = _plan(master, df, epoch)
        for rnd in sorted({p[0] for p in plan}):
            in_round = [p for p in plan if p[0] == rnd]
            for s in range(cfg.algorithm.frequency):
                chunk = [p for p in in_round if s * b <= p[2] < (s + 1) * b]
                if not chunk:
                    continue
                x = torch.from_numpy(np.stack([rows[p[3]][0] for p in chunk]))
                y = torch.tensor([rows[p[3]][1] for p in chunk])
                opt.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                opt.step()


def test_plan_is_balanced_and_covers_every_row(spark, table):
    df, _ = read_features(spark, table["uri"])
    master = ParameterAveragingTrainingMaster(TrainConfig(run=RunConfig(workers=3), batch_size_per_worker=4,
                                                          algorithm=AveragingConfig(frequency=2)))  # fmt: skip
    plan = _plan(master, df, 0)
    assert len(plan) == 60 and len({p[3] for p in plan}) == 60
    per = {}
    for rnd, worker, _, _ in plan:
        per[(rnd, worker)] = per.get((rnd, worker), 0) + 1
    # 60 rows -> 3 shards of 20; 8 rows per worker per round: rounds 0 and 1 full, round 2 has 4 per worker
    assert per == {**{(r, w): 8 for r in (0, 1) for w in range(3)}, **{(2, w): 4 for w in range(3)}}
    shards = {w: {p[3] for p in plan if p[1] == w} for w in range(3)}
    again = _plan(master, df, 1)
    assert again != plan  # each worker visits its shard in a new order every epoch
    assert {w: {p[3] for p in again if p[1] == w} for w in range(3)} == shards  # shards are fixed for the fit
    assert _plan(master, df, 0) == plan  # deterministic


@pytest.mark.parametrize(
    "workers, batch, rounds, execution, launcher",
    [
        # 60 rows / 12 per round: 5 equal rounds per epoch; the driver sums (no tree level)
        (3, 4, 10, "rounds", None),
        # 8 shards of 7-8 rows, 1 row each per round: a short last round of 4; treeReduce with one intermediate level
        (8, 1, 16, "rounds", None),
        # the barrier execution: 2 tasks of a real barrier stage summing over gRPC ...
        (2, 6, 10, "barrier", None),
        # ... and 8 threads on a tree of fan-out 2 (3 levels), in-process transport
        (8, 1, 16, "barrier", "local"),
    ],
)
def test_plain_sgd_frequency_1_equals_large_batch_sgd(spark, table, workers, batch, rounds, execution, launcher):
    """W workers, B rows each, averaging every minibatch, plain SGD == one SGD step on the round's W*B rows."""
    df, _ = read_features(spark, table["uri"])
    cfg = TrainConfig(run=RunConfig(workers=workers, aggregation_depth=2, execution=execution, tree_fanout=2), epochs=2,
                      batch_size_per_worker=batch, algorithm=AveragingConfig(frequency=1),
                      optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.0), seed=7)  # fmt: skip
    master = ParameterAveragingTrainingMaster(cfg, launcher=LocalLauncher() if launcher == "local" else None)
    head = build_head(cfg.head, DIM, CLASSES, seed=cfg.seed)
    ref = build_head(cfg.head, DIM, CLASSES, seed=cfg.seed)
    result = master.fit(df, head, CLASSES)

    _replay(master, df, table, ref, torch.optim.SGD(ref.parameters(), lr=0.1))
    for k, v in get_params(ref).items():
        np.testing.assert_allclose(result.final_params[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    assert result.stats["iterations"] == rounds


@pytest.mark.parametrize("execution", ["rounds", "barrier"])
def test_one_worker_with_state_averaging_equals_local_training(spark, table, execution):
    """One worker, several minibatches per round, Nesterov momentum carried across rounds == plain local fit."""
    df, _ = read_features(spark, table["uri"])
    cfg = TrainConfig(run=RunConfig(workers=1, execution=execution), epochs=2, batch_size_per_worker=5,
                      algorithm=AveragingConfig(frequency=3),
                      optimizer=OptimizerConfig(name="nesterov", lr=0.05, momentum=0.8), seed=11)  # fmt: skip
    master = ParameterAveragingTrainingMaster(cfg)
    result = master.fit(df, build_head(cfg.head, DIM, CLASSES, seed=cfg.seed), CLASSES)
    ref = build_head(cfg.head, DIM, CLASSES, seed=cfg.seed)
    _replay(master, df, table, ref, build_optimizer(cfg.optimizer, ref.parameters()))
    for k, v in get_params(ref).items():
        np.testing.assert_allclose(result.final_params[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_both_executions_give_the_same_model(spark, table):
    """Same plan, same math: the barrier stage (Adam, state averaging, 2 workers, frequency 2) ends where the
    job-per-round execution does, up to float summation order."""
    df, _ = read_features(spark, table["uri"])
    results = {}
    for execution in ("rounds", "barrier"):
        cfg = TrainConfig(run=RunConfig(workers=2, execution=execution), epochs=2, batch_size_per_worker=4,
                          algorithm=AveragingConfig(frequency=2),
                          optimizer=OptimizerConfig(name="adam", lr=0.01, momentum=0.0), seed=3)  # fmt: skip
        results[execution] = ParameterAveragingTrainingMaster(cfg).fit(df, build_head(cfg.head, DIM, CLASSES, seed=2), CLASSES)
    for k, v in results["rounds"].final_params.items():
        np.testing.assert_allclose(results["barrier"].final_params[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
    a, b = results["rounds"].history, results["barrier"].history
    assert [h.valid_accuracy for h in a] == [h.valid_accuracy for h in b]


def test_learns_and_keeps_the_best_epoch(spark, table):
    df, _ = read_features(spark, table["uri"])
    cfg = TrainConfig(run=RunConfig(workers=2), epochs=4, batch_size_per_worker=8, algorithm=AveragingConfig(frequency=2),
                      head=HeadConfig.parse("mlp:16"),
                      optimizer=OptimizerConfig(name="adam", lr=0.05, momentum=0.0))  # fmt: skip
    head = build_head(cfg.head, DIM, CLASSES, seed=1)
    result = ParameterAveragingTrainingMaster(cfg).fit(df, head, CLASSES)
    valid = [h.valid_accuracy for h in result.history]
    assert result.best_epoch == int(np.argmax(valid))
    assert max(valid) >= 0.8  # separable clusters
    spec = HeadSpec.from_module(cfg.head, DIM, CLASSES, result.head)
    assert evaluate_head(df.filter("split = 'valid'"), spec, CLASSES).accuracy == pytest.approx(max(valid))


def test_distributed_evaluation_equals_local(spark, table):
    df, _ = read_features(spark, table["uri"])
    head = build_head(HeadConfig(), DIM, CLASSES, seed=5)
    spec = HeadSpec.from_module(HeadConfig(), DIM, CLASSES, head)
    m = evaluate_head(df.repartition(3), spec, CLASSES)
    x = np.stack([np.asarray(r[4], np.float32) for r in table["rows"]])
    y = np.array([r[2] for r in table["rows"]])
    with torch.inference_mode():
        local = metrics_from_logits(head(torch.from_numpy(x)).numpy().astype(np.float64), y, CLASSES)
    assert m.confusion == local.confusion
    assert m.accuracy == local.accuracy and m.macro_f1 == pytest.approx(local.macro_f1)
    assert m.loss == pytest.approx(local.loss, rel=1e-5)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r, i: (r[0], r[1], r[2], r[3], r[4][:-1]) if i in (3, 9) else r, r"mixed lengths \(5\.\.6\): 2 rows differ"),
        (lambda r, i: (r[0], r[1], r[2], r[3], [float("nan")] + r[4][1:]) if i < 3 else r, r"NaN/inf/null values in 3 rows"),
        (lambda r, i: (r[0], r[1], 7, r[3], r[4]) if i == 0 else r, r"'label_index' is null or outside \[0, 4\) in 1 rows"),
        (lambda r, i: (r[0], r[1], r[2], "valid" if r[3] == "train" else r[3], r[4]), r"'split' has no 'train' rows"),
    ],
)
def test_bad_input_is_refused_before_training(spark, table, tmp_path, mutate, message):
    rows = [mutate(r, i) for i, r in enumerate(table["rows"])]
    df = spark.createDataFrame(rows, "path string, label string, label_index int, split string, features array<float>")
    master = ParameterAveragingTrainingMaster(TrainConfig(run=RunConfig(workers=2), epochs=1))
    with pytest.raises(DataError, match=message):
        master.fit(df, build_head(HeadConfig(), DIM, CLASSES), CLASSES)
