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
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparkdl.config import HEAD_KINDS, HeadConfig
from sparkdl.errors import ConfigError, DataError
from sparkdl.model import HEAD_DTYPE, HeadSpec, TensorInfo, check_head_tensors, head_shapes

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
    attachments: dict[str, Path] = field(default_factory=dict)  # bundle file name -> local file copied in on save

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
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise DataError(f"model directory {out} already exists: pass --overwrite or choose another path")
            _check_replaceable(out)
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(self.config_json(), indent=2) + "\n")
        save_file({k: np.ascontiguousarray(v) for k, v in self.head.params.items()}, str(tmp / "head.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n")
        for name, source in sorted(self.attachments.items()):
            shutil.copyfile(source, tmp / name)
        with open(tmp / "events.jsonl", "w") as f:
            for event in self.events:
                f.write(json.dumps(event) + "\n")
        _swap_in(tmp, out)  # complete or absent; the previous bundle stays until this one is complete
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        """Reads an untrusted bundle: every malformed file is a one-line ``DataError`` naming the file and the field,
        and the head's sizes are checked against ``head.safetensors``' header before anything is allocated."""
        d = Path(directory)
        config_path = d / "config.json"
        if not config_path.is_file():
            raise DataError(f"{d} is not a sparkdl model bundle (no config.json); train one with `sparkdl train`")
        config = validate_config(_read_json(config_path, MAX_JSON_BYTES), config_path)
        head = _load_head(config, d / "head.safetensors")
        metrics = _read_metrics(d / "metrics.json")
        return cls(
            head=head,
            labels=config.labels,
            backbone=config.backbone,
            training=config.training,
            metrics=metrics,
            events=_read_events(d / "events.jsonl"),
            extra=config.extra,
        )


MAX_JSON_BYTES = 16 * 2**20  # config.json, metrics.json
MAX_EVENTS_BYTES = 256 * 2**20  # events.jsonl: one short line per round and epoch
MAX_HEADER_BYTES = 2**20  # head.safetensors' JSON header (a head has a few tensors: well under 1 KB)
MAX_HIDDEN_LAYERS = 1024
_CONFIG_KEYS = ("format", "backbone", "feature_dim", "n_classes", "labels", "head", "training")
_REMEDY = "re-save the model or train it again with `sparkdl train`"


@dataclass(frozen=True)
class BundleConfig:
    """A bundle's config.json, validated."""

    head: HeadConfig
    feature_dim: int
    n_classes: int
    labels: list[str]
    backbone: dict
    training: dict
    extra: dict


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_json(path: Path, limit: int) -> object:
    size = path.stat().st_size
    if size > limit:
        raise DataError(f"{path} is {size} bytes, over the {limit // 2**20} MB limit for a bundle file; {_REMEDY}")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path} is not valid JSON ({_short(str(exc), 120)}); {_REMEDY}") from None


def _top_level(raw: object, path: Path) -> dict:
    if not isinstance(raw, dict):
        raise DataError(f"{path} must hold a JSON object, got {type(raw).__name__} {_short(raw)}; {_REMEDY}")
    return raw


def _field(config: dict, key: str, path: Path, prefix: str = "") -> object:
    if key not in config:
        raise DataError(f"{path}: missing field {prefix + key!r}; {_REMEDY}")
    return config[key]


def _positive_int(value: object, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"{path}: field {name!r} must be a positive integer, got {_short(value)}")
    return value


def _object(value: object, name: str, path: Path) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"{path}: field {name!r} must be a JSON object, got {_short(value)}")
    return value


