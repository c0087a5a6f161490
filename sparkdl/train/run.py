"""The train and evaluate stages: features table -> model bundle -> metrics."""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from sparkdl.bundle import ModelBundle, load_bundle, save_bundle
from sparkdl.config import TrainConfig
from sparkdl.data import hadoopfs, outputs, tables
from sparkdl.data.features import (LabelGroup, derive_labels, label_clashes, label_groups, label_warnings,
                                   read_features, validate_features)  # fmt: skip
from sparkdl.errors import DataError
from sparkdl.evaluate import Metrics, evaluate_head
from sparkdl.featurize.backbones import list_backbones
from sparkdl.featurize.carry import carry_backbone
from sparkdl.featurize.precision import Numerics
from sparkdl.session import job_description
from sparkdl.model import HeadSpec, build_head
from sparkdl.train.events import TrainingListener
from sparkdl.train.listeners import EventLog, ScoreListener, StatsCollector
from sparkdl.train.checkpoint import CheckpointStore
from sparkdl.train.driver import build_master

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
    warnings: list[str] = field(default_factory=list)  # trained, but probably not what was meant (one class, ...)
    attempts: int = 1  # launches of the fit (a failed barrier stage is launched again from the latest checkpoint)
    failures: list[dict] = field(default_factory=list)  # per failed attempt: rank, epoch, step, cause, resume_epoch
    resumed_from_epoch: int | None = None  # --resume: the epochs the checkpoint had done
    workers: int = 0  # the workers the fit ended with (fewer than --workers after an elastic re-launch)


@dataclass(frozen=True)
class TableLabels:
    """A features table's label mapping: from its meta.json, or derived from its rows when it has none."""

    labels: list[str]
    source: str  # "meta" or "derived"
    groups: list[LabelGroup]  # rows per (label_index, label, split)


def _table_labels(df, meta: dict | None, uri: str) -> TableLabels:
    groups = label_groups(df, uri)
    if meta and meta.get("labels"):
        return TableLabels(list(meta["labels"]), "meta", groups)
    return TableLabels(derive_labels(groups, uri), "derived", groups)


def _feature_dim(meta: dict | None, info: dict, uri: str) -> int:
    """The rows' feature length (from ``validate_features``), refused when the meta.json says another."""
    dim = int(info["feature_dim"])
    said = (meta or {}).get("feature_dim", (meta or {}).get("backbone", {}).get("feature_dim"))
    if said is not None and int(said) != dim:
        raise DataError(f"{uri} has {dim}-d features but its meta.json says {said}-d: re-run featurize, or correct "
                        f"feature_dim in {tables.meta_uri(uri)}")  # fmt: skip
    return dim


def _check_model_labels(groups: list[LabelGroup], model_labels: list[str], uri: str) -> None:
    """A table without a meta.json, evaluated: its ``(label_index, label)`` pairs agree with each other and with the
    model's mapping (indices already checked to be in range)."""
    problems = label_clashes(groups)
    for g in sorted({(g.label_index, g.label): g for g in groups if g.label_index is not None}.values(),
                    key=lambda g: g.label_index):  # fmt: skip
        if 0 <= g.label_index < len(model_labels) and g.label is not None and g.label != model_labels[g.label_index]:
            problems.append(f"label_index {g.label_index} is {g.label!r} here (e.g. {g.example}) but "
                            f"{model_labels[g.label_index]!r} in the model")  # fmt: skip
    if problems:
        raise DataError(f"{uri} has no meta.json and its labels do not match the model's: " + "; ".join(problems))


def evaluate_splits(df, spec: HeadSpec, splits=SPLITS, counts: dict | None = None) -> dict[str, Metrics]:
    """Metrics per split (those with rows; ``counts``: rows per split when known, e.g. ``validate_features``')."""
    from pyspark.sql import functions as F

    if counts is None:
        counts = {r["split"]: r["count"] for r in df.groupBy("split").count().collect()}
    return {s: evaluate_head(df.filter(F.col("split") == s), spec, spec.n_classes) for s in splits if counts.get(s)}


