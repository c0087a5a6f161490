"""What the barrier-stage masters share, driver side and executor side: laying out the shards, running the worker
function on a launcher with live events, scoring ``valid`` across ranks, and comparing ranks' parameters."""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

from sparkdl.data.features import validate_features
from sparkdl.errors import DataError
from sparkdl.evaluate import Metrics, partial_counts
from sparkdl.session import job_description
from sparkdl.train.collective import tree_allreduce
from sparkdl.train.layout import build_shards
from sparkdl.train.listeners import TrainingListener
from sparkdl.train.local import predict_logits


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


def params_digest(params: dict[str, np.ndarray]) -> str:
    """A hash of the exact bits of a parameter set (ranks compare theirs in synchronous training)."""
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(np.ascontiguousarray(params[k]).tobytes())
    return h.hexdigest()


def score_valid_shard(mailbox, step: int, model, xv, yv, n_classes: int, fanout: int,
                      extra: np.ndarray | None = None) -> tuple[Metrics, np.ndarray | None]:  # fmt: skip
    """Score ``model`` on this rank's share of ``valid`` and sum the confusion counts (plus ``extra``) over the
    tree: every rank gets the same metrics of the whole split."""
    confusion, top5, vloss = partial_counts(predict_logits(model, xv).astype(np.float64), yv, n_classes)
    arrays = [confusion.astype(np.float64), np.array([top5, vloss])] + ([extra] if extra is not None else [])
    total = tree_allreduce(mailbox, step, arrays, fanout)
    metrics = Metrics.from_counts(np.rint(total[0]).astype(np.int64), int(round(total[1][0])), float(total[1][1]))
    return metrics, (total[2] if extra is not None else None)


def launch_description(master: str, epochs: int, workers: int, launcher) -> str:
    """The Spark UI's text for a whole fit in one launch: ``averaging, 10 epochs, 2 workers (barrier)``."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    how = "barrier" if isinstance(launcher, SparkBarrierLauncher) else f"shards collected for {type(launcher).__name__}"
    return f"{master}, {epochs} epoch{'s' * (epochs != 1)}, {workers} worker{'s' * (workers != 1)} ({how})"


def run_launch(launcher, fn, shards, listeners: Sequence[TrainingListener]) -> list:
    """Run a barrier-style worker function: on Spark over the shards RDD, or on a local launcher over the collected
    shards; rank 0's round / epoch events reach ``listeners`` live. The Spark job runs on this thread: it carries
    the caller's ``job_description``."""
    from sparkdl.launch.spark import SparkBarrierLauncher

    def dispatch(event: dict) -> None:
        for listener in listeners:
            (listener.on_round if event["type"] == "round" else listener.on_epoch)(event)

    if isinstance(launcher, SparkBarrierLauncher):
        return launcher.run(fn, shards, on_event=dispatch)
    return launcher.run(fn, shards.glom().collect(), on_event=dispatch)
