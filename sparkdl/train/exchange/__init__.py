"""The algorithms' per-step math and state on one worker: ``Exchange`` (one per algorithm) and ``build_exchange``.

An exchange is a state object (``shared_state`` — the same on every rank in synchronous training — and
``rank_state``, each rank's own; a checkpoint holds both) plus the step it runs: the worker loop (``train.loop``)
hands it one step's rows and it fits them and exchanges with the other ranks over the ``Collective``. Like PyTorch's
DDP communication hooks (state object + hook), except that the step is the hook's: averaging fits a whole round of
minibatches between two exchanges, sharing exchanges every gradient.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from sparkdl.collective.allreduce import Collective
from sparkdl.config import AveragingConfig, TrainConfig


@dataclass
class StepResult:
    """What a step adds to the epoch's training loss and what rank 0 reports about it (``RoundEvent`` fields)."""

    loss_sum: float  # sum of (mean minibatch loss x rows): over all ranks when ``counts_are_global``, else this rank's
    examples: int
    event: dict = field(default_factory=dict)  # loss, examples, workers, phases, algorithm-specific fields


class Exchange(ABC):
    """One algorithm on one rank. ``model`` is the rank's head (the loop scores ``valid`` with it after
    ``end_epoch``); ``checks`` is the loop's ``EpochTracker`` (divergence)."""

    counts_are_global: bool = True  # a step's loss / examples are already summed over the ranks
    has_rank_state: bool = False  # each rank holds state of its own (gathered into checkpoints)
    diverges_together: bool = True  # every rank sees a divergence at the same step (sums every rank holds)

    def __init__(self, config: TrainConfig, comm: Collective, model, checks) -> None:
        self.config = config
        self.comm = comm
        self.model = model
        self.checks = checks

    def begin_epoch(self, epoch: int) -> None:  # noqa: B027 - optional hook
        pass

    @abstractmethod
    def step(self, epoch: int, index: int, global_step: int, x: np.ndarray, y: np.ndarray, seed: int) -> StepResult:
        """Fit this rank's rows of step ``index`` of ``epoch`` (maybe none) and exchange with the other ranks."""

    def end_epoch(self, epoch: int, steps: int) -> dict:
        """After the epoch's ``steps`` steps: bring the model up to date for scoring; extra ``EpochEvent`` fields."""
        return {}

    @abstractmethod
    def params(self) -> dict[str, np.ndarray]:
        """The parameters now (what ``valid`` scores and the best epoch keeps)."""

    @abstractmethod
    def shared_state(self) -> dict:
        """What every rank holds alike (synchronous training): parameters, optimizer state."""

    def rank_state(self) -> dict:
        """This rank's own state (sharing: residual, threshold)."""
        return {}

    @abstractmethod
    def load_state(self, shared: dict, rank: dict | None, global_step: int) -> None:
        """Continue from a checkpoint: ``rank`` None when this rank has none (elastic re-launch with new ranks)."""

    def result(self) -> dict:
        """This rank's statistics for the driver."""
        return {}


def build_exchange(config: TrainConfig, comm: Collective, model, checks) -> Exchange:
    if isinstance(config.algorithm, AveragingConfig):
        from sparkdl.train.exchange.averaging import AveragingExchange

        return AveragingExchange(config, comm, model, checks)
    from sparkdl.train.exchange.sharing.exchange import SharingExchange

    return SharingExchange(config, comm, model, checks)