def train_head(
    spark,
    features_uri: str,
    output_dir: str | Path,
    config: TrainConfig,
    overwrite: bool = False,
    progress: Progress | None = None,
    embed_backbone: bool = True,
    launcher=None,
    listeners: Sequence[TrainingListener] = (),
) -> TrainSummary:
    """Train a head on a features table and write a self-contained model bundle: the head, its labels, and the
    backbone the features were made with (a user's weights converted into ``backbone.safetensors``, or the embedded
    package's sha256; ``embed_backbone=False`` stores the weights URI + sha256 instead). ``launcher`` runs a barrier fit (default:
    ``sparkdl.launch.build_launcher(config.run)``); ``listeners`` get the training events live (e.g. MLflow's). Its Spark jobs show
    ``sparkdl train: ...`` in the Spark UI (job group ``sparkdl-train``): checking, the fit, scoring, writing."""
    scratch = Path(tempfile.mkdtemp(prefix="sparkdl-train-"))
    try:
        with job_description(spark, "train", f"{features_uri} -> {output_dir}"):
            return _train_head(spark, features_uri, output_dir, config, overwrite, progress, embed_backbone, scratch,
                               launcher, listeners)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _train_head(spark, features_uri: str, output_dir, config: TrainConfig, overwrite: bool, progress: Progress | None,
                embed_backbone: bool, scratch: Path, launcher, extra_listeners) -> TrainSummary:  # fmt: skip
    say = progress or (lambda _msg: None)
    out = str(output_dir)
    with job_description(spark, "train", f"checking {features_uri}"):
        # before training, not after: never onto the features table, only over an earlier bundle, writable
        outputs.check_output(spark, "train", out, overwrite, "bundle", "model directory",
                             inputs=outputs.table_places("features table", features_uri))
        df, meta = read_features(spark, features_uri)
        table = _table_labels(df, meta, features_uri)
        labels = table.labels
        info = validate_features(df, len(labels), features_uri)  # the same checks (and text) as evaluate's
        dim = _feature_dim(meta, info, features_uri)
        warnings = label_warnings(table.groups, labels)
        for warning in warnings:
            say(f"train: warning: {warning}")
        if table.source == "derived":
            say(f"train: {features_uri} has no meta.json: {len(labels)} labels derived from its rows")
        backbone, attachments = _carried_backbone(spark, meta, embed_backbone, scratch, say)
        config = _checkpointing(spark, config, out, features_uri, overwrite, say)
    head = build_head(config.head, dim, len(labels), seed=config.seed)
    events, stats = EventLog(), StatsCollector()
    say(
        f"train: {config.master} master, {config.run.workers} workers, {config.epochs} epochs, head {config.head.kind}"
        f"{list(config.head.hidden) or ''} on {dim}-d features, {len(labels)} classes"
    )
    start = time.perf_counter()
    # the masters describe their own jobs (the fit, per round in the ``rounds`` execution)
    listeners = [events, stats, ScoreListener(say, every=config.score_every), *extra_listeners]
    result = build_master(config, launcher).fit(df, head, len(labels), listeners=listeners, progress=progress)
    for problem in result.stats["checkpoint_errors"]:
        warnings.append(problem)
        say(f"train: warning: {problem}")
    spec = HeadSpec.from_module(config.head, dim, len(labels), result.head)
    say(f"train: best epoch {result.best_epoch + 1}; evaluating every split")
    with job_description(spark, "train", f"scoring every split of {features_uri}"):
        per_split = evaluate_splits(df, spec, counts=info)
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
        backbone=backbone,
        # label_source "derived": the table had no meta.json, the mapping came from its (label_index, label) pairs
        training={**config.to_json(), "features": features_uri, "label_source": table.source, "warnings": warnings},
        metrics=metrics,
        events=events.to_json(),
        attachments=attachments,
    )
    with job_description(spark, "train", f"writing the model bundle to {out}"):
        out = save_bundle(bundle, out, overwrite=overwrite, spark=spark)
    say(f"train: model bundle written to {out}")
    return TrainSummary(
        model_dir=out,
        best_epoch=result.best_epoch,
        epochs_run=len(result.history),
        seconds=seconds,
        examples_per_second=result.stats.get("examples_per_second", 0.0),
        metrics={s: m.summary() for s, m in per_split.items()},
        warnings=warnings,
        attempts=result.stats["attempts"],
        failures=result.stats["failures"],
        resumed_from_epoch=result.stats["resumed_from_epoch"],
        workers=result.stats["workers_final"],
    )


