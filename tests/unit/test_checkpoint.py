"""Checkpoints: the file format round-trips every bit, writes are complete-or-absent and pruned, and a resume is
refused, naming the fields, when the settings that change the math differ."""
import math
import os

import numpy as np
import pytest

from sparkdl.config import AveragingConfig, OptimizerConfig, RunConfig, SharingConfig, TrainConfig
from sparkdl.errors import ConfigError, DataError
from sparkdl.train.checkpoint import Checkpoint, CheckpointStore, checkpoint_epoch, pack_state, unpack_state

LAYOUT = {"train_rows": 100, "valid_rows": 20, "feature_dim": 8, "n_classes": 3, "workers": 2, "partitions": "ab"}


def _checkpoint(epoch=3, config=None, workers=2) -> Checkpoint:
    rng = np.random.default_rng(epoch)
    params = {"0.weight": rng.standard_normal((3, 8)).astype(np.float32), "0.bias": np.float32([1e-38, -0.0, np.nan])}
    ranks = [{"residual": {"residual": rng.standard_normal(27).astype(np.float32), "steps": 7 + r, "clip_k": 5.0,
                           "clip_every": 5},
              "threshold": {"tau": 1e-4 * (r + 1), "last_sparsity": 0.01, "calibrated": True}} for r in range(workers)]
    tracker = {"history": [{"type": "epoch", "epoch": 0, "valid_accuracy": None, "train_loss": 1.5}],
               "best_score": -math.inf, "best_epoch": 0, "best_params": params, "stale": 1}
    cfg = (config or TrainConfig()).to_json()
    return Checkpoint(epoch, cfg, {**LAYOUT, "workers": workers},
                      {"params": params, "opt_state": {"0.step": np.array(12.0), "0.exp_avg": params["0.weight"] * 2}},
                      ranks, tracker)


def _same(a, b) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, float) and math.isinf(a):
        assert a == b
    else:
        assert a == b, (a, b)


def test_a_checkpoint_round_trips_every_bit():
    c = _checkpoint()
    data = c.to_bytes()
    back = Checkpoint.from_bytes(data, "x")
    assert checkpoint_epoch(data) == 3 and back.epoch == 3 and back.layout == c.layout and back.config == c.config
    _same(c.shared, back.shared)
    _same(c.ranks, back.ranks)
    _same(c.tracker, back.tracker)
    _same({"a": [np.int64(3), {"b": np.zeros((0, 4), np.float32)}]}, unpack_state(pack_state({"a": [3, {"b": np.zeros((0, 4), np.float32)}]})))


@pytest.mark.parametrize("data", [b"", b"not a checkpoint at all", b"\x08" + b"\x00" * 7 + b"{}      "])
def test_garbage_is_a_data_error_naming_the_file(data):
    with pytest.raises(DataError, match=r"^/ck/epoch-000001\.ckpt is not a sparkdl checkpoint .*delete it"):
        Checkpoint.from_bytes(data, "/ck/epoch-000001.ckpt")


def test_the_store_writes_complete_files_and_keeps_the_newest(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=2)
    assert store.latest() is None and store.epochs() == []
    for epoch in (1, 2, 3):
        uri, size = store.write(_checkpoint(epoch))
        assert os.path.getsize(uri) == size
    (tmp_path / "ck" / "epoch-000009.ckpt.partial").write_bytes(b"half")  # an interrupted write: never read
    assert store.epochs() == [2, 3]
    latest, uri = store.latest()
    assert latest.epoch == 3 and uri.endswith("epoch-000003.ckpt")
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-000002.ckpt", "epoch-000003.ckpt", "epoch-000009.ckpt.partial"]
    assert store.clear() == 2 and store.latest() is None


def test_a_resume_names_every_setting_that_changes_the_math():
    base = TrainConfig(run=RunConfig(workers=2), optimizer=OptimizerConfig(lr=0.01))
    c = _checkpoint(config=base)
    # how it runs may change: epochs, transport, attempts, checkpoint settings
    free = TrainConfig(run=RunConfig(workers=2, max_attempts=9, checkpoint_every=3, checkpoint_dir="/x"), epochs=50,
                       optimizer=OptimizerConfig(lr=0.01))  # fmt: skip
    c.check_compatible(free.to_json(), LAYOUT, elastic=False, source="ck")
    other = TrainConfig(run=RunConfig(workers=2), optimizer=OptimizerConfig(lr=0.05), seed=1)
    with pytest.raises(ConfigError, match=r"^--resume: ck was written by a fit with other settings \(optimizer\.lr 0\.01 -> 0\.05; seed 42 -> 1\)"):
        c.check_compatible(other.to_json(), LAYOUT, elastic=False, source="ck")
    sharing = TrainConfig(algorithm=SharingConfig(), run=RunConfig(workers=2), optimizer=OptimizerConfig(lr=0.01))
    with pytest.raises(ConfigError, match=r"algorithm\.name 'averaging' -> 'sharing'.*master 'averaging' -> 'sharing'"):
        c.check_compatible(sharing.to_json(), LAYOUT, elastic=False, source="ck")
    three = TrainConfig(run=RunConfig(workers=3), optimizer=OptimizerConfig(lr=0.01))
    with pytest.raises(ConfigError, match=r"run\.workers 2 -> 3"):
        c.check_compatible(three.to_json(), {**LAYOUT, "workers": 3}, elastic=False, source="ck")
    # elastic: another worker count is fine; the ranks' own state is dropped
    elastic = TrainConfig(run=RunConfig(workers=3, min_workers=1), optimizer=OptimizerConfig(lr=0.01))
    c.check_compatible(elastic.to_json(), {**LAYOUT, "workers": 3}, elastic=True, source="ck")
    assert c.resume(3).ranks is None and c.resume(2).ranks is not None
    with pytest.raises(ConfigError, match=r"another features table or layout \(train_rows 100 -> 101\)"):
        c.check_compatible(base.to_json(), {**LAYOUT, "train_rows": 101}, elastic=False, source="ck")
    assert AveragingConfig().name == "averaging"
