"""The features table: ``path string, label string, label_index int, split string, features array<float>``,
with ``<name>.meta.json`` beside it (label mapping, backbone, counts) and ``<name>.rejects.parquet``."""
from __future__ import annotations

from sparkdl.data import tables

FEATURES_FORMAT = "sparkdl.features/1"
FEATURES_COLUMNS = ("path", "label", "label_index", "split", "features")
FEATURES_TYPES: dict[str, tuple[str, ...]] = {
    "path": ("string",),
    "label": ("string",),
    "label_index": ("int", "bigint"),
    "split": ("string",),
    "features": ("array<float>", "array<double>"),
}
IMAGES_TYPES: dict[str, tuple[str, ...]] = {
    "path": ("string",),
    "label": ("string",),
    "label_index": ("int", "bigint"),
    "split": ("string",),
    "image": ("binary",),
}


def read_features(spark, uri: str):
    """(DataFrame, meta dict) of a features table written by ``sparkdl featurize``; schema checked."""
    tables.check_input(spark, uri, "features table")
    df = spark.read.parquet(uri)
    tables.check_columns(df, FEATURES_TYPES, "features table", uri)
    return df, tables.read_meta(spark, uri)


SCAN_SCHEMA = ("partition int, rows long, null_features long, min_len int, max_len int, non_finite long, "
               "bad_label long, train long, valid long, test long")  # fmt: skip
_SCAN_FIELDS = [field.split()[0] for field in SCAN_SCHEMA.split(", ")]


def _scan_partition(batches, n_classes: int):
    """Executor side: the checks and split counts of one partition, in numpy (one output row)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyspark import TaskContext

    acc = {"rows": 0, "null_features": 0, "non_finite": 0, "bad_label": 0, "train": 0, "valid": 0, "test": 0}
    min_len, max_len = None, None
    for batch in batches:
        feats = batch.column("features")
        acc["rows"] += batch.num_rows
        acc["null_features"] += feats.null_count
        lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
        present = lengths[~np.isnan(lengths)] if lengths.dtype.kind == "f" else lengths
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


def validate_features(df, n_classes: int, uri: str = "the features table") -> dict:
    """One pass over the table (numpy per partition); DataError naming every problem (column and count) before any
    training starts. Returns the rows per split, the feature length, and ``per_partition``: each input partition's
    ``{split: rows}`` (the training layout deals rows to workers from these offsets)."""
    import functools

    from sparkdl.errors import DataError

    scan = functools.partial(_scan_partition, n_classes=n_classes)
    parts = sorted(df.select("features", "label_index", "split").mapInArrow(scan, SCAN_SCHEMA).collect(),
                   key=lambda r: r["partition"])  # fmt: skip
    total = {k: sum(r[k] for r in parts) for k in ("rows", "null_features", "non_finite", "bad_label", "train", "valid", "test")}
    lens = [(r["min_len"], r["max_len"]) for r in parts if r["min_len"] is not None]
    min_len = min((lo for lo, _ in lens), default=0)
    max_len = max((hi for _, hi in lens), default=0)
    problems = []
    if total["null_features"]:
        problems.append(f"column 'features' is null in {total['null_features']} rows")
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
    if not total["train"]:
        problems.append(f"column 'split' has no 'train' rows ({total['rows']} rows in all): nothing to train on")
    if problems:
        raise DataError(f"{uri} cannot be trained on: " + "; ".join(problems))
    return {"train": total["train"], "valid": total["valid"], "test": total["test"], "feature_dim": int(max_len),
            "per_partition": [{"train": r["train"], "valid": r["valid"]} for r in parts]}  # fmt: skip
