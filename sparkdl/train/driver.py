"""The driver side of a fit: the pluggable ``TrainingMaster`` (``ParameterAveragingTrainingMaster``,
``SharedGradientTrainingMaster``), laying out the shards, launching the worker loop (or running the ``rounds``
execution), and turning the ranks' results into one ``TrainResult``.

Masters decide, launchers execute: a master takes the launcher it is given (``train_head(..., launcher=...)``), else
builds one from ``config.run`` once.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from torch import nn

from sparkdl.config import AveragingConfig, SharingConfig, TrainConfig
from sparkdl.data.features import validate_features
from sparkdl.errors import ConfigError, DataError, DivergedError, SparkDLError, WorkerFailedError
from sparkdl.launch import build_launcher
from sparkdl.model import HeadSpec
from sparkdl.progress import stage_progress
from sparkdl.session import job_description
from sparkdl.train.checkpoint import Checkpoint, CheckpointStore, Resume, checkpoint_epoch
from sparkdl.train.events import (CheckpointEvent, EpochEvent, FailureEvent, PlacementEvent, RoundEvent, TrainingListener,
                                   from_json, notify)
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


def lay_out(features, workers: int, n_classes: int, with_valid: bool, progress=None):
    """Validate the features (``DataError`` naming every problem), check every worker gets a training row, and pack
    the shards (``valid`` too when ``with_valid`` and the table has any). Returns (``validate_features`` info,
    persisted shards RDD). Its Spark jobs show ``sparkdl train: checking the features, ...``; ``progress`` shows
    the packing pass live (``progress.stage_progress``)."""
    spark = features.sparkSession
    with job_description(spark, "train", f"checking the features, sharding them for {workers} workers"):
        info = validate_features(features, n_classes)
        if info["train"] < workers:
            raise DataError(
                f"{info['train']} training rows cannot feed {workers} workers (each needs at least one): lower --workers"
            )
        parts = ("train", "valid") if with_valid and info["valid"] else ("train",)
        rows, tasks = info["train"] + info["valid"] + info["test"], len(info["per_partition"])
        with stage_progress(spark, "train", progress, total_rows=rows, tasks=tasks):
            return info, build_shards(features, info["per_partition"], parts, workers)


def steps_per_epoch(train_rows: int, workers: int, rows_per_step: int) -> int:
    """Steps (rounds) every worker takes per epoch: enough for the largest shard (``ceil(rows / workers)`` rows)."""
    return math.ceil(math.ceil(train_rows / workers) / rows_per_step)


def launch_description(master: str, epochs: int, workers: int, launcher) -> str:
    """The Spark UI's text for a whole fit in one launch: ``averaging, 10 epochs, 2 workers (barrier)``."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    how = "barrier" if isinstance(launcher, SparkBarrierLauncher) else f"shards collected for {type(launcher).__name__}"
    return f"{master}, {epochs} epoch{'s' * (epochs != 1)}, {workers} worker{'s' * (workers != 1)} ({how})"


