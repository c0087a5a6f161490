"""Typed, frozen configuration objects, one per concern, validated on construction.

Library code takes these objects; only ``cli.py`` and ``jobs/`` read argv or the environment.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import ClassVar, Mapping, Union

from sparkdl.errors import ConfigError

SPLIT_NAMES: tuple[str, str, str] = ("train", "valid", "test")

_MEMORY_RE = re.compile(r"^\d+[kmgt]?$", re.IGNORECASE)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _check_fraction(name: str, value: float) -> None:
    _require(
        isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0,
        f"{name} must be a number in [0, 1], got {value!r}",
    )


def _check_optional_positive(name: str, value: int | None) -> None:
    _require(value is None or (isinstance(value, int) and value > 0), f"{name} must be a positive integer, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_uri(name: str, value: str) -> None:
    _require(isinstance(value, str) and value.strip() != "", f"{name} must be a non-empty path or Hadoop URI")


def to_json(obj) -> object:
    """A config dataclass (and what it nests) as JSON-able data, from its fields: tuples become lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_json(v) for v in obj]
    return obj


# the driver heap sparkdl gives a local master it launches itself, when the user set none
LOCAL_DRIVER_MEMORY = "2g"


@dataclass(frozen=True)
class SessionConfig:
    """How to build (or join) the SparkSession.

    Join, never override: when this process already runs Spark (``spark-submit``, a notebook, a SparkContext of the
    caller's) sparkdl joins it and sets only what the application left unset; ``master`` and ``driver_memory`` apply
    only when sparkdl launches Spark itself. There, ``master=None`` means the user's own setting
    (``spark-defaults.conf``, ``PYSPARK_SUBMIT_ARGS``), else ``local[*]``; ``driver_memory=None`` means theirs, else
    ``LOCAL_DRIVER_MEMORY`` for local masters; ``log_level=None`` means ``WARN`` when sparkdl launched Spark and the
    application's own log4j setting when it joined. For local masters every listener binds to 127.0.0.1 and Python
    workers use this interpreter.
    """

    master: str | None = None
    app_name: str = "sparkdl"
    driver_memory: str | None = None
    ui_enabled: bool = True
    arrow_max_records_per_batch: int = 256
    log_level: str | None = None
    extra_conf: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _require(self.master is None or self.master.strip() != "", "master must be a Spark master URL or None")
        _require(bool(self.app_name), "app_name must not be empty")
        _require(
            self.driver_memory is None or bool(_MEMORY_RE.match(self.driver_memory)),
            f"driver_memory must look like '2g' or '512m', got {self.driver_memory!r}",
        )
        _require(self.arrow_max_records_per_batch > 0, "arrow_max_records_per_batch must be > 0")
        levels = {"ALL", "DEBUG", "ERROR", "FATAL", "INFO", "OFF", "TRACE", "WARN"}
        _require(self.log_level is None or self.log_level.upper() in levels, f"log_level must be one of {sorted(levels)}, got {self.log_level!r}")
        for pair in self.extra_conf:
            _require(
                isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair),
                f"extra_conf entries must be (key, value) string pairs, got {pair!r}",
            )


