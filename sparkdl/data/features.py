"""The features table: ``path string, label string, label_index int, split string, features array<float>,
sha256 string`` (of the image's bytes: what ``featurize --incremental`` matches rows by; tables written before it
lack the column and are still read),
with ``<name>.meta.json`` beside it (label mapping, backbone, counts) and ``<name>.rejects.parquet``."""
from __future__ import annotations

from dataclasses import dataclass

from sparkdl.data import tables
from sparkdl.errors import DataError

FEATURES_FORMAT = "sparkdl.features/1"
FEATURES_COLUMNS = ("path", "label", "label_index", "split", "features", "sha256")  # sha256: of the image's bytes
FEATURES_TYPES: dict[str, tuple[str, ...]] = {
    "path": ("string",),
    "label": ("string",),
    "label_index": ("int", "bigint"),
    "split": ("string",),
    "features": ("array<float>", "array<double>", "vector"),  # vector: Spark ML's VectorUDT, dense or sparse
}
IMAGES_TYPES: dict[str, tuple[str, ...]] = {
    "path": ("string",),
    "label": ("string",),
    "label_index": ("int", "bigint"),
    "split": ("string",),
    "image": ("binary",),
}


def read_features(spark, uri: str):
    """(DataFrame, meta dict or None) of a features table; schema checked and ``features`` normalised to
    ``array<float>``. The meta is None for a table sparkdl did not write (no ``<name>.meta.json`` beside it)."""
    tables.check_input(spark, uri, "features table")
    df = spark.read.parquet(uri)
    tables.check_columns(df, FEATURES_TYPES, "features table", uri)
    return as_float_arrays(df), tables.read_meta(spark, uri, required=False)


def float_features(df, column: str = "features"):
    """A Column: ``column`` as ``array<float>`` (from a Spark ML ``Vector``, dense or sparse, or ``array<double>``);
    a missing column, or one of another type, is refused naming it. DataFrame functions only (Spark Connect too)."""
    from pyspark.sql import functions as F

    if column not in df.columns:
        raise DataError(f"features column {column!r} not found (columns: {', '.join(df.columns)})")
    kind = df.schema[column].dataType.simpleString()
    if kind == "array<float>":
        return F.col(column)
    if kind == "vector":
        from pyspark.ml.functions import vector_to_array

        return vector_to_array(F.col(column), dtype="float32")
    if kind == "array<double>":
        return F.col(column).cast("array<float>")
    raise DataError(
        f"features column {column!r} has type {kind}; sparkdl takes a Vector (VectorAssembler, array_to_vector) or "
        "array<float> / array<double>"
    )


def as_float_arrays(df, column: str = "features"):
    """``df`` with ``column`` as ``array<float>`` (:func:`float_features`) so that every consumer sees one type. A
    projection: partitions and row order are unchanged. Doubles beyond the float range become inf, which
    ``validate_features`` refuses."""
    if df.schema[column].dataType.simpleString() == "array<float>":
        return df
    return df.withColumn(column, float_features(df, column))


@dataclass(frozen=True)
class LabelGroup:
    """The rows of one ``(label_index, label, split)``: how many, and the first of their paths (to name in errors)."""

    label_index: int | None
    label: str | None
    split: str | None
    rows: int
    example: str | None


MAX_LABEL_GROUPS = 100_000


def label_groups(df, uri: str) -> list[LabelGroup]:
    """One aggregation pass over the label columns: rows per ``(label_index, label, split)`` (a few per class)."""
    from pyspark.sql import functions as F

    rows = (df.groupBy("label_index", "label", "split").agg(F.count(F.lit(1)).alias("n"), F.min("path").alias("ex"))
            .limit(MAX_LABEL_GROUPS + 1).collect())  # fmt: skip
    if len(rows) > MAX_LABEL_GROUPS:
        raise DataError(f"{uri} has over {MAX_LABEL_GROUPS} distinct (label_index, label, split) values: "
                        "'label' must name a class, not a row")  # fmt: skip
    return [LabelGroup(r["label_index"], r["label"], r["split"], int(r["n"]), r["ex"]) for r in rows]


