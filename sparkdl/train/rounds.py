"""The ``rounds`` execution of parameter averaging: one Spark job per round, as DL4J runs it.

The driver broadcasts the averaged state, each partition (one worker's shard) fits its rows of the round with the
same ``fit_round`` the barrier execution runs, and ``treeReduce(depth)`` sums the results (collected and summed on the
driver where Spark's tree would add no level). A lost task is retried alone by Spark; per-round job latency (about
0.15 s on local[2]) dominates small heads.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable, Sequence

import numpy as np

from sparkdl.evaluate import evaluate_head
from sparkdl.model import HeadSpec
from sparkdl.session import job_description
from sparkdl.train.events import RoundEvent, TrainingListener, notify
from sparkdl.train.checkpoint import Checkpoint
from sparkdl.train.exchange.averaging import average, fit_round
from sparkdl.train.layout import epoch_order, load_shard, round_rows, round_seed
from sparkdl.train.local import get_params
from sparkdl.train.loop import LoopPlan
from sparkdl.train.tracker import EpochTracker


def sum_payloads(a: dict, b: dict) -> dict:
    """Associative, commutative sum of two worker results (the treeReduce operator)."""
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


def _fit_partition(elements, state_bc, round_index: int):
    """Executor side: fit this worker's rows of round ``round_index``; yield one payload (none without rows)."""
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
    spec = state["spec"]
    params, opt, stats = fit_round(spec.build(), state["optimizer"], spec.params, state["opt_state"], x[idx], y[idx],
                                   state["batch_size"], round_seed(state["seed"], state["epoch"], round_index, worker),
                                   state["average_updater_state"])  # fmt: skip
    yield {"params": params, "opt": opt, "loss_sum": stats.loss_sum, "examples": stats.examples,
           "minibatches": stats.minibatches, "fit_seconds_max": stats.seconds, "workers": 1}  # fmt: skip


def _run_round(shards, r: int, state_bc, workers: int, depth: int, epoch: int) -> dict:
    payloads = shards.mapPartitions(functools.partial(_fit_partition, state_bc=state_bc, round_index=r))
    try:
        if tree_levels(workers, depth) == 0:
            return functools.reduce(sum_payloads, payloads.collect())
        return payloads.treeReduce(sum_payloads, depth=depth)
    except Exception as e:  # Spark gave up on a task (after spark.task.maxFailures): the round is lost
        from sparkdl.launch.spark import spark_failure

        raise spark_failure(e, f"round {r + 1} of epoch {epoch + 1} failed", epoch=epoch, step=r) from e


def fit_rounds(plan: LoopPlan, spark, shards, valid, head, has_valid: bool, listeners: Sequence[TrainingListener],
               save: Callable[[bytes], None] | None = None):  # fmt: skip
    """The whole fit, one Spark job per round, each described ``sparkdl train: epoch 3/10, round 5/8``; from
    ``plan.resume`` when given, handing a checkpoint to ``save`` every ``plan.checkpoint_every`` epochs. A failed
    round job (after Spark's own task retries) raises ``WorkerFailedError``. Returns (tracker, final parameters,
    stats)."""
    cfg, algo = plan.config, plan.config.algorithm
    dim, n_classes, rounds_per_epoch = plan.dim, plan.head.n_classes, plan.steps_per_epoch
    sc = shards.context
    params = get_params(head)
    opt_state: dict[str, np.ndarray] = {}
    tracker = EpochTracker(cfg)
    start_epoch = 0
    if plan.resume is not None:
        params = dict(plan.resume.shared["params"])
        opt_state = dict(plan.resume.shared["opt_state"])
        tracker.load_state_dict(plan.resume.tracker)
        start_epoch = plan.resume.epoch
    bytes_each_way = 0  # parameters (+ optimizer state) out to every worker and back, per round
    iteration = start_epoch * rounds_per_epoch
    examples_total = 0
    fit_seconds = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        loss_sum, examples = 0.0, 0
        for r in range(rounds_per_epoch):
            t0 = time.perf_counter()
            state = {
                "spec": HeadSpec(cfg.head, dim, n_classes, params),
                "opt_state": opt_state if algo.average_updater_state else {},
                "optimizer": cfg.optimizer,
                "batch_size": cfg.batch_size_per_worker,
                "rows_per_round": cfg.rows_per_step,
                "average_updater_state": algo.average_updater_state,
                "seed": cfg.seed,
                "epoch": epoch,
            }
            state_bc = sc.broadcast(state)
            t1 = time.perf_counter()
            with job_description(spark, "train", f"epoch {epoch + 1}/{cfg.epochs}, round {r + 1}/{rounds_per_epoch}"):
                summed = _run_round(shards, r, state_bc, cfg.run.workers, cfg.run.aggregation_depth, epoch)
            t2 = time.perf_counter()
            k = summed["workers"]
            params = average(summed["params"], k)
            if algo.average_updater_state:
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
            notify(listeners, RoundEvent(
                epoch=epoch, round=r, iteration=iteration, loss=summed["loss_sum"] / max(1, summed["examples"]),
                lr=cfg.optimizer.lr, examples=summed["examples"], workers=k, minibatches=summed["minibatches"],
                message_bytes=param_bytes,
                phases={"broadcast": t1 - t0, "worker_fit": summed["fit_seconds_max"],
                        "aggregate": max(0.0, (t2 - t1) - summed["fit_seconds_max"]), "update": t3 - t2},
            ))  # fmt: skip
        examples_total += examples
        spec = HeadSpec(cfg.head, dim, n_classes, params)
        valid_metrics = None
        if has_valid:
            with job_description(spark, "train", f"epoch {epoch + 1}/{cfg.epochs}, scoring valid"):
                valid_metrics = evaluate_head(valid, spec, n_classes)
        record = tracker.end_epoch(epoch, loss_sum, examples, time.perf_counter() - epoch_start, valid_metrics,
                                   lambda: params)  # fmt: skip
        notify(listeners, record)
        if save is not None and plan.checkpoint_every and (epoch + 1) % plan.checkpoint_every == 0:
            save(Checkpoint(epoch + 1, cfg.to_json(), plan.layout, {"params": params, "opt_state": opt_state}, [],
                            tracker.state_dict()).to_bytes())  # fmt: skip
        if tracker.should_stop:
            break
    stats = {
        "examples": examples_total,
        "iterations": iteration,
        "bytes_driver_to_workers": bytes_each_way,
        "bytes_workers_to_driver": bytes_each_way,
        "worker_fit_seconds": fit_seconds,
    }
    return tracker, params, stats
