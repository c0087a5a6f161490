"""Correctness does not depend on W = 2: the sharing tree relay with 16 and 64 ranks (in-process launcher, threads)
keeps every rank bit-identical and delivers every update exactly once; parameter averaging at 16 ranks equals one
large-batch SGD step per round."""
import numpy as np
import pytest
import torch
from torch import nn

from datagen import make_features_table
from sparkdl.collective import tree
from sparkdl.config import AveragingConfig, OptimizerConfig, RunConfig, SharingConfig, ThresholdConfig, TrainConfig
from sparkdl.data.features import read_features
from sparkdl.launch.local import LocalLauncher
from sparkdl.model import build_head
from sparkdl.train.driver import ParameterAveragingTrainingMaster, build_master
from sparkdl.train.local import build_optimizer, get_params

pytestmark = pytest.mark.spark

DIM, CLASSES = 8, 3


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("many") / "features.parquet")
    info = make_features_table(spark, uri, n=0, dim=DIM, n_classes=CLASSES, seed=7,
                               split_counts={"train": 320, "valid": 64})  # fmt: skip
    return {**info, "df": read_features(spark, uri)[0]}


@pytest.mark.parametrize("world, fanout", [(16, 2), (64, 3)])
def test_the_tree_relay_keeps_every_rank_bit_identical(table, world, fanout):
    assert tree.depth(world, fanout) >= 3  # messages cross several relays
    cfg = TrainConfig(algorithm=SharingConfig(threshold=ThresholdConfig("target-sparsity", 0.1)),
                      run=RunConfig(workers=world, tree_fanout=fanout), epochs=2, batch_size_per_worker=2, seed=4,
                      optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9))  # fmt: skip
    result = build_master(cfg, LocalLauncher()).fit(table["df"], build_head(cfg.head, DIM, CLASSES, seed=0), CLASSES)
    stats = result.stats
    assert stats["ranks_identical"] and len(stats["workers"]) == world
    steps = stats["iterations"]
    assert steps == 2 * -(-(320 // world) // 2)  # 20 or 5 rows per rank, batches of 2: 10 or 3 steps per epoch
    # every rank applied all W updates of every step (synchronous: it waits for them) and none twice: a relayed copy
    # arriving again would be counted as a duplicate
    for w in stats["workers"]:
        assert w["update_bytes"] > 0 and w["bytes_received"] > 0 and w["duplicates"] == 0
    assert stats["update_bytes"] < stats["dense_equivalent_bytes"]
    assert result.history[-1].train_loss < result.history[0].train_loss * 1.5


def test_averaging_at_sixteen_ranks_is_large_batch_sgd(table):
    world = 16
    cfg = TrainConfig(algorithm=AveragingConfig(frequency=1), run=RunConfig(workers=world, tree_fanout=3), epochs=2,
                      batch_size_per_worker=2, seed=9, optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.0))  # fmt: skip
    head = build_head(cfg.head, DIM, CLASSES, seed=2)
    reference = build_head(cfg.head, DIM, CLASSES, seed=2)
    result = build_master(cfg, LocalLauncher()).fit(table["df"], head, CLASSES)
    # the reference: the master's own plan of each epoch; per round, one SGD step on the mean over the workers of
    # each worker's minibatch mean loss
    by_path = {r[0]: (np.asarray(r[4], np.float32), r[2]) for r in table["rows"]}
    planner = ParameterAveragingTrainingMaster(cfg)
    opt = build_optimizer(cfg.optimizer, reference.parameters())
    for epoch in range(cfg.epochs):
        plan = planner.epoch_plan(table["df"], epoch)
        for r in sorted({p[0] for p in plan}):
            batches = {}
            for _, worker, _, path in sorted(p for p in plan if p[0] == r):
                batches.setdefault(worker, []).append(by_path[path])
            opt.zero_grad()
            for b in batches.values():
                x = torch.from_numpy(np.stack([v for v, _ in b]))
                y = torch.tensor([label for _, label in b])
                (nn.functional.cross_entropy(reference(x), y) / len(batches)).backward()
            opt.step()
    for k, v in get_params(reference).items():
        np.testing.assert_allclose(result.final_params[k], v, rtol=1e-5, atol=1e-6, err_msg=k)
