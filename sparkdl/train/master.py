"""The pluggable seam every training master implements, and the factory."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn

from sparkdl.config import TrainConfig
from sparkdl.errors import ConfigError
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
