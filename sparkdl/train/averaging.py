"""ParameterAveragingTrainingMaster: synchronous parameter averaging on Spark (the Deeplearning4j design).

Per epoch the training rows are shuffled (hash of seed, epoch, path) and cut into rounds of
``workers x batch_size_per_worker x averaging_frequency`` rows; inside a round, row ``pos`` goes to worker
``pos mod workers`` (balanced, also in a short last round). Per round:

1. the driver broadcasts the head's parameters (and the optimizer state when ``average_updater_state``);
2. each worker fits ``averaging_frequency`` minibatches of ``batch_size_per_worker`` rows, in ``pos`` order;
3. ``treeReduce(depth)`` sums parameters, optimizer state, loss and counts; the driver divides by the number of
   workers that took part. Only parameter-sized objects move; the driver never collects features.

Spark-native fault tolerance: a lost task is retried by Spark and recomputes the same update (its inputs are a
broadcast and cached rows). With plain SGD and ``averaging_frequency = 1`` one round equals one step of SGD on the
round's ``workers x batch`` rows (tested exactly).

Data layout per epoch: the rows of each (round, worker) packed into one element (raw float32 / int32 buffers) of a
cached RDD whose partition ``w`` holds worker ``w``'s packs (identity partitioner); lost partitions are recomputed
from the lineage (features Parquet -> plan -> pack). A round's task skips the other rounds' packs.

Aggregation: ``treeReduce(depth)`` over the workers' results. Where Spark's tree would have no intermediate level
(up to about 2**depth + 2 workers) the results are collected and summed on the driver, which is what treeReduce does
in that case, without its extra Python stage.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Sequence

import numpy as np
from torch import nn

from sparkdl.data.features import validate_features
from sparkdl.data.arrow import features_matrix
from sparkdl.evaluate import evaluate_head
from sparkdl.train.head import HeadSpec
from sparkdl.train.listeners import TrainingListener
from sparkdl.train.local import (
    build_optimizer, fit_minibatches, get_optimizer_state, get_params, set_optimizer_state, set_params,
)  # fmt: skip
from sparkdl.train.master import TrainingMaster, TrainResult

BLOB_SCHEMA = "round int, worker int, n int, dim int, x binary, y binary"


def _identity(key: int) -> int:
    return key


def _pack_group(table):
    """All rows of one (round, worker), in ``pos`` order, packed into one row of raw float32 / int32 buffers."""
    import pyarrow as pa

    table = table.sort_by("pos")
    x = features_matrix(table.column("features"))
    y = table.column("label_index").to_numpy().astype(np.int32)
    return pa.table(
        {
            "round": pa.array([table.column("round")[0].as_py()], pa.int32()),
            "worker": pa.array([table.column("worker")[0].as_py()], pa.int32()),
            "n": pa.array([len(y)], pa.int32()),
            "dim": pa.array([x.shape[1]], pa.int32()),
            "x": pa.array([x.tobytes()], pa.binary()),
            "y": pa.array([y.tobytes()], pa.binary()),
        }
    )


def _fit_round(elements, state_bc, round_index: int):
    """Executor side: fit this worker's rows of round ``round_index``; yield one payload (parameters, optimizer
    state, loss, counts) to be summed. ``elements`` are one worker's ``(worker, (round, n, dim, x bytes, y bytes))``
    pairs for the whole epoch; the other rounds' packs are skipped."""
    import torch
    from pyspark import TaskContext

    state = state_bc.value
    packs = [(worker, pack) for worker, pack in elements if pack[0] == round_index]
    if not packs:
        return
    worker = packs[0][0]  # the identity partitioner puts one worker's packs in each partition
    ctx = TaskContext.get()
    torch.set_num_threads(max(1, ctx.cpus() if ctx is not None else 1))
    torch.manual_seed((state["seed"] * 1_000_003 + state["epoch"] * 10_007 + state["round"] * 101 + worker) % 2**63)
    model = state["spec"].build()
    optimizer = build_optimizer(state["optimizer"], model.parameters())
    if state["opt_state"]:
        set_optimizer_state(optimizer, state["opt_state"])
    x = np.concatenate([np.frombuffer(xb, dtype=np.float32).reshape(n, dim) for _, (_, n, dim, xb, _) in packs])
    y = np.concatenate([np.frombuffer(yb, dtype=np.int32) for _, (*_, yb) in packs])
    stats = fit_minibatches(model, optimizer, x, y, state["batch_size"])
    yield {
        "params": get_params(model),
        "opt": get_optimizer_state(optimizer) if state["average_updater_state"] else {},
        "loss_sum": stats.loss_sum,
        "examples": stats.examples,
        "minibatches": stats.minibatches,
        "fit_seconds_sum": stats.seconds,
        "fit_seconds_max": stats.seconds,
        "workers": 1,
    }


