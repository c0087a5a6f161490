"""Checkpoints and resume on real Spark: a fit stopped after epoch k and resumed ends bit-identical to one that ran
through (averaging in both executions, synchronous sharing); a failed attempt is launched again from the latest
checkpoint; ``train_head --resume`` refuses a config that changes the math."""
import dataclasses

import numpy as np
import pytest
import torch

from datagen import make_features_table
from sparkdl.config import AveragingConfig, HeadConfig, OptimizerConfig, RunConfig, SharingConfig, ThresholdConfig, TrainConfig
from sparkdl.data.features import read_features
from sparkdl.errors import ConfigError, DataError, WorkerFailedError
from sparkdl.launch.local import LocalLauncher
from sparkdl.model import build_head
from sparkdl.train.checkpoint import CheckpointStore
from sparkdl.train.driver import build_master
from sparkdl.train.events import TrainingListener

pytestmark = pytest.mark.spark

DIM, CLASSES, EPOCHS = 6, 4, 4


@pytest.fixture(scope="module")
def features(spark, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("resume") / "features.parquet")
    make_features_table(spark, uri, n=0, dim=DIM, n_classes=CLASSES, seed=5,
                        split_counts={"train": 60, "valid": 16, "test": 8})  # fmt: skip
    return read_features(spark, uri)[0]


CONFIGS = {
    # Adam + optimizer-state averaging + dropout: every piece of state a checkpoint must carry
    "averaging-barrier": TrainConfig(algorithm=AveragingConfig(frequency=2), head=HeadConfig.parse("mlp:8", dropout=0.2),
                                     optimizer=OptimizerConfig(name="adam", lr=0.02, momentum=0.0), epochs=EPOCHS,
                                     batch_size_per_worker=4, seed=3, early_stopping_patience=3),
    "averaging-rounds": TrainConfig(algorithm=AveragingConfig(frequency=2), run=RunConfig(execution="rounds"),
                                    optimizer=OptimizerConfig(name="nesterov", lr=0.05, momentum=0.9), epochs=EPOCHS,
                                    batch_size_per_worker=4, seed=3),
    # momentum buffers, residuals, the adaptive threshold's calibration and decay
    "sharing": TrainConfig(algorithm=SharingConfig(threshold=ThresholdConfig("adaptive")), epochs=EPOCHS,
                           optimizer=OptimizerConfig(name="nesterov", lr=0.05, momentum=0.9), batch_size_per_worker=4,
                           seed=3),
}


def _with(cfg: TrainConfig, **run) -> TrainConfig:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run))


def _fit(features, cfg: TrainConfig, listeners=(), local: bool = False):
    """On Spark (a barrier stage of separate Python workers), or ``local``: ranks as threads of this process (the
    listeners then run on rank 0's thread, so one can fail it). Threads share torch's global RNG, so dropout is only
    reproducible on Spark: the local runs use heads without dropout."""
    launcher = LocalLauncher() if local else None
    return build_master(cfg, launcher).fit(features, build_head(cfg.head, DIM, CLASSES, seed=1), CLASSES, listeners)


def _assert_same(a, b) -> None:
    assert a.best_epoch == b.best_epoch
    assert set(a.final_params) == set(b.final_params)
    for k in a.final_params:
        assert a.final_params[k].tobytes() == b.final_params[k].tobytes(), k
    for k, v in a.head.state_dict().items():
        assert torch.equal(v, b.head.state_dict()[k]), k
    assert [(h.epoch, h.train_loss, h.valid_accuracy) for h in a.history] == [(h.epoch, h.train_loss, h.valid_accuracy) for h in b.history]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stopped_after_epoch_k_and_resumed_is_bit_identical(features, tmp_path, name):
    cfg = CONFIGS[name]
    through = _fit(features, _with(cfg, checkpoint_dir=str(tmp_path / "a")))
    first = _fit(features, dataclasses.replace(_with(cfg, checkpoint_dir=str(tmp_path / "b")), epochs=2))
    assert first.stats["checkpoints_written"] == 2 and CheckpointStore(str(tmp_path / "b")).epochs() == [1, 2]
    resumed = _fit(features, _with(cfg, checkpoint_dir=str(tmp_path / "b"), resume=True))
    assert resumed.stats["resumed_from_epoch"] == 2 and resumed.stats["attempts"] == 1
    _assert_same(through, resumed)
    assert CheckpointStore(str(tmp_path / "b")).epochs() == [3, 4]  # the last two kept


