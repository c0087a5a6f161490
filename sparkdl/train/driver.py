"""The driver side of a fit: the pluggable ``TrainingMaster`` (``ParameterAveragingTrainingMaster``,
``SharedGradientTrainingMaster``), laying out the shards, launching the worker loop (or running the ``rounds``
execution), and turning the ranks' results into one ``TrainResult``.

Masters decide, launchers execute: a master takes the launcher it is given (``train_head(..., launcher=...)``), else
builds one from ``config.run`` once.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from torch import nn

from sparkdl.config import AveragingConfig, SharingConfig, TrainConfig
from sparkdl.data.features import validate_features
from sparkdl.errors import ConfigError, DataError, DivergedError, WorkerFailedError
from sparkdl.launch import build_launcher
from sparkdl.model import HeadSpec
from sparkdl.session import job_description
from sparkdl.train.events import EpochEvent, TrainingListener, from_json, notify
from sparkdl.train.layout import build_shards, epoch_order, partition_starts, plan_partition
from sparkdl.train.local import get_params, set_params
from sparkdl.train.loop import LoopPlan, LoopResult, run_worker


@dataclass
class TrainResult:
    head: nn.Module  # holds the parameters of the best epoch
    best_epoch: int  # 0-based
    history: list[EpochEvent]  # one per epoch
    stats: dict  # phase timings, bytes moved, examples/s
    seconds: float
    final_params: dict = field(default_factory=dict)  # the last epoch's parameters (numpy), whatever the best was


def head_classes(head: nn.Module, n_classes: int | None) -> int:
    """``n_classes``, or the output size of the head's last linear layer."""
    if n_classes is not None:
        return n_classes
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("cannot tell the number of classes from this head: pass n_classes")
    return linears[-1].out_features


def lay_out(features, workers: int, n_classes: int, with_valid: bool):
    """Validate the features (``DataError`` naming every problem), check every worker gets a training row, and pack
    the shards (``valid`` too when ``with_valid`` and the table has any). Returns (``validate_features`` info,
    persisted shards RDD). Its Spark jobs show ``sparkdl train: checking the features, ...``."""
    with job_description(features.sparkSession, "train", f"checking the features, sharding them for {workers} workers"):
        info = validate_features(features, n_classes)
        if info["train"] < workers:
            raise DataError(
                f"{info['train']} training rows cannot feed {workers} workers (each needs at least one): lower --workers"
            )
        parts = ("train", "valid") if with_valid and info["valid"] else ("train",)
        return info, build_shards(features, info["per_partition"], parts, workers)


def steps_per_epoch(train_rows: int, workers: int, rows_per_step: int) -> int:
    """Steps (rounds) every worker takes per epoch: enough for the largest shard (``ceil(rows / workers)`` rows)."""
    return math.ceil(math.ceil(train_rows / workers) / rows_per_step)


def launch_description(master: str, epochs: int, workers: int, launcher) -> str:
    """The Spark UI's text for a whole fit in one launch: ``averaging, 10 epochs, 2 workers (barrier)``."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    how = "barrier" if isinstance(launcher, SparkBarrierLauncher) else f"shards collected for {type(launcher).__name__}"
    return f"{master}, {epochs} epoch{'s' * (epochs != 1)}, {workers} worker{'s' * (workers != 1)} ({how})"


def run_launch(launcher, fn, shards, listeners: Sequence[TrainingListener]) -> list:
    """Run a barrier-style worker function: on Spark over the shards RDD, or on a local launcher over the collected
    shards; the typed events rank 0 reports reach ``listeners`` live. The Spark job runs on this thread: it carries
    the caller's ``job_description``."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    def dispatch(data: dict) -> None:
        event = from_json(data)
        if event is not None:
            notify(listeners, event)

    if isinstance(launcher, SparkBarrierLauncher):
        return launcher.run(fn, shards, on_event=dispatch)
    return launcher.run(fn, shards.glom().collect(), on_event=dispatch)


