"""The train and evaluate stages: features table -> model bundle -> metrics."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sparkdl.bundle import ModelBundle, load_bundle, save_bundle
from sparkdl.config import TrainConfig
from sparkdl.data import tables
from sparkdl.data.features import read_features
from sparkdl.errors import DataError
from sparkdl.evaluate import Metrics, evaluate_head
from sparkdl.train.head import HeadSpec, build_head
from sparkdl.train.listeners import EventLog, ScoreListener, StatsCollector
from sparkdl.train.master import build_master

Progress = Callable[[str], None]
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TrainSummary:
    model_dir: str
    best_epoch: int
    epochs_run: int
    seconds: float
    examples_per_second: float
    metrics: dict  # split -> headline metrics


def _feature_dim(df, meta: dict) -> int:
    if "feature_dim" in meta:
        return int(meta["feature_dim"])
    from pyspark.sql import functions as F

    first = df.select(F.size("features").alias("n")).first()
    if first is None:
        raise DataError("the features table is empty")
    return int(first["n"])


def evaluate_splits(df, spec: HeadSpec, splits=SPLITS) -> dict[str, Metrics]:
    from pyspark.sql import functions as F

    counts = {r["split"]: r["count"] for r in df.groupBy("split").count().collect()}
    return {s: evaluate_head(df.filter(F.col("split") == s), spec, spec.n_classes) for s in splits if counts.get(s)}


def train_head(
    spark,
    features_uri: str,
    output_dir: str | Path,
    config: TrainConfig,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> TrainSummary:
    say = progress or (lambda _msg: None)
    out = str(output_dir)
    tables.check_output(spark, out, overwrite, what="model directory")  # before training, not after
    df, meta = read_features(spark, features_uri)
    labels = list(meta["labels"])
    dim = _feature_dim(df, meta)
    head = build_head(config.head, dim, len(labels), seed=config.seed)
    events, stats = EventLog(), StatsCollector()
    say(
        f"train: {config.master} master, {config.workers} workers, {config.epochs} epochs, head {config.head.kind}"
        f"{list(config.head.hidden) or ''} on {dim}-d features, {len(labels)} classes"
    )
    start = time.perf_counter()
    result = build_master(config).fit(df, head, len(labels), listeners=[events, stats, ScoreListener(say, every=config.score_every)])
    spec = HeadSpec.from_module(config.head, dim, len(labels), result.head)
    say(f"train: best epoch {result.best_epoch + 1}; evaluating every split")
    per_split = evaluate_splits(df, spec)
    seconds = time.perf_counter() - start
    metrics = {
        **{s: m.to_json() for s, m in per_split.items()},
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "wall_seconds": round(seconds, 3),
        "train_seconds": round(result.seconds, 3),
        **{k: v for k, v in result.stats.items()},
        **stats.summary(),
    }
    bundle = ModelBundle(
        head=spec,
        labels=labels,
        backbone=meta.get("backbone", {}),
        training={**config.to_json(), "features": features_uri},
        metrics=metrics,
        events=events.events,
    )
    out = save_bundle(bundle, out, overwrite=overwrite, spark=spark)
    say(f"train: model bundle written to {out}")
    return TrainSummary(
        model_dir=out,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        seconds=seconds,
        examples_per_second=result.stats.get("examples_per_second", 0.0),
        metrics={s: m.summary() for s, m in per_split.items()},
    )


def evaluate_model(spark, model_dir: str | Path, features_uri: str, split: str | None = "test") -> Metrics:
    """Metrics of a saved model on a features table (one split, or every row with ``split=None``)."""
    from pyspark.sql import functions as F

    tables.check_input(spark, str(model_dir), "model")
    bundle = load_bundle(str(model_dir), spark=spark)
    df, meta = read_features(spark, features_uri)
    dim = _feature_dim(df, meta)
    if dim != bundle.head.in_dim:
        raise DataError(f"{features_uri} has {dim}-d features but the model expects {bundle.head.in_dim}-d (another backbone?)")
    if meta.get("labels") and list(meta["labels"]) != bundle.labels:
        raise DataError(f"{features_uri}'s label mapping differs from the model's ({len(meta['labels'])} vs {len(bundle.labels)} labels)")
    rows = df if split is None else df.filter(F.col("split") == split)
    if rows.limit(1).count() == 0:
        raise DataError(f"{features_uri} has no rows with split = {split!r}")
    return evaluate_head(rows, bundle.head, bundle.head.n_classes)