class _Crash(TrainingListener):
    """Fails rank 0 (the one reporting) once, when it reports ``epoch``'s first round: an attempt lost mid-epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.done = epoch, False

    def on_round(self, event) -> None:
        if event.epoch == self.epoch and not self.done:
            self.done = True
            raise RuntimeError("injected failure")


@pytest.mark.parametrize("name", ["averaging-barrier", "sharing"])
def test_a_failed_attempt_is_launched_again_from_the_latest_checkpoint(features, tmp_path, name):
    cfg = dataclasses.replace(CONFIGS[name], head=HeadConfig.parse("mlp:8"))  # no dropout: ranks are threads here
    through = _fit(features, cfg, local=True)
    crashed = _fit(features, _with(cfg, checkpoint_dir=str(tmp_path / "ck"), max_attempts=2), [_Crash(epoch=2)], local=True)
    _assert_same(through, crashed)
    assert crashed.stats["attempts"] == 2
    [failure] = crashed.stats["failures"]
    assert failure["rank"] == 0 and failure["epoch"] == 2 and failure["resume_epoch"] == 2
    assert "injected failure" in failure["cause"]


def test_without_checkpoints_a_failed_attempt_starts_over_and_attempts_run_out(features, tmp_path):
    cfg = dataclasses.replace(CONFIGS["averaging-barrier"], head=HeadConfig())
    again = _fit(features, _with(cfg, max_attempts=2), [_Crash(epoch=1)], local=True)  # no checkpoint dir: from the start
    _assert_same(_fit(features, cfg, local=True), again)
    assert again.stats["failures"][0]["resume_epoch"] == 0

    class Always(TrainingListener):
        def on_round(self, event) -> None:
            raise RuntimeError("always")

    with pytest.raises(WorkerFailedError, match=r"^training failed 2 time\(s\), --max-attempts 2: worker rank 0 failed "
                                                r"in epoch 1, step 1: RuntimeError: always") as e:  # fmt: skip
        _fit(features, _with(cfg, max_attempts=2), [Always()], local=True)
    assert (e.value.rank, e.value.epoch, e.value.step) == (0, 0, 0)


def test_train_head_resume_refuses_other_math_and_keeps_earlier_checkpoints_safe(spark, tmp_path, features):
    from sparkdl.train.run import train_head

    uri = str(tmp_path / "f.parquet")
    make_features_table(spark, uri, n=0, dim=DIM, n_classes=CLASSES, seed=5, split_counts={"train": 40, "valid": 8})
    cfg = TrainConfig(run=RunConfig(workers=2, execution="rounds"), epochs=2, batch_size_per_worker=8)
    model = tmp_path / "model"
    train_head(spark, uri, model, cfg)
    assert CheckpointStore(str(tmp_path / "model.checkpoints")).epochs() == [1, 2]  # the default place
    # a fresh fit over an earlier one's checkpoints: refused without --overwrite (they would be taken for its own)
    with pytest.raises(DataError, match=r"model\.checkpoints holds checkpoints of an earlier fit: pass --resume"):
        train_head(spark, uri, tmp_path / "model2", dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, checkpoint_dir=str(tmp_path / "model.checkpoints"))))
    other = dataclasses.replace(cfg, epochs=3, optimizer=OptimizerConfig(lr=0.5), run=dataclasses.replace(cfg.run, resume=True))
    with pytest.raises(ConfigError, match=r"--resume: .*epoch-000002\.ckpt was written by a fit with other settings "
                                          r"\(optimizer\.lr 0\.01 -> 0\.5\)"):  # fmt: skip
        train_head(spark, uri, model, other, overwrite=True)
    more = dataclasses.replace(cfg, epochs=3, run=dataclasses.replace(cfg.run, resume=True))
    summary = train_head(spark, uri, model, more, overwrite=True)
    assert summary.epochs_run == 3
    metrics = __import__("json").loads((model / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == 2 and metrics["attempts"] == 1
    np.testing.assert_equal(CheckpointStore(str(tmp_path / "model.checkpoints")).epochs(), [2, 3])


def test_a_failed_round_is_run_again_from_the_latest_checkpoint(features, tmp_path, monkeypatch):
    """``--execution rounds``: a round whose Spark job fails (past Spark's own task retries) fails the attempt; the
    driver goes on from the latest checkpoint, ending where an uninterrupted fit ends."""
    import sparkdl.train.rounds as rounds

    cfg = CONFIGS["averaging-rounds"]
    through = _fit(features, cfg)
    real, calls = rounds._run_round, []

    def flaky(shards, r, state_bc, workers, depth, epoch):
        calls.append((epoch, r))
        if (epoch, r) == (2, 1) and calls.count((2, 1)) == 1:
            raise WorkerFailedError("round 2 of epoch 3 failed: lost an executor", epoch=epoch, step=r, cause="lost")
        return real(shards, r, state_bc, workers, depth, epoch)

    monkeypatch.setattr(rounds, "_run_round", flaky)
    again = _fit(features, _with(cfg, checkpoint_dir=str(tmp_path / "ck"), max_attempts=2))
    _assert_same(through, again)
    [failure] = again.stats["failures"]
    assert (failure["epoch"], failure["step"], failure["resume_epoch"]) == (2, 1, 2)
    assert calls.count((2, 0)) == 2 and calls.count((1, 0)) == 1  # epoch 3 again, epochs 1-2 not


@pytest.mark.parametrize("name", ["averaging-barrier", "sharing"])
def test_elastic_goes_on_with_the_slots_there_are(spark, features, tmp_path, name):
    """Three in-process ranks on a ``local[2]`` application (2 task slots): after a failure the re-launch finds 2
    slots, and with ``min_workers`` 2 it deals the shards again over 2 workers and finishes from the checkpoint
    (sharing drops the lost rank's residual); without ``min_workers`` it fails, saying why."""
    from sparkdl.evaluate import evaluate_head
    from sparkdl.model import HeadSpec

    cfg = dataclasses.replace(CONFIGS[name], head=HeadConfig(), run=RunConfig(workers=3, slot_wait_s=0.0))
    clean = _fit(features, cfg, local=True)
    shrunk = _fit(features, _with(cfg, checkpoint_dir=str(tmp_path / "ck"), min_workers=2), [_Crash(epoch=2)],
                  local=True)  # fmt: skip
    [failure] = shrunk.stats["failures"]
    assert (failure["resume_epoch"], failure["workers_after"], shrunk.stats["workers_final"]) == (2, 2, 2)
    assert [h.epoch for h in shrunk.history] == [0, 1, 2, 3]
    test = features.filter("split = 'test'")
    accuracy = [evaluate_head(test, HeadSpec.from_module(cfg.head, DIM, CLASSES, r.head), CLASSES).accuracy
                for r in (clean, shrunk)]  # fmt: skip
    assert abs(accuracy[0] - accuracy[1]) <= 0.13, accuracy  # 8 test rows: one row is 0.125
    with pytest.raises(WorkerFailedError, match=r"only 2 task slot\(s\) left after a failure, 3 \(--workers; "
                                                r"--min-workers lets a fit go on with fewer\) needed"):  # fmt: skip
        _fit(features, _with(cfg, checkpoint_dir=str(tmp_path / "ck2")), [_Crash(epoch=2)], local=True)