def run_launch(launcher, fn, shards, listeners: Sequence[TrainingListener], on_artifact=None) -> list:
    """Run a barrier-style worker function: on Spark over the shards RDD, or on a local launcher over the collected
    shards; the typed events rank 0 reports reach ``listeners`` live. The Spark job runs on this thread: it carries
    the caller's ``job_description``."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    def dispatch(data: dict) -> None:
        event = from_json(data)
        if event is not None:
            notify(listeners, event)

    if isinstance(launcher, SparkBarrierLauncher):
        return launcher.run(fn, shards, on_event=dispatch, on_artifact=on_artifact)
    return launcher.run(fn, shards.glom().collect(), on_event=dispatch, on_artifact=on_artifact)


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
            listeners: Sequence[TrainingListener] = (), progress=None) -> TrainResult:  # fmt: skip
        """``n_classes`` defaults to the head's output size (``head_classes``). ``progress`` (a
        ``Callable[[str], None]``): the layout pass's live progress (``progress.stage_progress``)."""
        cfg, run = self.config, self.config.run
        n_classes = head_classes(head, n_classes)
        start = time.perf_counter()
        barrier = run.execution == "barrier"
        launcher = (self.launcher or build_launcher(run)) if barrier else None  # refuses a bad transport first
        spark = features.sparkSession
        if run.resume and not run.checkpoint_dir:
            raise ConfigError("--resume needs a checkpoint directory to resume from (--checkpoint-dir)")
        store = CheckpointStore(run.checkpoint_dir, run.keep_checkpoints, spark) if run.checkpoint_dir else None
        fit = _Fit(cfg, features, head, n_classes, listeners, launcher, store, progress)
        try:
            fit.lay_out(run.workers)
            resume = fit.resume_from_store() if run.resume else None
            prepare_seconds = time.perf_counter() - start
            result = fit.run_attempts(resume)
        finally:
            fit.release()
        result.seconds = time.perf_counter() - start
        result.stats.update(
            prepare_seconds=prepare_seconds,
            steps_per_epoch=fit.steps,
            examples_per_second=result.stats["examples"] / result.seconds if result.seconds > 0 else 0.0,
            execution=run.execution,
            **fit.record(),
        )
        return result


