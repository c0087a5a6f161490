"""ParameterAveragingTrainingMaster: synchronous parameter averaging on Spark (the Deeplearning4j design).

**Data layout, once per fit** (one pass over the features, one shuffle). Training rows are dealt round-robin to
the workers in scan order (input partition, then row; offsets from the validation pass): shard ``w`` holds
positions ``w, w + W, ...``, sizes differ by at most one, and a table stored sorted by label still gives every
worker every label. Each shard is packed into raw float32 / int32 buffers in a cached RDD whose partition ``w`` is
worker ``w``'s (identity partitioner).
Per epoch, worker ``w`` visits its shard in the order ``epoch_order(seed, epoch, w, n)``, and round ``r`` is its
rows ``r*B .. (r+1)*B - 1`` of that order, ``B = batch_size_per_worker x averaging_frequency``. Every round:

1. every worker starts from the same parameters (and optimizer state when ``average_updater_state``);
2. fits ``averaging_frequency`` minibatches of ``batch_size_per_worker`` rows;
3. parameters, optimizer state, loss and counts are summed over the workers that had rows and divided by their
   number. With plain SGD and ``averaging_frequency = 1`` a round is one SGD step on the round's rows (tested).

**Two executions of the same math** (``TrainConfig.execution``):

- ``barrier`` (default): the whole fit is one Spark barrier stage (``SparkBarrierLauncher``); the workers sum
  over a tree (``tree_fanout``) through the transport (gRPC), so every worker holds the same bits after each round,
  and each scores its share of ``valid`` at epoch end (the confusion counts are summed the same way). Rank 0
  streams round / epoch events to the driver while it runs. A failed task fails the fit (Spark does not retry a
  failed barrier stage): nothing is written, run it again. Costs one stage launch per fit instead of one Spark job
  per round.
- ``rounds``: one Spark job per round, as DL4J: the driver broadcasts the state, each partition fits its rows and
  ``treeReduce(depth)`` sums (collected and summed on the driver where Spark's tree would add no level). A lost
  task is retried alone; per-round job latency (about 0.15 s on local[2]) dominates small heads.

The driver never collects features in either; only parameter-sized objects (and, in ``barrier``, events) move.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Sequence

import numpy as np
from torch import nn

from sparkdl.data.features import validate_features
from sparkdl.errors import DivergedError
from sparkdl.evaluate import evaluate_head
from sparkdl.session import job_description
from sparkdl.train.barrier import (
    launch_description, lay_out, params_digest, run_launch, score_valid_shard, steps_per_epoch,
)  # fmt: skip
from sparkdl.train.collective import tree_allreduce
from sparkdl.train.head import HeadSpec
from sparkdl.train.layout import epoch_order, load_shard, partition_starts, plan_partition, round_rows, round_seed
from sparkdl.train.listeners import TrainingListener
from sparkdl.train.local import (
    FitStats, build_optimizer, fit_minibatches, get_optimizer_state, get_params, set_optimizer_state,
    set_params,
)  # fmt: skip
from sparkdl.train.master import EpochTracker, TrainingMaster, TrainResult, head_classes


def _payload_arrays(params: dict, opt: dict, weight: float) -> list[np.ndarray]:
    """What one worker contributes to a round's sum, in a fixed key order (``weight`` 0 for a worker without rows)."""
    return [params[k] * weight for k in sorted(params)] + [opt[k] * weight for k in sorted(opt)]


def sum_payloads(a: dict, b: dict) -> dict:
    """Associative, commutative sum of two worker results (the treeReduce operator of the ``rounds`` execution)."""
    return {
        "params": {k: a["params"][k] + b["params"][k] for k in a["params"]},
        "opt": {k: a["opt"][k] + b["opt"][k] for k in a["opt"]},
        "loss_sum": a["loss_sum"] + b["loss_sum"],
        "examples": a["examples"] + b["examples"],
        "minibatches": a["minibatches"] + b["minibatches"],
        "fit_seconds_max": max(a["fit_seconds_max"], b["fit_seconds_max"]),
        "workers": a["workers"] + b["workers"],
    }


