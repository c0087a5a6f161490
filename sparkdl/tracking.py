"""Experiment tracking with MLflow (the ``mlflow`` extra): one MLflow run per stage run.

``train`` (the CLI and :class:`~sparkdl.ml.HeadClassifier`) logs its config as params, a point per epoch as the
driver receives it (loss, valid accuracy / loss, examples per second, bytes sent, τ for the sharing master), the final
per-split metrics, and the model bundle as the run's ``model`` artifact; ``featurize`` and ``predict`` log their
options, counts and speed. The tracking URI is given, never guessed (``sparkdl.cli`` takes it from ``--mlflow-uri``
or ``MLFLOW_TRACKING_URI``): ``http(s)://`` to a tracking server, ``databricks``, or ``sqlite:///path.db`` for a local
store (which needs SQLAlchemy + Alembic or the full ``mlflow`` package).

Failures: a tracking store that cannot be reached or refuses the run fails the stage before any work, in one line;
once the run is open, a failed log call is reported through ``say`` (once per kind) and the stage goes on — the
model is worth more than a missing point — and the run is closed FAILED when the stage fails. Uses
``MlflowClient`` with an explicit run id, never MLflow's process-global active run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from sparkdl.errors import ConfigError
from sparkdl.extras import require
from sparkdl.train.events import CheckpointEvent, EpochEvent, FailureEvent, RoundEvent, TrainingListener

__all__ = ["TrackingConfig", "MlflowRun", "flatten"]

MAX_PARAM_CHARS = 500  # MLflow's param value limit in its older stores (6000 in newer ones): long values are cut


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs go: ``uri`` (tracking URI), ``experiment`` (created when missing), ``run_name`` (MLflow's
    generated name when None)."""

    uri: str
    experiment: str = "sparkdl"
    run_name: str | None = None

    def __post_init__(self) -> None:
        if not self.uri or not self.uri.strip():
            raise ConfigError("MLflow tracking needs a tracking URI, e.g. http://mlflow:5000 or sqlite:///mlflow.db")
        if not self.experiment or not self.experiment.strip():
            raise ConfigError("MLflow tracking needs an experiment name")


def flatten(obj: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mappings -> ``{"a.b": value}`` (lists and scalars are leaves)."""
    out: dict[str, object] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _numbers(values: Mapping[str, object]) -> dict[str, float]:
    """The finite numbers among ``values`` (bools as 0/1); everything else (text, lists, None, NaN) is not a metric."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


class MlflowRun:
    """One MLflow run around a stage: ``with MlflowRun(config, "train", params) as run: ...``.

    ``say`` receives the warnings of failed log calls (and nothing else)."""

    def __init__(self, config: TrackingConfig, stage: str, params: Mapping | None = None,
                 say: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.config, self.stage = config, stage
        self._params = dict(params or {})
        self._say = say or (lambda _msg: None)
        self._warned: set[str] = set()
        self.client = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    # --- lifecycle
    def __enter__(self) -> "MlflowRun":
        require("mlflow", "mlflow", "--mlflow tracking")
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient(tracking_uri=self.config.uri)
            exp = self.client.get_experiment_by_name(self.config.experiment)
            self.experiment_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.config.experiment)
            run = self.client.create_run(self.experiment_id, tags={"sparkdl.stage": self.stage}, run_name=self.config.run_name)
            self.run_id = run.info.run_id
        except Exception as exc:  # MlflowException, connection errors, a store that refuses: one line, before any work
            raise ConfigError(f"MLflow tracking at {self.config.uri!r} failed: {_first_line(exc)}") from None
        if self._params:
            self.log_params(self._params)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is None:
            return
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        if exc is not None:
            self._call("tag", self.client.set_tag, self.run_id, "sparkdl.error", _first_line(exc))
        self._call("close", self.client.set_terminated, self.run_id, status)

    # --- logging (never raises once the run is open)
    def _call(self, kind: str, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as exc:
            if kind not in self._warned:
                self._warned.add(kind)
                self._say(f"{self.stage}: warning: MLflow {kind} failed, the stage goes on: {_first_line(exc)}")
            return False

    def log_params(self, params: Mapping) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, ("" if v is None else str(v))[:MAX_PARAM_CHARS]) for k, v in sorted(flat.items())]
        for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
            self._call("params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        """Log the finite numbers of ``metrics`` (nested mappings flattened to ``a.b``) at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in sorted(_numbers(flatten(metrics)).items())]
        for i in range(0, len(items), 1000):
            self._call("metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        for k, v in tags.items():
            self._call("tag", self.client.set_tag, self.run_id, k, str(v))

    def log_dir(self, local_dir: str | Path, artifact_path: str) -> bool:
        """Upload a local directory's files as the run's ``artifact_path`` artifact."""
        return self._call("artifact", self.client.log_artifacts, self.run_id, str(local_dir), artifact_path)

    def listener(self) -> "MlflowListener":
        return MlflowListener(self)


class MlflowListener(TrainingListener):
    """Training events -> MLflow metrics, a point per epoch with ``step`` = the epoch (1-based), as they arrive."""

    def __init__(self, run: MlflowRun) -> None:
        self.run = run
        self._bytes = 0
        self._rounds = 0
        self._sent: list[float] = []
        self._failures = 0

    def on_round(self, event: RoundEvent) -> None:
        self._rounds += 1
        if event.message_bytes is not None:
            self._bytes += event.message_bytes
        if event.sent_fraction is not None:
            self._sent.append(event.sent_fraction)

    def on_epoch(self, event: EpochEvent) -> None:
        metrics: dict[str, object] = {
            "train_loss": event.train_loss, "valid_accuracy": event.valid_accuracy, "valid_loss": event.valid_loss,
            "examples_per_second": event.examples_per_second, "epoch_seconds": event.seconds, "rounds": self._rounds,
        }  # fmt: skip
        if self._bytes:
            metrics["bytes_sent"] = self._bytes  # rank 0's messages (sharing) or allreduce payloads (averaging)
        if self._sent:
            metrics["sent_fraction"] = sum(self._sent) / len(self._sent)
        if event.tau is not None:
            metrics["tau"] = event.tau
        self.run.log_metrics(metrics, step=event.epoch + 1)
        self._bytes, self._rounds, self._sent = 0, 0, []

    def on_failure(self, event: FailureEvent) -> None:
        self._failures += 1
        self.run.log_metrics({"failed_attempts": self._failures}, step=event.attempt)
        self.run.set_tags({"sparkdl.last_failure": event.cause[:MAX_PARAM_CHARS]})

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.run.log_metrics({"checkpoint_bytes": event.bytes, "checkpoint_seconds": event.seconds}, step=event.epoch)


def log_bundle(run: MlflowRun, spark, bundle_uri: str, artifact_path: str = "model") -> bool:
    """Log a model bundle (a local directory or any Hadoop URI: copied to a temporary directory first) as the run's
    ``artifact_path`` artifact."""
    from sparkdl.data import hadoopfs

    with hadoopfs.local_copy(spark, bundle_uri, prefix="sparkdl-mlflow-") as local:
        return run.log_dir(local, artifact_path)