class _Fit:
    """One ``fit`` call: the shards, checkpoints and attempts (a failed barrier stage is launched again from the
    latest checkpoint, on fewer workers when the fit is elastic and slots were lost)."""

    def __init__(self, config: TrainConfig, features, head, n_classes: int, listeners, launcher, store,
                 progress=None) -> None:  # fmt: skip
        self.config, self.features, self.head, self.n_classes = config, features, head, n_classes
        self.listeners, self.launcher, self.store, self.progress = list(listeners), launcher, store, progress
        self.spark = features.sparkSession
        self.shards = None
        self.failures: list[dict] = []
        self.placements: list[dict] = []  # per attempt of a barrier launch: the ranks' transport addresses
        self.checkpoints: list[dict] = []
        self.checkpoint_errors: list[str] = []
        self.resumed_from: int | None = None
        self.start: Resume | None = None  # where this fit began (--resume), the fallback of a re-launch
        self.last_checkpoint: bytes | None = None  # the newest checkpoint this fit wrote
        self.attempts = 0
        self.last_round: RoundEvent | None = None
        self.listeners.insert(0, self._Watch(self))  # first: it sees the round a listener fails on

    class _Watch(TrainingListener):
        """Keeps the last round seen: where a failed attempt was."""

        def __init__(self, fit: "_Fit") -> None:
            self.fit = fit

        def on_round(self, event: RoundEvent) -> None:
            self.fit.last_round = event

        def on_placement(self, event: PlacementEvent) -> None:
            self.fit.placements.append({"attempt": self.fit.attempts, "addresses": list(event.addresses)})

    # ------------------------------------------------------------------------------------------------ layout
    def lay_out(self, workers: int) -> None:
        cfg = self.config
        self.release()
        self.workers = workers
        barrier = cfg.run.execution == "barrier"
        self.info, self.shards = lay_out(self.features, workers, self.n_classes, with_valid=barrier, progress=self.progress)
        self.dim = self.info["feature_dim"]
        self.steps = steps_per_epoch(self.info["train"], workers, cfg.rows_per_step)
        counts = json.dumps(self.info["per_partition"], sort_keys=True).encode()
        self.layout = {"train_rows": self.info["train"], "valid_rows": self.info["valid"], "feature_dim": self.dim,
                       "n_classes": self.n_classes, "workers": workers,
                       "partitions": hashlib.sha256(counts).hexdigest()[:16]}  # fmt: skip

    def release(self) -> None:
        if self.shards is not None:
            self.shards.unpersist()
            self.shards = None

    # ------------------------------------------------------------------------------------------- checkpoints
    def resume_from_store(self) -> Resume | None:
        """``--resume``: the latest checkpoint, checked against this fit's settings and layout; None (a fresh start)
        when the directory holds none yet, so a job re-submitted with --resume after any interruption is right."""
        found = self.store.latest()
        if found is None:
            return None
        checkpoint, uri = found
        checkpoint.check_compatible(self.config.to_json(), self.layout, self.config.run.elastic, uri)
        self.resumed_from = checkpoint.epoch
        self.start = checkpoint.resume(self.workers)
        return self.start

    def latest(self) -> Resume | None:
        """Where a re-launch starts: the newest checkpoint this fit wrote (never one of another run left in the
        directory), else where the fit began."""
        if self.last_checkpoint is not None:
            return Checkpoint.from_bytes(self.last_checkpoint, "the latest checkpoint").resume(self.workers)
        if self.start is not None and self.start.ranks is not None and len(self.start.ranks) != self.workers:
            return Resume(self.start.epoch, self.start.shared, None, self.start.tracker)
        return self.start

    def save(self, data: bytes) -> None:
        """A checkpoint from rank 0 (or the rounds loop): written now, on the driver, while training goes on."""
        t0 = time.perf_counter()
        epoch = checkpoint_epoch(data)
        self.last_checkpoint = data  # a re-launch can go on from it even if writing it fails
        try:
            uri, size = self.store.write_bytes(epoch, data)
        except (SparkDLError, OSError) as e:  # the fit goes on; the failure is in the stats and the summary's warnings
            self.checkpoint_errors.append(f"the checkpoint after epoch {epoch} was not written: {e}")
            return
        event = CheckpointEvent(epoch=epoch, uri=uri, bytes=size, seconds=time.perf_counter() - t0)
        self.checkpoints.append({"epoch": epoch, "bytes": size, "seconds": round(event.seconds, 4)})
        notify(self.listeners, event)

    @property
    def checkpoint_every(self) -> int:
        return self.config.run.checkpoint_every if self.store is not None else 0

    # ---------------------------------------------------------------------------------------------- attempts
    def run_attempts(self, resume: Resume | None) -> TrainResult:
        run = self.config.run
        while True:
            self.attempts += 1
            self.last_round = None
            try:
                if run.execution == "barrier":
                    return self._barrier(resume)
                return self._rounds(resume)
            except WorkerFailedError as e:
                resume = self._after_failure(e)

    def _after_failure(self, error: WorkerFailedError) -> Resume | None:
        """Record the failure; raise when attempts are spent or too few slots are left; else where to go on."""
        run = self.config.run
        where = self.last_round
        epoch = error.epoch if error.epoch is not None else (where.epoch if where is not None else None)
        step = error.step if error.step is not None else (where.round if where is not None else None)
        failure = {"attempt": self.attempts, "rank": error.rank, "epoch": epoch, "step": step, "cause": error.cause}
        detail = WorkerFailedError(_failure_text(failure), error.rank, epoch, step, error.cause)
        if self.attempts >= run.max_attempts:
            self._fail(failure, None)
            raise WorkerFailedError(f"training failed {self.attempts} time(s), --max-attempts {run.max_attempts}: "
                                    f"{detail}", error.rank, epoch, step, error.cause) from error  # fmt: skip
        if run.execution == "barrier":
            failure["hosts_dropped"] = self._drop_unreachable(error.cause)
            self._wait_for_slots()
        resume = self.latest()
        self._fail(failure, resume.epoch if resume is not None else 0)
        return resume

    def _fail(self, failure: dict, resume_epoch: int | None) -> None:
        self.failures.append({**failure, "resume_epoch": resume_epoch, "workers_after": self.workers})
        notify(self.listeners, FailureEvent(attempt=failure["attempt"], cause=failure["cause"], rank=failure["rank"],
                                            epoch=failure["epoch"], resume_epoch=resume_epoch))  # fmt: skip

    def _drop_unreachable(self, cause: str | None) -> list[str]:
        """Hosts the failure names that the driver cannot reach either lose their executors now (a partition:
        ``launch.spark.drop_unreachable_hosts``); a local launcher has none."""
        from sparkdl.launch.spark import SparkBarrierLauncher, drop_unreachable_hosts

        if not isinstance(self.launcher, SparkBarrierLauncher):
            return []
        return drop_unreachable_hosts(self.spark.sparkContext, cause or "")

    def _wait_for_slots(self) -> None:
        """Before a re-launch: wait (``slot_wait_s``) for the task slots a lost executor took; an elastic fit goes
        on with what there is (at least ``min_workers``, the shards dealt again), any other one fails."""
        run = self.config.run
        deadline = time.monotonic() + run.slot_wait_s
        slots = task_slots(self.spark.sparkContext)
        while slots < self.workers and time.monotonic() < deadline:
            time.sleep(1.0)
            slots = task_slots(self.spark.sparkContext)
        if slots >= self.workers:
            return
        if run.elastic and slots >= run.min_workers:
            self.lay_out(slots)  # the averaged state carries over; sharing's residuals of the lost ranks are dropped
            return
        need = (f"at least --min-workers {run.min_workers}" if run.elastic
                else f"{self.workers} (--workers; --min-workers lets a fit go on with fewer)")  # fmt: skip
        raise WorkerFailedError(f"only {slots} task slot(s) left after a failure, {need} needed: add executors and "
                                "run again with --resume")  # fmt: skip

    # ---------------------------------------------------------------------------------------------- executions
    def _plan(self, resume: Resume | None) -> LoopPlan:
        cfg = self.config
        if self.workers != cfg.run.workers:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, workers=self.workers))
        spec = HeadSpec(cfg.head, self.dim, self.n_classes, get_params(self.head))
        return LoopPlan(cfg, spec, self.dim, self.steps, resume, self.checkpoint_every, self.layout)

    def _barrier(self, resume: Resume | None) -> TrainResult:
        cfg, plan = self.config, self._plan(resume)
        with job_description(self.spark, "train", launch_description(cfg.master, cfg.epochs, self.workers, self.launcher)):
            outs: list[LoopResult] = run_launch(self.launcher, functools.partial(run_worker, plan=plan), self.shards,
                                                self.listeners, self.save if plan.checkpoint_every else None)  # fmt: skip
        lead = outs[0]
        if lead.diverged:
            raise DivergedError(lead.diverged)
        identical = len({o.digest for o in outs}) == 1
        synchronous = isinstance(cfg.algorithm, AveragingConfig) or cfg.algorithm.staleness == 0
        if synchronous and not identical:  # every rank applies the same bits in the same order: anything else is a bug
            raise SparkDLError(f"synchronous {cfg.master} ended with different parameters on different workers "
                               f"({len({o.digest for o in outs})} distinct): a bug, please report it")  # fmt: skip
        set_params(self.head, lead.best_params)
        history = lead.history
        param_bytes = sum(v.nbytes for v in lead.final_params.values())
        first = resume.epoch if resume is not None else 0  # the epochs before came with the checkpoint
        stats = {
            "examples": sum(h.examples for h in history if h.epoch >= first),  # trained by this attempt
            "iterations": len(history) * self.steps,
            "bytes_between_workers": sum(o.transport["bytes_sent"] for o in outs),
            "transport_rejected": sum(o.transport["rejected"] for o in outs),  # refused calls: wrong secret, probes
            "bytes_driver_to_workers": param_bytes * self.workers,  # the initial head, in the stage's closure
            "bytes_workers_to_driver": 2 * param_bytes,  # rank 0's final and best parameters
            "ranks_identical": identical,
            # the longest any rank's training thread spent on checkpoints (rank 0 encodes and sends on a thread)
            "checkpoint_seconds_in_loop": round(max(o.stats["checkpoint_seconds"] for o in outs), 4),
        }
        if isinstance(cfg.algorithm, SharingConfig):
            stats.update(_sharing_stats(outs))
        else:
            stats.update(allreduce_payload_bytes=lead.stats["payload_bytes"], worker_fit_seconds=None)
        return TrainResult(self.head, lead.best_epoch, history, stats, 0.0, lead.final_params)

    def _rounds(self, resume: Resume | None) -> TrainResult:
        from pyspark.sql import functions as F

        from sparkdl.train.rounds import fit_rounds

        valid = self.features.filter(F.col("split") == "valid").select("path", "label_index", "features")
        tracker, final, stats = fit_rounds(self._plan(resume), self.spark, self.shards, valid, self.head,
                                           bool(self.info["valid"]), self.listeners,
                                           self.save if self.checkpoint_every else None)  # fmt: skip
        set_params(self.head, tracker.best_params)
        return TrainResult(self.head, tracker.best_epoch, tracker.history, stats, 0.0, final)

    def record(self) -> dict:
        """What metrics.json and the summary say about attempts, failures and checkpoints."""
        return {"attempts": self.attempts, "failures": self.failures, "placements": self.placements,
                "resumed_from_epoch": self.resumed_from,
                "workers_final": self.workers, "checkpoints_written": len(self.checkpoints),
                "checkpoint_seconds": round(sum(c["seconds"] for c in self.checkpoints), 4),
                "checkpoint_bytes": self.checkpoints[-1]["bytes"] if self.checkpoints else 0,
                "checkpoint_errors": self.checkpoint_errors}  # fmt: skip