@dataclass(frozen=True)
class IngestConfig:
    """Image-folder tree -> images table (``path, label, label_index, split, image``)."""

    images_uri: str
    output_uri: str
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 42
    max_reject_fraction: float = 0.01
    partitions: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_uri("images_uri", self.images_uri)
        _check_uri("output_uri", self.output_uri)
        _require(
            isinstance(self.split, tuple) and len(self.split) == 3,
            f"split must be three fractions for {'/'.join(SPLIT_NAMES)}, e.g. 0.7,0.15,0.15; got {self.split!r}",
        )
        for name, frac in zip(SPLIT_NAMES, self.split):
            _check_fraction(f"split fraction for {name!r}", frac)
        _require(
            abs(sum(self.split) - 1.0) < 1e-6,
            f"split fractions must add up to 1, got {self.split!r} (sum {sum(self.split):.6g})",
        )
        _require(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _check_fraction("max_reject_fraction", self.max_reject_fraction)
        _check_optional_positive("partitions", self.partitions)


# how a backbone computes (sparkdl.featurize.precision): "auto" = the measured fast and faithful choice
PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("auto", "torch", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class FeaturizeConfig:
    """Images table -> features table (``path, label, label_index, split, features``)."""

    input_uri: str
    output_uri: str
    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    random_init: bool = False
    batch_size: int = 32
    partitions: int | None = None
    max_rows_per_partition: int = 256  # several waves: progress moves a task at a time, stragglers cost less
    threads_per_task: int | None = None
    max_reject_fraction: float = 0.01
    overwrite: bool = False
    incremental: bool = False  # reuse the existing output's rows whose (path, sha256) did not change
    precision: str = "auto"  # auto | fp32 | bf16 (sparkdl.featurize.precision)
    runtime: str = "auto"  # auto | torch | onnxruntime
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        _check_uri("input_uri", self.input_uri)
        _check_uri("output_uri", self.output_uri)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("runtime", self.runtime, RUNTIMES)
        _check_choice("device", self.device, DEVICES)
        _require(bool(self.backbone), "backbone must name a registered backbone")
        _require(
            not (self.random_init and self.weights),
            "pass either weights or random_init, not both (random_init is for timing runs only)",
        )
        _require(isinstance(self.batch_size, int) and self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size!r}")
        _check_optional_positive("partitions", self.partitions)
        _check_optional_positive("max_rows_per_partition", self.max_rows_per_partition)
        _check_optional_positive("threads_per_task", self.threads_per_task)
        _check_fraction("max_reject_fraction", self.max_reject_fraction)


HEAD_KINDS = ("softmax", "mlp")
OPTIMIZERS = ("sgd", "nesterov", "adam")


@dataclass(frozen=True)
class HeadConfig:
    """``softmax``: one linear layer; ``mlp``: hidden layers (ReLU, dropout) then the linear classifier."""

    kind: str = "softmax"
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _require(self.kind in HEAD_KINDS, f"head must be one of {HEAD_KINDS}, got {self.kind!r}")
        _require(all(isinstance(h, int) and h > 0 for h in self.hidden), f"hidden sizes must be positive, got {self.hidden}")
        _require(self.kind == "mlp" or not self.hidden, "a softmax head has no hidden layers; use kind='mlp'")
        _require(self.kind == "softmax" or bool(self.hidden), "an mlp head needs hidden sizes, e.g. mlp:512,256")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def parse(cls, spec: str, dropout: float = 0.0) -> "HeadConfig":
        """``softmax`` or ``mlp:512,256``."""
        kind, _, sizes = spec.partition(":")
        try:
            hidden = tuple(int(s) for s in sizes.split(",") if s.strip())
        except ValueError:
            raise ConfigError(f"head spec {spec!r}: hidden sizes must be integers, e.g. mlp:512,256") from None
        return cls(kind=kind, hidden=hidden, dropout=dropout)

    def to_json(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class OptimizerConfig:
    """``sgd`` (optionally with momentum), ``nesterov`` (SGD with Nesterov momentum) or ``adam``."""

    name: str = "nesterov"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(self.name in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.name!r}")
        _require(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        _require(self.name != "nesterov" or self.momentum > 0, "nesterov needs momentum > 0")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_json(self) -> dict:
        return to_json(self)


MASTERS = ("averaging", "sharing")
TRANSPORTS = ("grpc", "inproc", "aeron")
SPARK_TRANSPORTS = tuple(t for t in TRANSPORTS if t != "inproc")  # what Spark tasks can use (inproc: LocalLauncher)
EXECUTIONS = ("barrier", "rounds")
THRESHOLDS = ("adaptive", "fixed", "target-sparsity")
THRESHOLD_FORMS = "adaptive[:T0], fixed:T or target-sparsity:S"


@dataclass(frozen=True)
class TransportConfig:
    """How the workers of one barrier launch talk to each other (see ``sparkdl/transport``).

    ``grpc`` is the production transport; ``inproc`` links threads of one process (``LocalLauncher`` only);
    ``aeron`` is refused with the reason (no working binding on Python 3.11 / Java 17).
    """

    name: str = "grpc"
    max_message_bytes: int = 256 * 1024 * 1024
    connect_timeout_s: float = 60.0
    receive_timeout_s: float = 600.0  # a worker waiting longer than this for a peer's message fails the launch
    # liveness of every link, whatever the message cadence: a link silent this long is pinged, and one whose ping is
    # not answered within as long again is broken (a partitioned or frozen peer: a failed attempt in <= 2x this)
    keepalive_s: float = 10.0

    def __post_init__(self) -> None:
        _require(self.name in TRANSPORTS, f"transport must be one of {TRANSPORTS}, got {self.name!r}")
        _require(isinstance(self.max_message_bytes, int) and self.max_message_bytes >= 1024,
                 f"max_message_bytes must be an integer >= 1024, got {self.max_message_bytes!r}")  # fmt: skip
        for name in ("connect_timeout_s", "receive_timeout_s", "keepalive_s"):
            value = getattr(self, name)
            _require(isinstance(value, (int, float)) and math.isfinite(value) and value > 0,
                     f"{name} must be a positive number of seconds, got {value!r}")  # fmt: skip

    def to_json(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class RunConfig:
    """How a fit runs, whatever the algorithm: how many workers, how they are launched and talk, the tree they sum
    over, checkpoints and attempts. ``rounds`` (one Spark job per averaging round) is the averaging algorithm's."""

    workers: int = 2
    execution: str = "barrier"  # the whole fit in one barrier stage, or (averaging) one Spark job per round
    transport: TransportConfig = TransportConfig()
    tree_fanout: int = 8  # children per worker in the tree the workers sum (and share updates) over
    aggregation_depth: int = 2  # treeReduce depth of the rounds execution
    checkpoint_dir: str | None = None  # any Hadoop URI; None: none (``sparkdl train``: <output>.checkpoints)
    checkpoint_every: int = 1  # epochs between checkpoints; 0: none
    keep_checkpoints: int = 2  # the newest this many are kept
    max_attempts: int = 3  # a failed barrier stage is launched again, from the latest checkpoint, up to this often
    min_workers: int | None = None  # elastic: go on with as few as this many workers when slots are lost
    resume: bool = False  # continue from the latest checkpoint in checkpoint_dir
    slot_wait_s: float = 60.0  # before a re-launch, how long to wait for lost task slots to come back

    def __post_init__(self) -> None:
        _require(self.execution in EXECUTIONS, f"execution must be one of {EXECUTIONS}, got {self.execution!r}")
        for name in ("workers", "tree_fanout", "aggregation_depth", "keep_checkpoints", "max_attempts"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        _require(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
                 f"checkpoint_every must be >= 0 epochs (0: no checkpoints), got {self.checkpoint_every!r}")  # fmt: skip
        _require(self.checkpoint_dir is None or (isinstance(self.checkpoint_dir, str) and self.checkpoint_dir.strip() != ""),
                 "checkpoint_dir must be a path or Hadoop URI")  # fmt: skip
        _require(self.min_workers is None or (isinstance(self.min_workers, int) and 1 <= self.min_workers <= self.workers),
                 f"min_workers must be between 1 and workers ({self.workers}), got {self.min_workers!r}")  # fmt: skip
        _require(isinstance(self.slot_wait_s, (int, float)) and math.isfinite(self.slot_wait_s) and self.slot_wait_s >= 0,
                 f"slot_wait_s must be >= 0 seconds, got {self.slot_wait_s!r}")  # fmt: skip

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None and self.min_workers < self.workers

    def to_json(self) -> dict:
        return to_json(self)


@dataclass(frozen=True)
class AveragingConfig:
    """Parameter averaging (DL4J ParameterAveragingTrainingMaster): every ``frequency`` minibatches the workers'
    parameters (and, with ``average_updater_state``, optimizer state) are averaged."""

    name: ClassVar[str] = "averaging"
    frequency: int = 5
    average_updater_state: bool = True

    def __post_init__(self) -> None:
        _require(isinstance(self.frequency, int) and self.frequency > 0,
                 f"averaging frequency must be a positive integer, got {self.frequency!r}")  # fmt: skip
        _require(isinstance(self.average_updater_state, bool), "average_updater_state must be True or False")

    def to_json(self) -> dict:
        return {"name": self.name, **to_json(self)}


@dataclass(frozen=True)
class ThresholdConfig:
    """How each sharing worker picks its threshold tau (``train/exchange/sharing/threshold.py``): ``adaptive``
    (``value``: the starting tau, default 1e-4), ``fixed`` (``value``: tau, required) or ``target-sparsity``
    (``value``: the fraction of entries to send, default 1e-3)."""

    kind: str = "adaptive"
    value: float | None = None

    def __post_init__(self) -> None:
        _require(self.kind in THRESHOLDS, f"threshold must be {THRESHOLD_FORMS}, got kind {self.kind!r}")
        v = self.value
        _require(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0),
                 f"threshold {self.kind}: the value must be a positive number, got {v!r}")  # fmt: skip
        _require(self.kind != "fixed" or v is not None, "fixed threshold needs a value, e.g. fixed:1e-3")
        _require(self.kind != "target-sparsity" or v is None or v < 1,
                 f"target sparsity must be in (0, 1), got {v!r}")  # fmt: skip

    @classmethod
    def parse(cls, spec: str) -> "ThresholdConfig":
        """``adaptive``, ``adaptive:1e-4``, ``fixed:1e-3`` or ``target-sparsity:1e-3``."""
        kind, _, value = spec.strip().partition(":")
        _require(kind in THRESHOLDS, f"threshold must be {THRESHOLD_FORMS}, got {spec!r}")
        try:
            number = float(value) if value else None
        except ValueError:
            raise ConfigError(f"threshold {spec!r}: {value!r} is not a number") from None
        return cls(kind, number)

    @property
    def spec(self) -> str:
        """The option's text: ``adaptive``, ``fixed:0.001``."""
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


@dataclass(frozen=True)
class SharingConfig:
    """The gradient-sharing algorithm's knobs (``--training-master sharing``; Strom 2015 / DL4J SharedTrainingMaster)."""

    name: ClassVar[str] = "sharing"
    threshold: ThresholdConfig = ThresholdConfig()
    residual_clip_k: float = 5.0  # clip the residual to +-k x tau ...
    residual_clip_every: int = 5  # ... every n steps (0: never)
    staleness: int = 0  # 0: synchronous, deterministic; k > 0: run up to k steps ahead of the oldest missing update

    def __post_init__(self) -> None:
        _require(isinstance(self.threshold, ThresholdConfig),
                 f"threshold must be a ThresholdConfig (ThresholdConfig.parse('{THRESHOLDS[0]}')), got {self.threshold!r}")  # fmt: skip
        _require(isinstance(self.residual_clip_k, (int, float)) and self.residual_clip_k > 0,
                 f"residual clip k must be > 0, got {self.residual_clip_k!r}")  # fmt: skip
        _require(isinstance(self.residual_clip_every, int) and self.residual_clip_every >= 0,
                 f"residual clip period must be >= 0 steps (0: never), got {self.residual_clip_every!r}")  # fmt: skip
        _require(isinstance(self.staleness, int) and self.staleness >= 0, f"staleness must be >= 0, got {self.staleness!r}")

    @classmethod
    def parse_clip(cls, spec: str) -> tuple[float, int]:
        """``k:n`` -> (k, n), e.g. ``5:5``."""
        k, sep, n = spec.partition(":")
        try:
            return float(k), int(n) if sep else 5
        except ValueError:
            raise ConfigError(f"residual clip must be k:n (e.g. 5:5), got {spec!r}") from None

    def to_json(self) -> dict:
        return {"name": self.name, **to_json(self)}


Algorithm = Union[AveragingConfig, SharingConfig]


@dataclass(frozen=True)
class TrainConfig:
    """How to train a head on a features table (``split = train``; the best epoch by ``valid`` accuracy is kept):
    the model and optimizer, the ``algorithm`` (``AveragingConfig`` or ``SharingConfig``) and the ``run``."""

    algorithm: Algorithm = AveragingConfig()
    run: RunConfig = RunConfig()
    epochs: int = 10
    batch_size_per_worker: int = 16
    head: HeadConfig = HeadConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    seed: int = 42
    early_stopping_patience: int | None = None
    score_every: int = 0  # report the loss every N rounds (0: one line per epoch only)

    def __post_init__(self) -> None:
        _require(isinstance(self.algorithm, (AveragingConfig, SharingConfig)),
                 f"algorithm must be an AveragingConfig or a SharingConfig, got {type(self.algorithm).__name__}")  # fmt: skip
        _require(isinstance(self.run, RunConfig), f"run must be a RunConfig, got {type(self.run).__name__}")
        _require(self.run.execution == "barrier" or self.master == "averaging",
                 "--execution rounds is parameter averaging's (one Spark job per averaging round): sharing runs in "
                 "one barrier stage, use --execution barrier")  # fmt: skip
        _require(isinstance(self.score_every, int) and self.score_every >= 0, f"score_every must be >= 0, got {self.score_every!r}")
        for name in ("epochs", "batch_size_per_worker"):
            value = getattr(self, name)
            _require(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        _require(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        _check_optional_positive("early_stopping_patience", self.early_stopping_patience)

    @property
    def master(self) -> str:
        """``averaging`` or ``sharing``: the algorithm's name."""
        return self.algorithm.name

    @property
    def rows_per_step(self) -> int:
        """Rows one worker fits per step: an averaging round (``frequency`` minibatches) or a sharing step (one)."""
        if isinstance(self.algorithm, AveragingConfig):
            return self.batch_size_per_worker * self.algorithm.frequency
        return self.batch_size_per_worker

    def to_json(self) -> dict:
        return {"master": self.master, **to_json(self), "algorithm": self.algorithm.to_json()}

    def options(self) -> dict[str, object]:
        """This config as the training options, by Spark ML Param name (``sparkdl.ml.train_params``; the CLI's
        ``--kebab-case`` options): ``head`` as a spec, ``threshold`` and ``residualClip`` as the options' text,
        ``earlyStoppingPatience`` and ``minWorkers`` 0 and ``checkpointDir`` "" for "not set". The inverse of
        :meth:`from_options`."""
        a = self.algorithm
        avg = a if isinstance(a, AveragingConfig) else AveragingConfig()
        sh = a if isinstance(a, SharingConfig) else SharingConfig()
        return {
            "master": self.master,
            "workers": self.run.workers,
            "epochs": self.epochs,
            "batchSizePerWorker": self.batch_size_per_worker,
            "averagingFrequency": avg.frequency,
            "execution": self.run.execution,
            "aggregationDepth": self.run.aggregation_depth,
            "treeFanout": self.run.tree_fanout,
            "transport": self.run.transport.name,
            "threshold": sh.threshold.spec,
            "residualClip": f"{sh.residual_clip_k:g}:{sh.residual_clip_every}",
            "staleness": sh.staleness,
            "head": self.head.kind + (":" + ",".join(str(h) for h in self.head.hidden) if self.head.hidden else ""),
            "dropout": self.head.dropout,
            "optimizer": self.optimizer.name,
            "lr": self.optimizer.lr,
            "momentum": self.optimizer.momentum,
            "weightDecay": self.optimizer.weight_decay,
            "averageUpdaterState": avg.average_updater_state,
            "earlyStoppingPatience": self.early_stopping_patience or 0,
            "seed": self.seed,
            "scoreEvery": self.score_every,
            "checkpointDir": self.run.checkpoint_dir or "",
            "checkpointEvery": self.run.checkpoint_every,
            "keepCheckpoints": self.run.keep_checkpoints,
            "maxAttempts": self.run.max_attempts,
            "minWorkers": self.run.min_workers or 0,
            "resume": self.run.resume,
            "slotWait": self.run.slot_wait_s,
        }

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> "TrainConfig":
        """The config the training options describe (missing ones take their defaults): what ``sparkdl train`` and
        the Spark ML stages build, one mapping for both. Momentum is not used by ``adam`` (set to 0)."""
        o = {**training_defaults(), **options}
        if o["master"] == "averaging":
            algorithm: Algorithm = AveragingConfig(frequency=o["averagingFrequency"],
                                                   average_updater_state=o["averageUpdaterState"])  # fmt: skip
        elif o["master"] == "sharing":
            k, every = SharingConfig.parse_clip(str(o["residualClip"]))
            algorithm = SharingConfig(threshold=ThresholdConfig.parse(str(o["threshold"])), residual_clip_k=k,
                                      residual_clip_every=every, staleness=o["staleness"])  # fmt: skip
        else:
            raise ConfigError(f"master must be one of {MASTERS}, got {o['master']!r}")
        return cls(
            algorithm=algorithm,
            run=RunConfig(workers=o["workers"], execution=o["execution"], transport=TransportConfig(name=o["transport"]),
                          tree_fanout=o["treeFanout"], aggregation_depth=o["aggregationDepth"],
                          checkpoint_dir=o["checkpointDir"] or None, checkpoint_every=o["checkpointEvery"],
                          keep_checkpoints=o["keepCheckpoints"], max_attempts=o["maxAttempts"],
                          min_workers=o["minWorkers"] or None, resume=o["resume"], slot_wait_s=o["slotWait"]),  # fmt: skip
            epochs=o["epochs"],
            batch_size_per_worker=o["batchSizePerWorker"],
            head=HeadConfig.parse(str(o["head"]), dropout=o["dropout"]),
            optimizer=OptimizerConfig(name=o["optimizer"], lr=o["lr"],
                                      momentum=o["momentum"] if o["optimizer"] != "adam" else 0.0,
                                      weight_decay=o["weightDecay"]),  # fmt: skip
            seed=o["seed"],
            early_stopping_patience=o["earlyStoppingPatience"] or None,
            score_every=o["scoreEvery"],
        )


def training_defaults() -> dict[str, object]:
    """Every training option's default, by its Spark ML Param name (``sparkdl.ml.train_params.HasTrainingParams``; the
    CLI's ``--kebab-case`` training options take theirs from here too): ``TrainConfig().options()``, i.e. the field
    defaults of the config dataclasses, the one place they are stated."""
    return TrainConfig().options()


_TRIGGER_RE = re.compile(r"^\d+(\.\d+)?\s*(ms|s|sec|seconds|m|min|minutes)$")


@dataclass(frozen=True)
class PredictConfig:
    """A model bundle over images -> a predictions table (+ rejects + meta); or, with ``stream``, a Structured
    Streaming query over a folder (or table) that receives new images, writing to a file sink with a checkpoint."""

    model_uri: str
    output_uri: str
    images_uri: str | None = None  # a folder of images (any Hadoop URI), read recursively
    table_uri: str | None = None  # an images table (``sparkdl ingest``'s, or any with ``path`` + ``image``)
    top_k: int = 5
    batch_size: int = 32
    partitions: int | None = None
    max_rows_per_partition: int = 256
    threads_per_task: int | None = None
    max_reject_fraction: float = 0.01
    overwrite: bool = False
    stream: bool = False
    checkpoint_uri: str | None = None
    trigger: str | None = None  # processing-time interval, e.g. "10s"; None with stream = available-now
    max_files_per_trigger: int | None = None

    def __post_init__(self) -> None:
        _check_uri("model_uri", self.model_uri)
        _check_uri("output_uri", self.output_uri)
        _require((self.images_uri is None) != (self.table_uri is None), "give exactly one input: --images or --table")
        _require(isinstance(self.top_k, int) and self.top_k >= 1, f"top_k must be >= 1, got {self.top_k!r}")
        _require(isinstance(self.batch_size, int) and self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size!r}")
        _check_optional_positive("partitions", self.partitions)
        _check_optional_positive("max_rows_per_partition", self.max_rows_per_partition)
        _check_optional_positive("threads_per_task", self.threads_per_task)
        _check_optional_positive("max_files_per_trigger", self.max_files_per_trigger)
        _check_fraction("max_reject_fraction", self.max_reject_fraction)
        if self.stream:
            _require(bool(self.checkpoint_uri), "a streaming prediction needs --checkpoint (where Spark keeps its progress)")
            _require(not self.overwrite, "--overwrite does not apply to --stream: a restarted query continues its output")
            _require(self.trigger is None or bool(_TRIGGER_RE.match(self.trigger.strip())),
                     f"trigger must be an interval like 10s, 500ms or 1m, got {self.trigger!r}")  # fmt: skip
        else:
            _require(self.checkpoint_uri is None and self.trigger is None and self.max_files_per_trigger is None,
                     "--checkpoint, --trigger and --max-files-per-trigger are for --stream")  # fmt: skip