def _tally(groups: list[LabelGroup], key) -> dict:
    """``key(group)`` -> (rows, first example path) over the groups (every split)."""
    out: dict = {}
    for g in groups:
        n, ex = out.get(key(g), (0, None))
        examples = [e for e in (ex, g.example) if e is not None]
        out[key(g)] = (n + g.rows, min(examples) if examples else None)
    return out


def _pairs(groups: list[LabelGroup]) -> dict[tuple, tuple[int, str | None]]:
    """``(label_index, label)`` -> (rows, first example path) over every split."""
    return _tally(groups, lambda g: (g.label_index, g.label))


def _few(values: list, limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")


def label_clashes(groups: list[LabelGroup]) -> list[str]:
    """Problems of the ``(label_index, label)`` pairs, each naming the values, their row counts and a path: an index
    with a null label or two labels, a label with two indices (rows with a null index: ``validate_features``)."""
    pairs = _pairs(groups)
    named = (lambda key, value: f"{value!r} ({pairs[key][0]} rows, e.g. {pairs[key][1]})")
    by_index: dict = {}
    by_label: dict = {}
    for index, label in sorted((k for k in pairs if k[0] is not None), key=lambda k: (k[0], str(k[1]))):
        by_index.setdefault(index, []).append(label)
        by_label.setdefault(label, []).append(index)
    problems = []
    for index, labels in by_index.items():
        if None in labels:
            n, ex = pairs[(index, None)]
            problems.append(f"label_index {index} has a null label in {n} rows (e.g. {ex})")
        if len(labels) > 1:
            both = " and ".join(named((index, lab), lab) for lab in labels)
            problems.append(f"label_index {index} has {len(labels)} labels: {both}")
    for label, indices in by_label.items():
        if label is not None and len(indices) > 1:
            both = " and ".join(named((i, label), i) for i in indices)
            problems.append(f"label {label!r} has {len(indices)} label_index values: {both}")
    return problems


def derive_labels(groups: list[LabelGroup], uri: str) -> list[str]:
    """The label mapping of a table without a meta, from its distinct ``(label_index, label)`` pairs. Refused when an
    index has two labels, a label two indices, or the indices are not ``0..n-1``."""
    problems = label_clashes(groups)
    rows = _tally([g for g in groups if g.label_index is not None], lambda g: g.label_index)
    indices = sorted(rows)
    k = len(indices)
    if not k:
        problems.append("no row has a label_index")
    elif indices != list(range(k)):
        odd = [f"{i} ({rows[i][0]} rows, e.g. {rows[i][1]})" for i in indices if not 0 <= i < k]
        missing = sorted(set(range(k)) - set(indices))
        problems.append(f"label_index values must be 0..{k - 1} for {k} distinct values, found {_few(odd)}"
                        f" (missing {_few(missing)})")  # fmt: skip
    if problems:
        raise DataError(f"{uri} has no meta.json and its label mapping cannot be derived: " + "; ".join(problems))
    mapping = {g.label_index: g.label for g in groups}
    return [mapping[i] for i in indices]


def label_warnings(groups: list[LabelGroup], labels: list[str]) -> list[str]:
    """What trains but is likely not what was meant: one class in all, or classes without 'train' rows."""
    if len(labels) == 1:
        return [f"the table has one class ({labels[0]!r}): the model predicts it for every input"]
    in_train = sorted({g.label_index for g in groups if g.split == "train" and g.label_index in range(len(labels))})
    absent = [repr(labels[i]) for i in range(len(labels)) if i not in in_train]
    if len(in_train) == 1:
        return [f"the 'train' rows hold one class of {len(labels)} ({labels[in_train[0]]!r}): the model predicts it "
                "for every input"]  # fmt: skip
    return [f"{len(absent)} of {len(labels)} classes have no 'train' rows: {_few(absent)}"] if absent else []


SCAN_SCHEMA = ("partition int, rows long, null_features long, min_len int, max_len int, non_finite long, "
               "bad_label long, train long, valid long, test long, empty long")  # fmt: skip
_COUNTS = ("rows", "null_features", "empty", "non_finite", "bad_label", "train", "valid", "test")
_SCAN_FIELDS = [field.split()[0] for field in SCAN_SCHEMA.split(", ")]


def _scan_partition(batches, n_classes: int):
    """Executor side: the checks and split counts of one partition, in numpy (one output row)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark import TaskContext

    acc = dict.fromkeys(_COUNTS, 0)
    min_len, max_len = None, None
    for batch in batches:
        feats = batch.column("features")
        acc["rows"] += batch.num_rows
        acc["null_features"] += feats.null_count
        lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
        present = lengths[~np.isnan(lengths)] if lengths.dtype.kind == "f" else lengths
        acc["empty"] += int((present == 0).sum())
        if len(present):
            lo, hi = int(present.min()), int(present.max())
            min_len = lo if min_len is None else min(min_len, lo)
            max_len = hi if max_len is None else max(max_len, hi)
        values = pc.list_flatten(feats)  # nulls rows contribute nothing; null elements stay null
        bad = ~np.isfinite(values.to_numpy(zero_copy_only=False).astype(np.float64))
        if values.null_count:
            bad |= values.is_null().to_numpy(zero_copy_only=False)
        if bad.any():
            row_of = pc.list_parent_indices(feats).to_numpy()
            acc["non_finite"] += len(np.unique(row_of[bad]))
        labels = batch.column("label_index")
        lab = labels.to_numpy(zero_copy_only=False).astype(np.float64) if labels.null_count == 0 else \
            pc.fill_null(labels.cast(pa.float64()), -1.0).to_numpy()  # fmt: skip
        acc["bad_label"] += int(((lab < 0) | (lab >= n_classes)).sum())
        split = batch.column("split")
        for name in ("train", "valid", "test"):
            acc[name] += int(pc.sum(pc.equal(split, name)).as_py() or 0)
    ctx = TaskContext.get()
    row = {"partition": ctx.partitionId() if ctx else 0, **acc, "min_len": min_len, "max_len": max_len}
    int32 = ("partition", "min_len", "max_len")
    schema = pa.schema([(name, pa.int32() if name in int32 else pa.int64()) for name in _SCAN_FIELDS])
    yield pa.RecordBatch.from_pylist([row], schema=schema)


def validate_features(df, n_classes: int, uri: str = "the features table", need_train: bool = True) -> dict:
    """One pass over the table (numpy per partition); DataError naming every problem (column and count) before any
    training or evaluation starts (the same checks and text for both; ``need_train``: refuse a table without 'train'
    rows). ``features`` must be ``array<float>`` or ``array<double>`` (``as_float_arrays`` first for a Vector).
    Returns the rows per split, the feature length, and ``per_partition``: each input partition's ``{split: rows}``
    (the training layout deals rows to workers from these offsets)."""
    import functools

    scan = functools.partial(_scan_partition, n_classes=n_classes)
    parts = sorted(df.select("features", "label_index", "split").mapInArrow(scan, SCAN_SCHEMA).collect(),
                   key=lambda r: r["partition"])  # fmt: skip
    total = {k: sum(r[k] for r in parts) for k in _COUNTS}
    lens = [(r["min_len"], r["max_len"]) for r in parts if r["min_len"] is not None]
    min_len = min((lo for lo, _ in lens), default=0)
    max_len = max((hi for _, hi in lens), default=0)
    problems = []
    if total["null_features"]:
        problems.append(f"column 'features' is null in {total['null_features']} rows")
    if total["empty"]:
        problems.append(f"column 'features' is an empty array (0 values) in {total['empty']} rows")
    if total["rows"] and min_len != max_len:
        from pyspark.sql import functions as F

        n_mixed = df.filter(F.size("features") != max_len).count()
        problems.append(
            f"column 'features' has mixed lengths ({min_len}..{max_len}): {n_mixed} rows differ from {max_len}"
        )
    if total["non_finite"]:
        problems.append(f"column 'features' has NaN/inf/null values in {total['non_finite']} rows")
    if total["bad_label"]:
        problems.append(f"column 'label_index' is null or outside [0, {n_classes}) in {total['bad_label']} rows")
    if need_train and not total["train"]:
        problems.append(f"column 'split' has no 'train' rows ({total['rows']} rows in all): nothing to train on")
    if problems:
        raise DataError(f"{uri} failed validation: " + "; ".join(problems))
    return {"train": total["train"], "valid": total["valid"], "test": total["test"], "feature_dim": int(max_len),
            "per_partition": [{"train": r["train"], "valid": r["valid"]} for r in parts]}  # fmt: skip
