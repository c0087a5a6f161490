"""The worker loop of a barrier launch: one rank's whole fit, whatever the algorithm.

``WorkerLoop`` owns what every algorithm shares — the shard, epochs, the seeded order of rows per epoch, steps,
scoring its share of ``valid`` (confusion counts summed over the tree), the best epoch and early stopping, the
events rank 0 reports, and the state a checkpoint holds — and hands each step's rows to the algorithm's
``Exchange`` (``train.exchange``). Runs on an executor (``SparkBarrierLauncher``) or a local launcher; no Spark here.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sparkdl.config import TrainConfig
from sparkdl.errors import DivergedError
from sparkdl.evaluate import Metrics, partial_counts
from sparkdl.model import HeadSpec, predict_logits
from sparkdl.train.events import EpochEvent, RoundEvent, to_json
from sparkdl.train.exchange import build_exchange
from sparkdl.train.checkpoint import Checkpoint, Resume, pack_state, unpack_state
from sparkdl.train.layout import epoch_order, load_shard, round_rows, round_seed
from sparkdl.train.tracker import EpochTracker


@dataclass(frozen=True)
class LoopPlan:
    """What the driver ships to every rank (in the task closure)."""

    config: TrainConfig
    head: HeadSpec  # the initial head
    dim: int
    steps_per_epoch: int
    resume: Resume | None = None
    checkpoint_every: int = 0  # epochs; 0: none (rank 0 delivers each checkpoint to the driver, which writes it)
    layout: dict = field(default_factory=dict)  # the shard layout's identity, recorded in checkpoints


@dataclass
class LoopResult:
    rank: int
    digest: str  # sha256 of the final parameters' bits (ranks compare in synchronous training)
    transport: dict
    stats: dict  # the exchange's
    diverged: str | None = None
    # rank 0 only:
    final_params: dict | None = None
    best_params: dict | None = None
    best_epoch: int = 0
    history: list[EpochEvent] = field(default_factory=list)


def params_digest(params: dict[str, np.ndarray]) -> str:
    """A hash of the exact bits of a parameter set."""
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()


def score_valid_shard(comm, model, xv, yv, n_classes: int, extra: np.ndarray | None = None) -> tuple[Metrics, np.ndarray | None]:
    """Score ``model`` on this rank's share of ``valid`` and sum the confusion counts (plus ``extra``) over the
    tree: every rank gets the same metrics of the whole split."""
    confusion, top5, vloss = partial_counts(predict_logits(model, xv).astype(np.float64), yv, n_classes)
    arrays = [confusion.astype(np.float64), np.array([top5, vloss])] + ([extra] if extra is not None else [])
    total = comm.allreduce(arrays)
    metrics = Metrics.from_counts(np.rint(total[0]).astype(np.int64), int(round(total[1][0])), float(total[1][1]))
    return metrics, (total[2] if extra is not None else None)


class WorkerLoop:
    def __init__(self, ctx, plan: LoopPlan) -> None:
        self.ctx = ctx
        self.plan = plan
        self.config = plan.config
        self.comm = ctx.comm.with_fanout(plan.config.run.tree_fanout)
        self.model = plan.head.build()
        self.tracker = EpochTracker(plan.config)
        self.exchange = build_exchange(plan.config, self.comm, self.model, self.tracker)
        self.start_epoch = 0
        self.checkpoint_seconds = 0.0  # this rank's time in checkpoints, on the training thread
        self._sending: threading.Thread | None = None
        self._send_error: BaseException | None = None
        if plan.resume is not None:
            self._resume(plan.resume)

    def _resume(self, resume: Resume) -> None:
        rank = self.comm.rank
        mine = resume.ranks[rank] if resume.ranks is not None and rank < len(resume.ranks) else None
        self.exchange.load_state(resume.shared, mine, resume.epoch * self.plan.steps_per_epoch)
        self.tracker.load_state_dict(resume.tracker)
        self.start_epoch = resume.epoch

    def run(self, elements) -> LoopResult:
        import torch

        cfg, ctx, plan = self.config, self.ctx, self.plan
        rank = self.comm.rank
        torch.set_num_threads(max(1, ctx.cpus))
        shard = load_shard(elements, plan.dim, ("train", "valid"))
        (x, y), (xv, yv) = shard["train"], shard["valid"]
        steps = plan.steps_per_epoch
        exchange, tracker = self.exchange, self.tracker
        for epoch in range(self.start_epoch, cfg.epochs):
            epoch_start = time.perf_counter()
            exchange.begin_epoch(epoch)
            order = epoch_order(cfg.seed, epoch, rank, len(y))
            loss_sum, examples = 0.0, 0
            for s in range(steps):
                idx = round_rows(order, s, cfg.rows_per_step)
                result = exchange.step(epoch, s, epoch * steps + s, x[idx], y[idx], round_seed(cfg.seed, epoch, s, rank))
                loss_sum += result.loss_sum
                examples += result.examples
                if rank == 0:
                    ctx.report(to_json(RoundEvent(epoch=epoch, round=s, iteration=epoch * steps + s + 1,
                                                  lr=cfg.optimizer.lr, **result.event)))  # fmt: skip
            extra = exchange.end_epoch(epoch, steps)
            counts = None if exchange.counts_are_global else np.array([loss_sum, examples], dtype=np.float64)
            valid, sums = score_valid_shard(self.comm, self.model, xv, yv, plan.head.n_classes, extra=counts)
            if sums is not None:
                loss_sum, examples = float(sums[0]), float(sums[1])
            record = tracker.end_epoch(epoch, loss_sum, examples, time.perf_counter() - epoch_start, valid,
                                       exchange.params, **extra)  # fmt: skip
            if rank == 0:
                ctx.report(to_json(record))
            if plan.checkpoint_every and (epoch + 1) % plan.checkpoint_every == 0:
                t0 = time.perf_counter()
                self._checkpoint(epoch + 1)
                self.checkpoint_seconds += time.perf_counter() - t0
            if tracker.should_stop:
                break
        self._finish_checkpoint()
        return self._result()

    def _checkpoint(self, epochs_done: int) -> None:
        """Every rank's own state gathered on rank 0, which adds the shared state and the tracker and hands the
        checkpoint to the driver (``ctx.deliver``). The other ranks go on at once; rank 0 takes a snapshot (the
        states are fresh copies, or arrays the exchange replaces rather than changes) and encodes and sends it on a
        thread while it trains on: one checkpoint in flight at a time."""
        if self.exchange.has_rank_state:
            states = self.comm.gather(pack_state(self.exchange.rank_state()))
            if states is None:
                return
        elif self.comm.rank != 0:
            return
        else:
            states = []  # averaging: every rank holds the same state, nothing to gather
        self._finish_checkpoint()
        checkpoint = Checkpoint(epochs_done, self.config.to_json(), self.plan.layout, self.exchange.shared_state(),
                                [unpack_state(s) for s in states], self.tracker.state_dict())  # fmt: skip
        self._sending = threading.Thread(target=self._send_checkpoint, args=(checkpoint,), name="sparkdl-checkpoint",
                                         daemon=True)  # fmt: skip
        self._sending.start()

    def _send_checkpoint(self, checkpoint: Checkpoint) -> None:
        try:
            self.ctx.deliver(checkpoint.to_bytes())
        except BaseException as e:  # noqa: BLE001 - raised on the loop's thread by _finish_checkpoint
            self._send_error = e

    def _finish_checkpoint(self) -> None:
        if self._sending is not None:
            self._sending.join()
            self._sending = None
        if self._send_error is not None:
            raise self._send_error

    def _result(self) -> LoopResult:
        final = self.exchange.params()
        stats = {**self.exchange.result(), "checkpoint_seconds": self.checkpoint_seconds}
        out = LoopResult(self.comm.rank, params_digest(final), self.ctx.transport.stats.to_json(), stats)
        if self.comm.rank == 0:
            out.final_params, out.best_params = final, self.tracker.best_params
            out.best_epoch, out.history = self.tracker.best_epoch, list(self.tracker.history)
        return out


def run_worker(ctx, elements, plan: LoopPlan) -> LoopResult:
    """The barrier launch's worker function. A divergence every rank sees at the same step (averaging: found in
    sums every rank holds) ends the launch cleanly with ``diverged`` set (no task fails, no traceback in the logs);
    the driver raises it. One rank's own divergence (sharing) fails that rank, and the launch stops the others."""
    loop = WorkerLoop(ctx, plan)
    try:
        return loop.run(elements)
    except DivergedError as e:
        if not loop.exchange.diverges_together:
            raise
        return LoopResult(ctx.rank, "", {}, {}, diverged=str(e))