def sum_payloads(a: dict, b: dict) -> dict:
    """Associative, commutative sum of two worker results (the treeReduce operator)."""
    return {
        "params": {k: a["params"][k] + b["params"][k] for k in a["params"]},
        "opt": {k: a["opt"][k] + b["opt"][k] for k in a["opt"]},
        "loss_sum": a["loss_sum"] + b["loss_sum"],
        "examples": a["examples"] + b["examples"],
        "minibatches": a["minibatches"] + b["minibatches"],
        "fit_seconds_sum": a["fit_seconds_sum"] + b["fit_seconds_sum"],
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


class ParameterAveragingTrainingMaster(TrainingMaster):
    def epoch_plan(self, train, epoch: int):
        """``path, pos, round, worker`` for every training row in ``epoch``: the shuffled position and where it
        is fitted. Computed on the (path) column only; the public record of which rows meet in which round."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        cfg = self.config
        order = Window.orderBy("u", "path")
        keyed = train.select("path").withColumn("u", F.xxhash64(F.lit(cfg.seed), F.lit(epoch), F.col("path")))
        pos = keyed.withColumn("pos", (F.row_number().over(order) - 1).cast("long"))
        per_round = cfg.rows_per_round
        return pos.select(
            "path",
            "pos",
            (F.col("pos") / per_round).cast("int").alias("round"),
            (F.pmod(F.col("pos"), F.lit(per_round)) % cfg.workers).cast("int").alias("worker"),
        )

    def _epoch_blobs(self, train, epoch: int):
        """The epoch's rows packed per (round, worker), in a cached RDD whose partition ``w`` holds worker ``w``'s
        packs (identity partitioner). Lost partitions are recomputed from the lineage."""
        from pyspark import StorageLevel

        workers = self.config.workers
        plan = self.epoch_plan(train, epoch)
        grouped = train.join(plan, "path").groupBy("round", "worker").applyInArrow(_pack_group, BLOB_SCHEMA)
        keyed = grouped.rdd.map(
            lambda row: (row["worker"], (row["round"], row["n"], row["dim"], bytes(row["x"]), bytes(row["y"])))
        )
        blobs = keyed.partitionBy(workers, _identity).persist(StorageLevel.MEMORY_AND_DISK)
        blobs.count()
        return blobs

    def _run_round(self, blobs, r: int, state_bc) -> dict:
        """Fit round ``r`` on every worker and sum the results with ``treeReduce(depth)``. Where Spark's tree would
        add no intermediate level (few workers) the W results are collected and summed on the driver directly, which
        is what treeReduce does then, minus a second Python stage."""
        cfg = self.config
        payloads = blobs.mapPartitions(functools.partial(_fit_round, state_bc=state_bc, round_index=r))
        if tree_levels(cfg.workers, cfg.aggregation_depth) == 0:
            return functools.reduce(sum_payloads, payloads.collect())
        return payloads.treeReduce(sum_payloads, depth=cfg.aggregation_depth)

    def fit(self, features, head: nn.Module, n_classes: int, listeners: Sequence[TrainingListener] = ()) -> TrainResult:
        from pyspark.sql import functions as F

        cfg = self.config
        spark = features.sparkSession
        sc = spark.sparkContext
        start = time.perf_counter()
        info = validate_features(features, n_classes)
        dim = info["feature_dim"]
        train = features.filter(F.col("split") == "train").select("path", "label_index", "features")
        valid = features.filter(F.col("split") == "valid").select("features", "label_index")
        params = get_params(head)
        opt_state: dict[str, np.ndarray] = {}
        rounds_per_epoch = math.ceil(info["train"] / cfg.rows_per_round)
        history: list[dict] = []
        best_score, best_epoch, best_params = -math.inf, 0, params
        bytes_each_way = 0  # parameters (+ optimizer state) out to every worker and back, per round
        iteration = 0
        examples_total = 0
        fit_seconds = 0.0
        stale_epochs = 0
        for epoch in range(cfg.epochs):
            epoch_start = time.perf_counter()
            blobs = self._epoch_blobs(train, epoch)
            prepare_seconds = time.perf_counter() - epoch_start
            loss_sum, examples = 0.0, 0
            try:
                for r in range(rounds_per_epoch):
                    t0 = time.perf_counter()
                    state = {
                        "spec": HeadSpec(cfg.head, dim, n_classes, params),
                        "opt_state": opt_state if cfg.average_updater_state else {},
                        "optimizer": cfg.optimizer,
                        "batch_size": cfg.batch_size_per_worker,
                        "average_updater_state": cfg.average_updater_state,
                        "seed": cfg.seed,
                        "epoch": epoch,
                        "round": r,
                    }
                    state_bc = sc.broadcast(state)
                    t1 = time.perf_counter()
                    summed = self._run_round(blobs, r, state_bc)
                    t2 = time.perf_counter()
                    k = summed["workers"]
                    params = average(summed["params"], k)
                    if cfg.average_updater_state:
                        opt_state = average(summed["opt"], k)
                    t3 = time.perf_counter()
                    state_bc.destroy()
                    param_bytes = sum(v.nbytes for v in params.values()) + sum(v.nbytes for v in opt_state.values())
                    bytes_each_way += param_bytes * k
                    loss_sum += summed["loss_sum"]
                    examples += summed["examples"]
                    fit_seconds += summed["fit_seconds_max"]
                    iteration += 1
                    event = {
                        "type": "round",
                        "epoch": epoch,
                        "round": r,
                        "iteration": iteration,
                        "loss": summed["loss_sum"] / max(1, summed["examples"]),
                        "lr": cfg.optimizer.lr,
                        "examples": summed["examples"],
                        "workers": k,
                        "minibatches": summed["minibatches"],
                        "phases": {
                            "broadcast": t1 - t0,
                            "worker_fit": summed["fit_seconds_max"],
                            "aggregate": max(0.0, (t2 - t1) - summed["fit_seconds_max"]),
                            "driver_update": t3 - t2,
                        },
                    }
                    for listener in listeners:
                        listener.on_round(event)
            finally:
                blobs.unpersist()
            examples_total += examples
            spec = HeadSpec(cfg.head, dim, n_classes, params)
            valid_metrics = evaluate_head(valid, spec, n_classes) if info["valid"] else None
            epoch_seconds = time.perf_counter() - epoch_start
            record = {
                "type": "epoch",
                "epoch": epoch,
                "epochs": cfg.epochs,
                "train_loss": loss_sum / max(1, examples),
                "examples": examples,
                "seconds": epoch_seconds,
                "prepare_seconds": prepare_seconds,
                "examples_per_second": examples / epoch_seconds if epoch_seconds > 0 else 0.0,
                "valid_accuracy": valid_metrics.accuracy if valid_metrics else None,
                "valid_loss": valid_metrics.loss if valid_metrics else None,
                "valid_macro_f1": valid_metrics.macro_f1 if valid_metrics else None,
            }
            history.append(record)
            for listener in listeners:
                listener.on_epoch(record)
            score = valid_metrics.accuracy if valid_metrics else -record["train_loss"]
            if score > best_score:
                best_score, best_epoch, best_params, stale_epochs = score, epoch, params, 0
            else:
                stale_epochs += 1
                if cfg.early_stopping_patience is not None and stale_epochs >= cfg.early_stopping_patience:
                    break
        set_params(head, best_params)
        seconds = time.perf_counter() - start
        stats = {
            "examples": examples_total,
            "examples_per_second": examples_total / seconds if seconds > 0 else 0.0,
            "iterations": iteration,
            "rounds_per_epoch": rounds_per_epoch,
            "bytes_driver_to_workers": bytes_each_way,
            "bytes_workers_to_driver": bytes_each_way,
            "worker_fit_seconds": fit_seconds,
        }
        return TrainResult(
            head=head, best_epoch=best_epoch, history=history, stats=stats, seconds=seconds, final_params=params
        )