def _head_config(raw: object, path: Path) -> HeadConfig:
    head = _object(raw, "head", path)
    kind = _field(head, "kind", path, "head.")
    if kind not in HEAD_KINDS:
        raise DataError(f"{path}: field 'head.kind' must be one of {HEAD_KINDS}, got {_short(kind)}")
    hidden = _field(head, "hidden", path, "head.")
    if not isinstance(hidden, list) or len(hidden) > MAX_HIDDEN_LAYERS:
        raise DataError(f"{path}: field 'head.hidden' must be a list of at most {MAX_HIDDEN_LAYERS} sizes, got {_short(hidden)}")
    sizes = tuple(_positive_int(h, f"head.hidden[{i}]", path) for i, h in enumerate(hidden))
    dropout = _field(head, "dropout", path, "head.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise DataError(f"{path}: field 'head.dropout' must be a number in [0, 1), got {_short(dropout)}")
    try:
        return HeadConfig(kind=kind, hidden=sizes, dropout=float(dropout))
    except ConfigError as exc:
        raise DataError(f"{path}: field 'head' is inconsistent: {exc}") from None


def _labels(raw: object, n_classes: int, path: Path) -> list[str]:
    if not isinstance(raw, list) or len(raw) != n_classes:
        size = f"{len(raw)} entries" if isinstance(raw, list) else _short(raw)
        raise DataError(f"{path}: field 'labels' must be a list of n_classes = {n_classes} names, got {size}")
    for i, label in enumerate(raw):
        if not isinstance(label, str):
            raise DataError(f"{path}: field 'labels[{i}]' must be a string, got {_short(label)}")
    return list(raw)


def validate_config(raw: object, path: Path) -> BundleConfig:
    """config.json's content -> ``BundleConfig``, or a one-line ``DataError`` naming ``path`` and the field."""
    config = _top_level(raw, path)
    if config.get("format") != BUNDLE_FORMAT:
        raise DataError(f"{path}: unknown bundle format {_short(config.get('format'))} (expected {BUNDLE_FORMAT})")
    head = _head_config(_field(config, "head", path), path)
    feature_dim = _positive_int(_field(config, "feature_dim", path), "feature_dim", path)
    n_classes = _positive_int(_field(config, "n_classes", path), "n_classes", path)
    return BundleConfig(
        head=head,
        feature_dim=feature_dim,
        n_classes=n_classes,
        labels=_labels(_field(config, "labels", path), n_classes, path),
        backbone=_object(config.get("backbone", {}), "backbone", path),
        training=_object(config.get("training", {}), "training", path),
        extra={k: v for k, v in config.items() if k not in _CONFIG_KEYS},
    )


def _tensor_info(key: str, entry: object, data_bytes: int, path: Path) -> TensorInfo:
    """One header entry; its byte range must lie in the file and, for float32, fit its shape exactly."""
    entry = entry if isinstance(entry, dict) else {}
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    well_formed = (
        isinstance(dtype, str)
        and isinstance(shape, list)
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
    )
    if not well_formed:
        raise DataError(f"{path}: tensor {_short(key)} has a malformed header entry {_short(entry)}; {_REMEDY}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise DataError(f"{path}: tensor {_short(key)} lies past the end of the file (truncated?); {_REMEDY}")
    if dtype == HEAD_DTYPE and end - begin != 4 * math.prod(shape):
        raise DataError(f"{path}: tensor {_short(key)} has {end - begin} bytes of data, its shape {shape} needs {4 * math.prod(shape)}")
    return TensorInfo(dtype, tuple(shape))


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of the tensors in a safetensors file, from its header alone (bounded; no data read)."""
    if not path.is_file():
        raise DataError(f"{path} is missing: a model bundle needs its head's weights; {_REMEDY}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else None
        if length is None or 8 + length > size:
            raise DataError(f"{path} is truncated or not a safetensors file (header length); {_REMEDY}")
        if length > MAX_HEADER_BYTES:
            raise DataError(f"{path}: header of {length} bytes is over the {MAX_HEADER_BYTES} limit: not a sparkdl head; {_REMEDY}")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise DataError(f"{path} is not a safetensors file (its header is not a JSON object); {_REMEDY}")
    data_bytes = size - 8 - length
    return {k: _tensor_info(k, v, data_bytes, path) for k, v in header.items() if k != "__metadata__"}


def _load_head(config: BundleConfig, path: Path) -> HeadSpec:
    """The head's tensors are checked against config.json from the header first: nothing is allocated for a head
    whose sizes the file does not hold."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    expected = head_shapes(config.head, config.feature_dim, config.n_classes)
    check_head_tensors(expected, read_safetensors_header(path), source=str(path))
    try:
        params = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a valid safetensors file ({_short(str(exc), 120)}); {_REMEDY}") from None
    spec = HeadSpec(config.head, config.feature_dim, config.n_classes, params)
    spec.check_shapes(source=str(path))  # the arrays as loaded, too
    return spec


def _read_metrics(path: Path) -> dict:
    return _top_level(_read_json(path, MAX_JSON_BYTES), path) if path.is_file() else {}


def _read_events(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    size = path.stat().st_size
    if size > MAX_EVENTS_BYTES:
        raise DataError(f"{path} is {size} bytes, over the {MAX_EVENTS_BYTES // 2**20} MB limit for a bundle file; {_REMEDY}")
    events = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except (ValueError, RecursionError):
                event = None
            if not isinstance(event, dict):
                raise DataError(f"{path}: line {number} is not a JSON object; {_REMEDY}")
            events.append(event)
    return events


def _check_replaceable(out: Path) -> None:
    """``--overwrite`` replaces an earlier bundle (a directory with config.json, or an empty one), nothing else:
    :func:`sparkdl.data.outputs.replaceable_problem`'s rule, on the local disk."""
    from sparkdl.data.outputs import replaceable_problem

    not_a_directory = "a symlink" if out.is_symlink() else (None if out.is_dir() else "a file")
    entries = [] if not_a_directory else sorted((p.name, p.is_dir()) for p in out.iterdir())
    problem = replaceable_problem(str(out), "bundle", "model directory", not_a_directory, entries)
    if problem:
        raise DataError(problem)


def _swap_in(new: Path, out: Path) -> None:
    """Move the complete ``new`` onto ``out``; an existing ``out`` is moved aside first and deleted afterwards."""
    if not out.exists():
        new.rename(out)
        return
    replaced = out.with_name(out.name + ".replaced")
    if replaced.exists():
        shutil.rmtree(replaced)
    out.rename(replaced)
    new.rename(out)
    shutil.rmtree(replaced, ignore_errors=True)


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
    from sparkdl.session import is_connect

    if spark is None or is_connect(spark):
        return uri  # a Spark Connect client has no Hadoop client: its own disk
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
