"""Parameter averaging (the Deeplearning4j ParameterAveragingTrainingMaster design), one rank's side.

Per round, every worker starts from the same parameters (and optimizer state with ``average_updater_state``), fits
``frequency`` minibatches of ``batch_size_per_worker`` rows of its shard, and parameters, optimizer state, loss and
counts are summed over the workers that had rows and divided by their number. With plain SGD and ``frequency = 1`` a
round is one SGD step on the round's rows (tested). ``fit_round`` and ``average`` are the math both executions run:
``barrier`` (this exchange, summing over the transport's tree) and ``rounds`` (``train.rounds``, a Spark job per round).
"""
from __future__ import annotations

import time

import numpy as np

from sparkdl.config import OptimizerConfig
from sparkdl.train.exchange import Exchange, StepResult
from sparkdl.train.local import (
    FitStats, build_optimizer, fit_minibatches, get_optimizer_state, get_params, set_optimizer_state, set_params,
)  # fmt: skip


def fit_round(model, optimizer: OptimizerConfig, params: dict, opt_state: dict, x: np.ndarray, y: np.ndarray,
              batch_size: int, seed: int, keep_optimizer_state: bool) -> tuple[dict, dict, FitStats]:  # fmt: skip
    """One worker's round: start from ``params`` and ``opt_state`` (a fresh optimizer when empty), fit the rows in
    minibatches (dropout seeded with ``seed``). Returns the new parameters, optimizer state (empty unless
    ``keep_optimizer_state``) and counts."""
    import torch

    set_params(model, params)
    opt = build_optimizer(optimizer, model.parameters())
    if opt_state:
        set_optimizer_state(opt, opt_state)
    stats = FitStats()
    if len(y):
        torch.manual_seed(seed)
        stats = fit_minibatches(model, opt, x, y, batch_size)
    return get_params(model), get_optimizer_state(opt) if keep_optimizer_state else {}, stats


def average(summed: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: (v / count).astype(v.dtype, copy=False) for k, v in summed.items()}


def payload_arrays(params: dict, opt: dict, weight: float) -> list[np.ndarray]:
    """What one worker contributes to a round's sum, in a fixed key order (``weight`` 0 for a worker without rows)."""
    return [params[k] * weight for k in sorted(params)] + [opt[k] * weight for k in sorted(opt)]


class AveragingExchange(Exchange):
    """Barrier execution: the round's sums over the tree give every rank the root's bits, so every rank holds the
    same parameters after every round, and a divergence is seen by all at the same round."""

    def __init__(self, config, comm, model, checks) -> None:
        super().__init__(config, comm, model, checks)
        self.state = get_params(model)  # the averaged parameters
        self.opt_state: dict[str, np.ndarray] = {}
        self.payload_bytes = 0
        self.rounds = 0

    def step(self, epoch, index, global_step, x, y, seed) -> StepResult:
        cfg, algo = self.config, self.config.algorithm
        rank, world = self.comm.rank, self.comm.world
        t0 = time.perf_counter()
        mine, mine_opt, stats = fit_round(self.model, cfg.optimizer, self.state, self.opt_state, x, y,
                                          cfg.batch_size_per_worker, seed, algo.average_updater_state)  # fmt: skip
        if not mine_opt and self.opt_state:  # a worker without rows this round keeps the averaged state's shape
            mine_opt = self.opt_state
        weight = 1.0 if len(y) else 0.0
        seconds = np.zeros(world)
        seconds[rank] = stats.seconds
        counts = np.array([weight, stats.loss_sum, stats.examples, stats.minibatches])
        arrays = payload_arrays(mine, mine_opt, weight) + [counts, seconds]
        t1 = time.perf_counter()
        total = self.comm.allreduce(arrays)
        t2 = time.perf_counter()
        self.rounds += 1
        self.payload_bytes = sum(a.nbytes for a in arrays)
        counts, seconds = total[-2], total[-1]
        k = int(round(counts[0]))
        keys, opt_keys = sorted(mine), sorted(mine_opt)
        self.state = average(dict(zip(keys, total[: len(keys)])), k)
        if algo.average_updater_state and opt_keys:
            self.opt_state = average(dict(zip(opt_keys, total[len(keys) : len(keys) + len(opt_keys)])), k)
        self.checks.check_loss(counts[1], epoch, index)  # every rank holds the same sums: all stop at the same round
        self.checks.check_finite(self.state.values(), epoch, index)
        t3 = time.perf_counter()
        event = {"loss": counts[1] / max(1.0, counts[2]), "examples": int(counts[2]), "workers": k,
                 "minibatches": int(counts[3]), "message_bytes": self.payload_bytes,
                 "phases": {"worker_fit": float(seconds.max()), "aggregate": t2 - t1,
                            "update": (t1 - t0 - stats.seconds) + (t3 - t2)}}  # fmt: skip
        return StepResult(float(counts[1]), int(counts[2]), event)

    def end_epoch(self, epoch: int, steps: int) -> dict:
        set_params(self.model, self.state)
        return {}

    def params(self) -> dict[str, np.ndarray]:
        return self.state

    def shared_state(self) -> dict:
        return {"params": self.state, "opt_state": self.opt_state}

    def load_state(self, shared: dict, rank: dict | None, global_step: int) -> None:
        self.state = {k: np.asarray(v) for k, v in shared["params"].items()}
        self.opt_state = {k: np.asarray(v) for k, v in shared["opt_state"].items()}
        set_params(self.model, self.state)

    def result(self) -> dict:
        return {"rounds": self.rounds, "payload_bytes": self.payload_bytes}
