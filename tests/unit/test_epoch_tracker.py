"""EpochTracker: best epoch by valid accuracy (train loss without valid rows), early stopping, the record."""
import numpy as np

from sparkdl.config import TrainConfig
from sparkdl.evaluate import Metrics
from sparkdl.train.tracker import EpochTracker


def _valid(correct: int, n: int = 10) -> Metrics:
    confusion = np.array([[correct, n - correct], [0, 0]])
    return Metrics.from_counts(confusion, correct, 1.0)


def test_best_epoch_and_early_stopping():
    t = EpochTracker(TrainConfig(epochs=10, early_stopping_patience=2))
    for epoch, correct in enumerate([5, 8, 7, 8]):  # epoch 3 ties epoch 1: not better
        record = t.end_epoch(epoch, loss_sum=20.0, examples=10, seconds=2.0, valid=_valid(correct), params_fn=lambda e=epoch: {"e": e})
        stop = t.should_stop
        if epoch < 3:
            assert not stop
    assert stop and t.best_epoch == 1 and t.best_params == {"e": 1}
    assert (record.epoch, record.epochs, record.train_loss, record.examples, record.examples_per_second,
            record.valid_accuracy) == (3, 10, 2.0, 10, 5.0, 0.8)  # fmt: skip
    assert len(t.history) == 4


def test_without_valid_rows_the_train_loss_decides_and_patience_none_never_stops():
    t = EpochTracker(TrainConfig(epochs=5))
    calls = []
    for epoch, loss in enumerate([3.0, 1.0, 2.0, 2.5]):
        rec = t.end_epoch(epoch, loss_sum=loss, examples=1, seconds=0.0, valid=None, params_fn=lambda e=epoch: calls.append(e) or e, tau=0.1)
        assert rec.valid_accuracy is None and rec.tau == 0.1 and rec.examples_per_second == 0.0
    assert t.best_epoch == 1 and t.best_params == 1 and calls == [0, 1]  # params taken only when best
    assert not t.should_stop