class TrainingMaster:
    """Fits a head on the ``split = 'train'`` rows of a features DataFrame (``label_index int, features
    array<float>``); scores ``split = 'valid'`` after every epoch and keeps the best. The algorithm is
    ``config.algorithm``; ``launcher`` runs the barrier execution (default: ``build_launcher(config.run)``, a Spark
    barrier stage; a ``LocalLauncher`` collects the packed shards to the driver and runs the ranks on this machine)."""

    algorithm: ClassVar[type | None] = None

    def __init__(self, config: TrainConfig, launcher=None) -> None:
        if self.algorithm is not None and not isinstance(config.algorithm, self.algorithm):
            raise ConfigError(f"{type(self).__name__} runs {self.algorithm.name}, but the config's master is {config.master}")
        self.config = config
        self.launcher = launcher

    def fit(self, features, head: nn.Module, n_classes: int | None = None,
            listeners: Sequence[TrainingListener] = ()) -> TrainResult:  # fmt: skip
        """``n_classes`` defaults to the head's output size (``head_classes``)."""
        from pyspark.sql import functions as F

        cfg = self.config
        n_classes = head_classes(head, n_classes)
        start = time.perf_counter()
        barrier = cfg.run.execution == "barrier"
        launcher = (self.launcher or build_launcher(cfg.run)) if barrier else None  # refuses a bad transport first
        info, shards = lay_out(features, cfg.run.workers, n_classes, with_valid=barrier)
        dim = info["feature_dim"]
        steps = steps_per_epoch(info["train"], cfg.run.workers, cfg.rows_per_step)
        prepare_seconds = time.perf_counter() - start
        spark = features.sparkSession
        try:
            if barrier:
                with job_description(spark, "train", launch_description(cfg.master, cfg.epochs, cfg.run.workers, launcher)):
                    result = self._fit_barrier(launcher, shards, head, dim, n_classes, steps, listeners)
            else:
                from sparkdl.train.rounds import fit_rounds

                valid = features.filter(F.col("split") == "valid").select("path", "label_index", "features")
                tracker, final, stats = fit_rounds(cfg, spark, shards, valid, head, dim, n_classes, bool(info["valid"]),
                                                   steps, listeners)  # fmt: skip
                set_params(head, tracker.best_params)
                result = TrainResult(head, tracker.best_epoch, tracker.history, stats, 0.0, final)
        finally:
            shards.unpersist()
        result.seconds = time.perf_counter() - start
        result.stats.update(
            prepare_seconds=prepare_seconds,
            steps_per_epoch=steps,
            examples_per_second=result.stats["examples"] / result.seconds if result.seconds > 0 else 0.0,
            execution=cfg.run.execution,
        )
        return result

    def _fit_barrier(self, launcher, shards, head, dim: int, n_classes: int, steps: int, listeners) -> TrainResult:
        cfg = self.config
        plan = LoopPlan(cfg, HeadSpec(cfg.head, dim, n_classes, get_params(head)), dim, steps)
        outs: list[LoopResult] = run_launch(launcher, functools.partial(run_worker, plan=plan), shards, listeners)
        lead = outs[0]
        if lead.diverged:
            raise DivergedError(lead.diverged)
        identical = len({o.digest for o in outs}) == 1
        synchronous = isinstance(cfg.algorithm, AveragingConfig) or cfg.algorithm.staleness == 0
        if synchronous and not identical:  # every rank applies the same bits in the same order: anything else is a bug
            raise WorkerFailedError(f"synchronous {cfg.master} ended with different parameters on different workers "
                                    f"({len({o.digest for o in outs})} distinct): a bug, please report it")  # fmt: skip
        set_params(head, lead.best_params)
        history = lead.history
        examples = sum(h.examples for h in history)
        param_bytes = sum(v.nbytes for v in lead.final_params.values())
        stats = {
            "examples": examples,
            "iterations": len(history) * steps,
            "bytes_between_workers": sum(o.transport["bytes_sent"] for o in outs),
            "transport_rejected": sum(o.transport["rejected"] for o in outs),  # refused calls: wrong secret, probes
            "bytes_driver_to_workers": param_bytes * cfg.run.workers,  # the initial head, in the stage's closure
            "bytes_workers_to_driver": 2 * param_bytes,  # rank 0's final and best parameters
            "ranks_identical": identical,
        }
        if isinstance(cfg.algorithm, SharingConfig):
            stats.update(_sharing_stats(outs))
        else:
            stats.update(allreduce_payload_bytes=lead.stats["payload_bytes"], worker_fit_seconds=None)
        return TrainResult(head, lead.best_epoch, history, stats, 0.0, lead.final_params)