def _failure_text(failure: dict) -> str:
    who = f"worker rank {failure['rank']}" if failure["rank"] is not None else "a worker"
    where = ""
    if failure["epoch"] is not None:
        where = f" in epoch {failure['epoch'] + 1}" + (f", step {failure['step'] + 1}" if failure["step"] is not None else "")
    return f"{who} failed{where}: {failure['cause']}"


def task_slots(sc) -> int:
    """Barrier tasks this application can run at once now (Spark's own count, which drops when an executor is lost;
    ``defaultParallelism / spark.task.cpus`` where it cannot be asked)."""
    try:
        jsc = sc._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - a Spark without the method: the conf-based estimate
        return sc.defaultParallelism // max(1, int(sc.getConf().get("spark.task.cpus", "1")))


def _sharing_stats(outs: list[LoopResult]) -> dict:
    """Bytes, compression and thresholds of a sharing fit, in total and per rank."""
    s = [o.stats for o in outs]
    message_bytes, dense_bytes = sum(x["message_bytes"] for x in s), sum(x["dense_bytes"] for x in s)
    per_worker = [{"rank": o.rank, "bytes_sent": o.transport["bytes_sent"],
                   "bytes_received": o.transport["bytes_received"], "rejected": o.transport["rejected"],
                   "update_bytes": o.stats["message_bytes"], "dense_equivalent_bytes": o.stats["dense_bytes"],
                   "compression_ratio": o.stats["dense_bytes"] / max(1, o.stats["message_bytes"]),
                   "encode_seconds": round(o.stats["encode_seconds"], 4),
                   "decode_seconds": round(o.stats["decode_seconds"], 4), "duplicates": o.stats["duplicates"],
                   "sent_fraction": o.stats["entries_sent"] / max(1, o.stats["messages"] * o.stats["length"]),
                   "tau_per_epoch": o.stats["taus"], "residual_norm_per_epoch": o.stats["residual_norms"],
                   "updates_applied": o.stats["updates_applied"], "updates_expected": o.stats["updates_expected"],
                   "max_update_lag": o.stats["max_update_lag"]}
                  for o in outs]  # fmt: skip
    return {
        "update_bytes": message_bytes,
        "dense_equivalent_bytes": dense_bytes,
        "compression_ratio": dense_bytes / max(1, message_bytes),
        "sent_fraction": sum(x["entries_sent"] for x in s) / max(1, sum(x["messages"] * x["length"] for x in s)),
        # every rank applied every rank's update of every step exactly once (each rank checks its own at the end)
        "updates_exactly_once": all(n == x["updates_expected"] for x in s for n in x["updates_applied"]),
        "max_update_lag": max(x["max_update_lag"] for x in s),
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
