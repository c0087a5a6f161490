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
        self, features, head: nn.Module, n_classes: int, listeners: Sequence[TrainingListener] = ()
    ) -> TrainResult: ...


def build_master(config: TrainConfig) -> TrainingMaster:
    if config.master == "averaging":
        from sparkdl.train.averaging import ParameterAveragingTrainingMaster

        return ParameterAveragingTrainingMaster(config)
    if config.master == "sharing":
        from sparkdl.train.sharing.master import SharedGradientTrainingMaster

        return SharedGradientTrainingMaster(config)
    raise ConfigError(f"unknown training master {config.master!r} (use averaging or sharing)")
