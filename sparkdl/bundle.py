"""Model bundle: everything needed to use, evaluate or report on a trained head, in one directory.

    <dir>/config.json      format, backbone spec (from the features table), head spec, labels, training config
    <dir>/head.safetensors the head's weights
    <dir>/metrics.json     train/valid/test metrics, wall seconds, examples/s, bytes moved, phase timings
    <dir>/events.jsonl     one line per round (loss, lr, examples, phase timings) and per epoch

The directory is a local path on the driver or any Hadoop URI (``hdfs://``, ``s3a://``): :func:`save_bundle` /
:func:`load_bundle` stage a remote bundle through a local temporary directory and Spark's Hadoop client, and a
remote bundle too appears complete or not at all (written under ``<uri>.partial``, then renamed).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparkdl.config import HeadConfig
from sparkdl.errors import ConfigError, DataError
from sparkdl.train.head import HeadSpec

BUNDLE_FORMAT = "sparkdl.model/1"


@dataclass
class ModelBundle:
    head: HeadSpec
    labels: list[str]
    backbone: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def config_json(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "backbone": self.backbone,
            "feature_dim": self.head.in_dim,
            "n_classes": self.head.n_classes,
            "labels": self.labels,
            "head": self.head.config.to_json(),
            "training": self.training,
            **self.extra,
        }

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        from safetensors.numpy import save_file

        out = Path(directory)
        if out.exists():
            if not overwrite:
                raise DataError(f"model directory {out} already exists: pass --overwrite or choose another path")
            shutil.rmtree(out)
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(self.config_json(), indent=2) + "\n")
        save_file({k: np.ascontiguousarray(v) for k, v in self.head.params.items()}, str(tmp / "head.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n")
        with open(tmp / "events.jsonl", "w") as f:
            for event in self.events:
                f.write(json.dumps(event) + "\n")
        tmp.rename(out)  # a bundle is either complete or absent
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        from safetensors.numpy import load_file

        d = Path(directory)
        config_path = d / "config.json"
        if not config_path.is_file():
            raise DataError(f"{d} is not a sparkdl model bundle (no config.json); train one with `sparkdl train`")
        config = json.loads(config_path.read_text())
        if config.get("format") != BUNDLE_FORMAT:
            raise DataError(f"{config_path}: unknown bundle format {config.get('format')!r} (expected {BUNDLE_FORMAT})")
        head_cfg = config["head"]
        head = HeadSpec(
            HeadConfig(kind=head_cfg["kind"], hidden=tuple(head_cfg["hidden"]), dropout=head_cfg["dropout"]),
            int(config["feature_dim"]),
            int(config["n_classes"]),
            load_file(str(d / "head.safetensors")),
        )
        try:
            head.build()
        except RuntimeError as exc:
            raise ConfigError(f"{d}/head.safetensors does not match config.json's head ({exc})") from None
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        events = []
        if (d / "events.jsonl").is_file():
            events = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines() if line.strip()]
        known = {"format", "backbone", "feature_dim", "n_classes", "labels", "head", "training"}
        return cls(
            head=head,
            labels=list(config["labels"]),
            backbone=config.get("backbone", {}),
            training=config.get("training", {}),
            metrics=metrics,
            events=events,
            extra={k: v for k, v in config.items() if k not in known},
        )


def _need_spark(spark, uri: str):
    if spark is not None:
        return spark
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is None:
        raise ConfigError(f"the model {uri} is not on the local disk: reading or writing it needs a running SparkSession")
    return active


def _resolve(uri: str | Path, spark) -> str | Path:
    """A path without a scheme means what it means to Spark (``fs.defaultFS``) when a session is at hand, else the
    local disk; a local result stays the caller's own path."""
    from sparkdl.data import hadoopfs

    if "://" in str(uri) or str(uri).startswith("file:"):
        return uri
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    if spark is None:
        return uri
    qualified = hadoopfs.qualify(spark, str(uri))
    return uri if hadoopfs.is_local(qualified) else qualified


def save_bundle(bundle: ModelBundle, uri: str | Path, overwrite: bool = False, spark=None) -> str:
    """Save to a local directory or a Hadoop URI; returns where it went."""
    from sparkdl.data import hadoopfs

    uri = _resolve(uri, spark)
    if hadoopfs.is_local(uri):
        return str(bundle.save(hadoopfs.local_path(uri), overwrite=overwrite))
    spark = _need_spark(spark, str(uri))
    with tempfile.TemporaryDirectory(prefix="sparkdl-model-") as tmp:
        local = bundle.save(Path(tmp) / "model")
        hadoopfs.put_dir(spark, local, str(uri), overwrite=overwrite)
    return str(uri)


def load_bundle(uri: str | Path, spark=None) -> ModelBundle:
    """Load from a local directory or a Hadoop URI."""
    from sparkdl.data import hadoopfs

    uri = _resolve(uri, spark)
    if hadoopfs.is_local(uri):
        return ModelBundle.load(hadoopfs.local_path(uri))
    spark = _need_spark(spark, str(uri))
    with hadoopfs.local_copy(spark, str(uri), prefix="sparkdl-model-") as local:
        return ModelBundle.load(local)