def tree_levels(partitions: int, depth: int) -> int:
    """How many intermediate levels PySpark's ``treeAggregate(depth)`` adds for ``partitions`` partial results."""
    scale = max(int(math.ceil(partitions ** (1.0 / depth))), 2)
    levels = 0
    current = float(partitions)
    while current > scale + current / scale:  # PySpark's loop, float division included
        current /= scale
        levels += 1
    return levels


def average(summed: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
    return {k: (v / count).astype(v.dtype, copy=False) for k, v in summed.items()}


# ------------------------------------------------------------------------------------------- rounds execution
def _fit_round(elements, state_bc, round_index: int):
    """Executor side, ``rounds`` execution: fit this worker's rows of round ``round_index``; yield one payload."""
    import torch
    from pyspark import TaskContext

    state = state_bc.value
    elements = list(elements)
    if not elements:
        return
    worker = elements[0][0]  # the identity partitioner puts one worker's packs in each partition
    x, y = load_shard(elements)["train"]
    idx = round_rows(epoch_order(state["seed"], state["epoch"], worker, len(y)), round_index, state["rows_per_round"])
    if len(idx) == 0:
        return
    ctx = TaskContext.get()
    torch.set_num_threads(max(1, ctx.cpus() if ctx is not None else 1))
    torch.manual_seed(round_seed(state["seed"], state["epoch"], round_index, worker))
    model = state["spec"].build()
    optimizer = build_optimizer(state["optimizer"], model.parameters())
    if state["opt_state"]:
        set_optimizer_state(optimizer, state["opt_state"])
    stats = fit_minibatches(model, optimizer, x[idx], y[idx], state["batch_size"])
    yield {
        "params": get_params(model),
        "opt": get_optimizer_state(optimizer) if state["average_updater_state"] else {},
        "loss_sum": stats.loss_sum,
        "examples": stats.examples,
        "minibatches": stats.minibatches,
        "fit_seconds_max": stats.seconds,
        "workers": 1,
    }


# ------------------------------------------------------------------------------------------ barrier execution
def _barrier_fit(ctx, elements, state: dict) -> dict:
    """Executor side, ``barrier`` execution: the whole fit on one rank; sums over the transport's tree.
    Divergence is found in sums every rank holds (the same bits), so every rank stops at the same round and the
    launch ends cleanly with ``diverged`` set (no task fails, no traceback in the logs); the driver raises it."""
    try:
        return _fit_rank(ctx, elements, state)
    except DivergedError as e:
        return {"rank": ctx.rank, "diverged": str(e)}


def _fit_rank(ctx, elements, state: dict) -> dict:
    import torch

    cfg = state["config"]
    rank, world = ctx.rank, ctx.world
    torch.set_num_threads(max(1, ctx.cpus))
    shard = load_shard(elements, state["dim"], ("train", "valid"))
    (x, y), (xv, yv) = shard["train"], shard["valid"]
    spec = state["spec"]
    n_classes = spec.n_classes
    model = spec.build()
    opt_state: dict[str, np.ndarray] = {}
    params = get_params(model)
    tracker = EpochTracker(cfg)
    step = 0
    fanout = cfg.tree_fanout
    payload_bytes = 0
    for epoch in range(cfg.epochs):
        epoch_start = time.perf_counter()
        order = epoch_order(cfg.seed, epoch, rank, len(y))
        loss_sum, examples = 0.0, 0
        for r in range(state["rounds_per_epoch"]):
            t0 = time.perf_counter()
            idx = round_rows(order, r, cfg.worker_rows_per_round)
            set_params(model, params)
            optimizer = build_optimizer(cfg.optimizer, model.parameters())
            if opt_state:
                set_optimizer_state(optimizer, opt_state)
            stats = FitStats()
            if len(idx):
                torch.manual_seed(round_seed(cfg.seed, epoch, r, rank))
                stats = fit_minibatches(model, optimizer, x[idx], y[idx], cfg.batch_size_per_worker)
            mine = get_params(model)
            mine_opt = get_optimizer_state(optimizer) if cfg.average_updater_state else {}
            if not mine_opt and opt_state:  # a worker without rows this round keeps the averaged state's shape
                mine_opt = opt_state
            weight = 1.0 if len(idx) else 0.0
            seconds = np.zeros(world)
            seconds[rank] = stats.seconds
            counts = np.array([weight, stats.loss_sum, stats.examples, stats.minibatches])
            arrays = _payload_arrays(mine, mine_opt, weight) + [counts, seconds]
            t1 = time.perf_counter()
            total = tree_allreduce(ctx.mailbox, step, arrays, fanout)
            t2 = time.perf_counter()
            step += 1
            payload_bytes = sum(a.nbytes for a in arrays)
            counts, seconds = total[-2], total[-1]
            k = int(round(counts[0]))
            keys, opt_keys = sorted(mine), sorted(mine_opt)
            params = average(dict(zip(keys, total[: len(keys)])), k)
            if cfg.average_updater_state and opt_keys:
                opt_state = average(dict(zip(opt_keys, total[len(keys) : len(keys) + len(opt_keys)])), k)
            tracker.check_loss(counts[1], epoch, r)  # every rank holds the same sums: all stop at the same round
            tracker.check_finite(params.values(), epoch, r)
            loss_sum += counts[1]
            examples += int(counts[2])
            t3 = time.perf_counter()
            if rank == 0:
                ctx.report({
                    "type": "round", "epoch": epoch, "round": r, "iteration": step,
                    "loss": counts[1] / max(1.0, counts[2]), "lr": cfg.optimizer.lr, "examples": int(counts[2]),
                    "workers": k, "minibatches": int(counts[3]),
                    "phases": {"worker_fit": float(seconds.max()), "aggregate": t2 - t1,
                               "update": (t1 - t0 - stats.seconds) + (t3 - t2)},
                })  # fmt: skip
        set_params(model, params)
        valid, _ = score_valid_shard(ctx.mailbox, step, model, xv, yv, n_classes, fanout)
        step += 1
        record = tracker.end_epoch(epoch, loss_sum, examples, time.perf_counter() - epoch_start, valid, lambda: params)
        if rank == 0:
            ctx.report(record)
        if tracker.should_stop:
            break
    out = {"rank": rank, "digest": params_digest(params), "transport": ctx.transport.stats.to_json(),
           "rounds": step, "payload_bytes": payload_bytes}  # fmt: skip
    if rank == 0:
        out.update(final_params=params, best_params=tracker.best_params, best_epoch=tracker.best_epoch,
                   history=tracker.history)  # fmt: skip
    return out


class ParameterAveragingTrainingMaster(TrainingMaster):
    """``launcher`` runs the ``barrier`` execution: a ``SparkBarrierLauncher`` over the config's transport unless
    given (a ``LocalLauncher`` collects the packed shards to the driver and runs the ranks on this machine)."""

    def __init__(self, config, launcher=None) -> None:
        super().__init__(config)
        self.launcher = launcher

    # ------------------------------------------------------------------------------------------------- layout
    def shard_plan(self, features, per_partition: list[dict], part: str = "train"):
        """``path, worker, local`` for every row of ``part``: rows are dealt round-robin in scan order (input
        partition, then row), so shard ``w`` holds positions ``w, w + W, ...`` and sizes differ by at most one.
        ``per_partition`` are ``validate_features(...)['per_partition']`` of the same DataFrame."""
        starts = partition_starts(per_partition, ("train", "valid"))
        fn = functools.partial(plan_partition, starts=starts, workers=self.config.workers, part=part)
        return features.select("path", "split").mapInArrow(fn, "path string, worker int, local long")

    def epoch_plan(self, features, epoch: int) -> list[tuple[int, int, int, str]]:
        """``(round, worker, index in the worker's round, path)`` for every training row in ``epoch``, sorted.
        Collects the paths to the driver: for inspection and tests, not used by training."""
        cfg = self.config
        with job_description(features.sparkSession, "train", f"planning epoch {epoch + 1} of {cfg.workers} shards"):
            info = validate_features(features, 2**31 - 1)
            planned = self.shard_plan(features, info["per_partition"]).collect()
        shards: dict[int, list[str]] = {}
        for row in sorted(planned, key=lambda r: (r["worker"], r["local"])):
            shards.setdefault(row["worker"], []).append(row["path"])
        plan = []
        for worker, paths in shards.items():
            order = epoch_order(cfg.seed, epoch, worker, len(paths))
            for pos, local in enumerate(order):
                plan.append((pos // cfg.worker_rows_per_round, worker, pos % cfg.worker_rows_per_round, paths[local]))
        return sorted(plan)

    # -------------------------------------------------------------------------------------------------- fit
    def fit(self, features, head: nn.Module, n_classes: int | None = None,
            listeners: Sequence[TrainingListener] = ()) -> TrainResult:  # fmt: skip
        from pyspark.sql import functions as F

        from sparkdl.launch.spark import SparkBarrierLauncher

        cfg = self.config
        n_classes = head_classes(head, n_classes)
        start = time.perf_counter()
        launcher = None
        if cfg.execution == "barrier":  # built first: refuses an unusable transport before any work
            launcher = self.launcher or SparkBarrierLauncher(cfg.transport)
        info, shards = lay_out(features, cfg.workers, n_classes, with_valid=cfg.execution == "barrier")
        dim = info["feature_dim"]
        valid = features.filter(F.col("split") == "valid").select("path", "label_index", "features")
        rounds_per_epoch = steps_per_epoch(info["train"], cfg.workers, cfg.worker_rows_per_round)
        prepare_seconds = time.perf_counter() - start
        spark = features.sparkSession
        try:
            if launcher is not None:
                with job_description(spark, "train", launch_description("averaging", cfg.epochs, cfg.workers, launcher)):
                    result = self._fit_barrier(launcher, shards, head, dim, n_classes, rounds_per_epoch, listeners)
            else:
                result = self._fit_rounds(spark, shards, valid, head, dim, n_classes, info, rounds_per_epoch, listeners)
        finally:
            shards.unpersist()
        result.seconds = time.perf_counter() - start
        result.stats.update(
            prepare_seconds=prepare_seconds,
            rounds_per_epoch=rounds_per_epoch,
            examples_per_second=result.stats["examples"] / result.seconds if result.seconds > 0 else 0.0,
            execution=cfg.execution,
        )
        return result

    def _fit_barrier(self, launcher, shards, head, dim, n_classes, rounds_per_epoch, listeners) -> TrainResult:
        cfg = self.config
        state = {"config": cfg, "spec": HeadSpec(cfg.head, dim, n_classes, get_params(head)), "dim": dim,
                 "rounds_per_epoch": rounds_per_epoch}  # fmt: skip

        outs = run_launch(launcher, functools.partial(_barrier_fit, state=state), shards, listeners)
        if outs[0].get("diverged"):
            raise DivergedError(outs[0]["diverged"])
        head_out = outs[0]
        digests = {o["digest"] for o in outs}
        if len(digests) != 1:  # the allreduce hands every rank the root's bits: anything else is a bug
            raise RuntimeError(f"workers ended with different parameters ({len(digests)} distinct digests)")
        set_params(head, head_out["best_params"])
        history = head_out["history"]
        examples = sum(h["examples"] for h in history)
        sent = sum(o["transport"]["bytes_sent"] for o in outs)
        param_bytes = sum(v.nbytes for v in head_out["final_params"].values())
        stats = {
            "examples": examples,
            "iterations": len(history) * rounds_per_epoch,
            "bytes_between_workers": sent,
            "transport_rejected": sum(o["transport"]["rejected"] for o in outs),  # refused calls: wrong secret, probes
            "bytes_driver_to_workers": param_bytes * cfg.workers,  # the initial head, in the stage's closure
            "bytes_workers_to_driver": 2 * param_bytes,  # rank 0's final and best parameters
            "allreduce_payload_bytes": head_out["payload_bytes"],
            "worker_fit_seconds": None,
        }
        return TrainResult(head=head, best_epoch=head_out["best_epoch"], history=history, stats=stats, seconds=0.0,
                           final_params=head_out["final_params"])  # fmt: skip

    def _run_round(self, shards, r: int, state_bc) -> dict:
        cfg = self.config
        payloads = shards.mapPartitions(functools.partial(_fit_round, state_bc=state_bc, round_index=r))
        if tree_levels(cfg.workers, cfg.aggregation_depth) == 0:
            return functools.reduce(sum_payloads, payloads.collect())
        return payloads.treeReduce(sum_payloads, depth=cfg.aggregation_depth)

    def _fit_rounds(self, spark, shards, valid, head, dim, n_classes, info, rounds_per_epoch, listeners) -> TrainResult:
        """One Spark job per round, each described ``sparkdl train: epoch 3/10, round 5/8``."""
        cfg = self.config
        sc = shards.context
        params = get_params(head)
        opt_state: dict[str, np.ndarray] = {}
        tracker = EpochTracker(cfg)
        bytes_each_way = 0  # parameters (+ optimizer state) out to every worker and back, per round
        iteration = examples_total = 0
        fit_seconds = 0.0
        for epoch in range(cfg.epochs):
            epoch_start = time.perf_counter()
            loss_sum, examples = 0.0, 0
            for r in range(rounds_per_epoch):
                t0 = time.perf_counter()
                state = {
                    "spec": HeadSpec(cfg.head, dim, n_classes, params),
                    "opt_state": opt_state if cfg.average_updater_state else {},
                    "optimizer": cfg.optimizer,
                    "batch_size": cfg.batch_size_per_worker,
                    "rows_per_round": cfg.worker_rows_per_round,
                    "average_updater_state": cfg.average_updater_state,
                    "seed": cfg.seed,
                    "epoch": epoch,
                }
                state_bc = sc.broadcast(state)
                t1 = time.perf_counter()
                with job_description(spark, "train", f"epoch {epoch + 1}/{cfg.epochs}, round {r + 1}/{rounds_per_epoch}"):
                    summed = self._run_round(shards, r, state_bc)
                t2 = time.perf_counter()
                k = summed["workers"]
                params = average(summed["params"], k)
                if cfg.average_updater_state:
                    opt_state = average(summed["opt"], k)
                t3 = time.perf_counter()
                state_bc.destroy()
                tracker.check_loss(summed["loss_sum"], epoch, r)
                tracker.check_finite(params.values(), epoch, r)
                param_bytes = sum(v.nbytes for v in params.values()) + sum(v.nbytes for v in opt_state.values())
                bytes_each_way += param_bytes * k
                loss_sum += summed["loss_sum"]
                examples += summed["examples"]
                fit_seconds += summed["fit_seconds_max"]
                iteration += 1
                event = {
                    "type": "round", "epoch": epoch, "round": r, "iteration": iteration,
                    "loss": summed["loss_sum"] / max(1, summed["examples"]), "lr": cfg.optimizer.lr,
                    "examples": summed["examples"], "workers": k, "minibatches": summed["minibatches"],
                    "phases": {"broadcast": t1 - t0, "worker_fit": summed["fit_seconds_max"],
                               "aggregate": max(0.0, (t2 - t1) - summed["fit_seconds_max"]), "update": t3 - t2},
                }  # fmt: skip
                for listener in listeners:
                    listener.on_round(event)
            examples_total += examples
            spec = HeadSpec(cfg.head, dim, n_classes, params)
            valid_metrics = None
            if info["valid"]:
                with job_description(spark, "train", f"epoch {epoch + 1}/{cfg.epochs}, scoring valid"):
                    valid_metrics = evaluate_head(valid, spec, n_classes)
            record = tracker.end_epoch(epoch, loss_sum, examples, time.perf_counter() - epoch_start, valid_metrics,
                                       lambda: params)  # fmt: skip
            for listener in listeners:
                listener.on_epoch(record)
            if tracker.should_stop:
                break
        set_params(head, tracker.best_params)
        stats = {
            "examples": examples_total,
            "iterations": iteration,
            "bytes_driver_to_workers": bytes_each_way,
            "bytes_workers_to_driver": bytes_each_way,
            "worker_fit_seconds": fit_seconds,
        }
        return TrainResult(head=head, best_epoch=tracker.best_epoch, history=tracker.history, stats=stats,
                           seconds=0.0, final_params=params)  # fmt: skip
