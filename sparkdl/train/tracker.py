"""The epoch bookkeeping every execution shares: the epoch record, the best epoch by ``valid`` accuracy (by train
loss when there is no ``valid`` split), early stopping, divergence checks; its state goes into checkpoints."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from sparkdl.config import TrainConfig
from sparkdl.errors import DivergedError
from sparkdl.train.events import EpochEvent, from_json, to_json


class EpochTracker:
    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.history: list[EpochEvent] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_params: dict | None = None
        self._stale = 0

    def end_epoch(self, epoch: int, loss_sum: float, examples: float, seconds: float, valid, params_fn,
                  **extra) -> EpochEvent:  # fmt: skip
        """Record one epoch (``valid``: Metrics, or None without valid rows); ``params_fn()`` gives the parameters
        to keep when this epoch is the best so far. Returns the record."""
        has_valid = valid is not None and valid.n > 0
        record = EpochEvent(
            epoch=epoch, epochs=self.config.epochs, train_loss=loss_sum / max(1.0, examples), examples=int(examples),
            seconds=seconds, examples_per_second=examples / seconds if seconds > 0 else 0.0,
            valid_accuracy=valid.accuracy if has_valid else None, valid_loss=valid.loss if has_valid else None,
            valid_macro_f1=valid.macro_f1 if has_valid else None, **extra,
        )  # fmt: skip
        self.history.append(record)
        score = valid.accuracy if has_valid else -record.train_loss
        if score > self.best_score:
            self.best_score, self.best_epoch, self.best_params, self._stale = score, epoch, params_fn(), 0
        else:
            self._stale += 1
        return record

    def check_loss(self, loss: float, epoch: int, step: int) -> None:
        """Stop with ``DivergedError`` when a round's (step's) loss is NaN or inf: one scalar, no result changes."""
        if not math.isfinite(loss):
            raise self._diverged(epoch, step, f"the training loss is {loss}")

    def check_finite(self, arrays: Iterable[np.ndarray], epoch: int, step: int, what: str = "the parameters") -> None:
        """Stop with ``DivergedError`` when any of ``arrays`` (the parameters after an averaging or an exchange, a
        gradient residual) holds NaN or inf."""
        for a in arrays:
            if not np.isfinite(a).all():
                raise self._diverged(epoch, step, f"{what} hold NaN or inf")

    def _diverged(self, epoch: int, step: int, what: str) -> DivergedError:
        unit = "round" if self.config.master == "averaging" else "step"
        return DivergedError(
            f"training diverged in epoch {epoch + 1}/{self.config.epochs}, {unit} {step + 1}: {what}; lower --lr "
            f"(now {self.config.optimizer.lr:g}) or scale the features (standardize them)"
        )

    @property
    def should_stop(self) -> bool:
        patience = self.config.early_stopping_patience
        return patience is not None and self._stale >= patience

    def state_dict(self) -> dict:
        return {"history": [to_json(e) for e in self.history], "best_score": self.best_score,
                "best_epoch": self.best_epoch, "best_params": self.best_params, "stale": self._stale}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.history = [from_json(e) for e in state["history"]]
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        self.best_params, self._stale = state["best_params"], int(state["stale"])