def _checkpointing(spark, config: TrainConfig, out: str, features_uri: str, overwrite: bool, say: Progress) -> TrainConfig:
    """The config with its checkpoint directory (default ``<output>.checkpoints``), checked before training: not
    inside the features table or the model directory, writable. Checkpoints an earlier fit left there are continued
    with ``--resume``, removed with ``--overwrite`` (starting over), else refused: a fresh fit must not take an
    unrelated run's checkpoint for its own."""
    run = config.run
    if not run.checkpoint_every and not run.resume:
        return config
    uri = run.checkpoint_dir or f"{out.rstrip('/')}.checkpoints"
    outputs.check_disjoint(spark, "train", outputs.table_places("features table", features_uri)
                           + [outputs.Place("model directory", out)], [outputs.Place("checkpoint directory", uri)])  # fmt: skip
    hadoopfs.check_writable(spark, uri, "checkpoint directory", overwrite=True)
    store = CheckpointStore(uri, run.keep_checkpoints, spark)
    if not run.resume and store.epochs():
        if not overwrite:
            raise DataError(f"{uri} holds checkpoints of an earlier fit: pass --resume to continue it, or --overwrite "
                            "to start over (they are removed)")  # fmt: skip
        say(f"train: removed {store.clear()} checkpoint(s) of an earlier fit from {uri} (--overwrite)")
    return dataclasses.replace(config, run=dataclasses.replace(run, checkpoint_dir=uri))


def _carried_backbone(spark, meta: dict | None, embed: bool, scratch: Path, say: Progress) -> tuple[dict, dict]:
    """The bundle's backbone record (with how it is carried) and the files to store with it; before training, so an
    unreadable weights file fails now, not after the fit. A table without a backbone record gives a features-only
    model."""
    backbone = dict((meta or {}).get("backbone") or {})
    if backbone.get("name") not in list_backbones():
        what = f"names a backbone sparkdl does not know ({backbone['name']!r})" if backbone.get("name") else "names no backbone"
        say(f"train: the features table {what}: the model will score features, not images")
        return backbone, {}
    carried, file = carry_backbone(spark, backbone, embed, scratch)
    numerics = Numerics.from_json(backbone.get("numerics"))  # predict and serve compute features the same way
    say(f"train: the model carries its backbone {backbone['name']} ({carried['kind']}; features in {numerics.describe()})")
    return {**backbone, "carried": carried}, ({file.name: file} if file is not None else {})


def evaluate_model(spark, model_dir: str | Path, features_uri: str, split: str | None = "test") -> Metrics:
    """Metrics of a saved model on a features table (one split, or every row with ``split=None``). Its Spark jobs
    show ``sparkdl evaluate: <model> on <features> (<split>)`` in the Spark UI (job group ``sparkdl-evaluate``)."""
    rows = split if split is not None else "every row"
    with job_description(spark, "evaluate", f"{model_dir} on {features_uri} ({rows})"):
        return _evaluate_model(spark, model_dir, features_uri, split)


def _evaluate_model(spark, model_dir: str | Path, features_uri: str, split: str | None) -> Metrics:
    from pyspark.sql import functions as F

    tables.check_input(spark, str(model_dir), "model")
    bundle = load_bundle(str(model_dir), spark=spark)
    df, meta = read_features(spark, features_uri)
    # the whole table, as train checks it (same text): NaN/inf, labels outside the model's classes, lengths
    info = validate_features(df, bundle.head.n_classes, features_uri, need_train=False)
    rows = df if split is None else df.filter(F.col("split") == split)
    if rows.limit(1).count() == 0:
        raise DataError(f"{features_uri} has no rows with split = {split!r}")
    dim = _feature_dim(meta, info, features_uri)
    if dim != bundle.head.in_dim:
        raise DataError(f"{features_uri} has {dim}-d features but the model expects {bundle.head.in_dim}-d (another backbone?)")
    if meta and meta.get("labels"):
        if list(meta["labels"]) != bundle.labels:
            raise DataError(f"{features_uri}'s label mapping differs from the model's ({len(meta['labels'])} vs {len(bundle.labels)} labels)")
    else:
        _check_model_labels(label_groups(df, features_uri), bundle.labels, features_uri)
    return evaluate_head(rows, bundle.head, bundle.head.n_classes)
