"""The pluggable seam every training master implements, and the factory."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from torch import nn

from sparkdl.config import TrainConfig
from sparkdl.errors import ConfigError, DivergedError
from sparkdl.train.listeners import TrainingListener


@dataclass
class TrainResult:
    head: nn.Module  # holds the parameters of the best epoch
    best_epoch: int  # 0-based
    history: list[dict]  # one entry per epoch
    stats: dict  # phase timings, bytes moved, examples/s
    seconds: float
    final_params: dict = field(default_factory=dict)  # the last epoch's parameters (numpy), whatever the best was
    events: list[dict] = field(default_factory=list)


class EpochTracker:
    """Every master's epoch bookkeeping: the epoch record (listeners, ``history``), the best epoch by ``valid``
    accuracy (by train loss when there is no ``valid`` split) and early stopping."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.history: list[dict] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_params: dict | None = None
        self._stale = 0

    def end_epoch(self, epoch: int, loss_sum: float, examples: float, seconds: float, valid, params_fn, **extra) -> dict:
        """Record one epoch (``valid``: Metrics, or None without valid rows); ``params_fn()`` gives the parameters
        to keep when this epoch is the best so far. Returns the record."""
        has_valid = valid is not None and valid.n > 0
        record = {
            "type": "epoch", "epoch": epoch, "epochs": self.config.epochs, "train_loss": loss_sum / max(1.0, examples),
            "examples": int(examples), "seconds": seconds, "prepare_seconds": 0.0,
            "examples_per_second": examples / seconds if seconds > 0 else 0.0,
            "valid_accuracy": valid.accuracy if has_valid else None, "valid_loss": valid.loss if has_valid else None,
            "valid_macro_f1": valid.macro_f1 if has_valid else None, **extra,
        }  # fmt: skip
        self.history.append(record)
        score = valid.accuracy if has_valid else -record["train_loss"]
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


class TrainingMaster(ABC):
    """Fits a head on the ``split = 'train'`` rows of a features DataFrame
    (``label_index int, features array<float>``); scores ``split = 'valid'`` after every epoch and keeps the best."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @abstractmethod
    def fit(
        self, features, head: nn.Module, n_classes: int | None = None, listeners: Sequence[TrainingListener] = ()
    ) -> TrainResult:
        """``n_classes`` defaults to the head's output size (``head_classes``)."""


def head_classes(head: nn.Module, n_classes: int | None) -> int:
    """``n_classes``, or the output size of the head's last linear layer."""
    if n_classes is not None:
        return n_classes
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("cannot tell the number of classes from this head: pass n_classes")
    return linears[-1].out_features


def build_master(config: TrainConfig) -> TrainingMaster:
    if config.master == "averaging":
        from sparkdl.train.averaging import ParameterAveragingTrainingMaster

        return ParameterAveragingTrainingMaster(config)
    if config.master == "sharing":
        from sparkdl.train.sharing.master import SharedGradientTrainingMaster

        return SharedGradientTrainingMaster(config)
    raise ConfigError(f"unknown training master {config.master!r} (use averaging or sharing)")