def _sharing_stats(outs: list[LoopResult]) -> dict:
    """Bytes, compression and thresholds of a sharing fit, in total and per rank."""
    s = [o.stats for o in outs]
    message_bytes, dense_bytes = sum(x["message_bytes"] for x in s), sum(x["dense_bytes"] for x in s)
    per_worker = [{"rank": o.rank, "bytes_sent": o.transport["bytes_sent"],
                   "bytes_received": o.transport["bytes_received"], "rejected": o.transport["rejected"],
                   "update_bytes": o.stats["message_bytes"], "dense_equivalent_bytes": o.stats["dense_bytes"],
                   "compression_ratio": o.stats["dense_bytes"] / max(1, o.stats["message_bytes"]),
                   "encode_seconds": round(o.stats["encode_seconds"], 4),
                   "decode_seconds": round(o.stats["decode_seconds"], 4),
                   "sent_fraction": o.stats["entries_sent"] / max(1, o.stats["messages"] * o.stats["length"]),
                   "tau_per_epoch": o.stats["taus"], "residual_norm_per_epoch": o.stats["residual_norms"]}
                  for o in outs]  # fmt: skip
    return {
        "update_bytes": message_bytes,
        "dense_equivalent_bytes": dense_bytes,
        "compression_ratio": dense_bytes / max(1, message_bytes),
        "sent_fraction": sum(x["entries_sent"] for x in s) / max(1, sum(x["messages"] * x["length"] for x in s)),
        "workers": per_worker,
    }


class ParameterAveragingTrainingMaster(TrainingMaster):
    """Synchronous parameter averaging (``train.exchange.averaging``; DL4J's ParameterAveragingTrainingMaster).

    **Data layout, once per fit** (``train.layout``): training rows are dealt round-robin to the workers in scan
    order, shard ``w`` holding positions ``w, w + W, ...``; per epoch worker ``w`` visits its shard in the order
    ``epoch_order(seed, epoch, w, n)`` and round ``r`` is its rows ``r*B .. (r+1)*B - 1`` of that order,
    ``B = batch_size_per_worker x frequency``. Two executions of the same math: ``barrier`` (default; one barrier
    stage, sums over the transport's tree) and ``rounds`` (one Spark job per round, ``train.rounds``)."""

    algorithm = AveragingConfig

    def shard_plan(self, features, per_partition: list[dict], part: str = "train"):
        """``path, worker, local`` for every row of ``part`` (the dealing ``build_shards`` does).
        ``per_partition`` are ``validate_features(...)['per_partition']`` of the same DataFrame."""
        starts = partition_starts(per_partition, ("train", "valid"))
        fn = functools.partial(plan_partition, starts=starts, workers=self.config.run.workers, part=part)
        return features.select("path", "split").mapInArrow(fn, "path string, worker int, local long")

    def epoch_plan(self, features, epoch: int) -> list[tuple[int, int, int, str]]:
        """``(round, worker, index in the worker's round, path)`` for every training row in ``epoch``, sorted.
        Collects the paths to the driver: for inspection and tests, not used by training."""
        cfg = self.config
        with job_description(features.sparkSession, "train", f"planning epoch {epoch + 1} of {cfg.run.workers} shards"):
            info = validate_features(features, 2**31 - 1)
            planned = self.shard_plan(features, info["per_partition"]).collect()
        shards: dict[int, list[str]] = {}
        for row in sorted(planned, key=lambda r: (r["worker"], r["local"])):
            shards.setdefault(row["worker"], []).append(row["path"])
        plan, per_round = [], cfg.rows_per_step
        for worker, paths in shards.items():
            order = epoch_order(cfg.seed, epoch, worker, len(paths))
            for pos, local in enumerate(order):
                plan.append((pos // per_round, worker, pos % per_round, paths[local]))
        return sorted(plan)


class SharedGradientTrainingMaster(TrainingMaster):
    """Threshold-quantized gradient sharing over a tree of workers (``train.exchange.sharing``; Strom 2015, DL4J's
    SharedTrainingMaster), in one barrier stage."""

    algorithm = SharingConfig


def build_master(config: TrainConfig, launcher=None) -> TrainingMaster:
    cls = ParameterAveragingTrainingMaster if isinstance(config.algorithm, AveragingConfig) else SharedGradientTrainingMaster
    return cls(config, launcher)
