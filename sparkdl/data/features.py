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


def validate_features(df, n_classes: int, uri: str = "the features table") -> dict[str, int]:
    """One pass over the table; DataError naming every problem (column and count) before any training starts.
    Returns the rows per split."""
    from pyspark.sql import functions as F

    from sparkdl.errors import DataError

    feat = F.col("features")
    bad_value = F.exists(feat, lambda x: F.isnan(x) | (x == float("inf")) | (x == float("-inf")) | x.isNull())
    row = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(feat.isNull(), 1).otherwise(0)).alias("null_features"),
        F.min(F.size(feat)).alias("min_len"),
        F.max(F.size(feat)).alias("max_len"),
        F.sum(F.when(bad_value, 1).otherwise(0)).alias("non_finite"),
        F.sum(F.when(F.col("label_index").isNull() | (F.col("label_index") < 0) | (F.col("label_index") >= n_classes), 1).otherwise(0)).alias("bad_label"),
        F.sum(F.when(F.col("split") == "train", 1).otherwise(0)).alias("train"),
        F.sum(F.when(F.col("split") == "valid", 1).otherwise(0)).alias("valid"),
        F.sum(F.when(F.col("split") == "test", 1).otherwise(0)).alias("test"),
    ).first()
    problems = []
    if row["null_features"]:
        problems.append(f"column 'features' is null in {row['null_features']} rows")
    if row["rows"] and row["min_len"] != row["max_len"]:
        n_mixed = df.filter(F.size(feat) != row["max_len"]).count()
        problems.append(
            f"column 'features' has mixed lengths ({row['min_len']}..{row['max_len']}): {n_mixed} rows differ from {row['max_len']}"
        )
    if row["non_finite"]:
        problems.append(f"column 'features' has NaN/inf/null values in {row['non_finite']} rows")
    if row["bad_label"]:
        problems.append(f"column 'label_index' is null or outside [0, {n_classes}) in {row['bad_label']} rows")
    if not row["train"]:
        problems.append(f"column 'split' has no 'train' rows ({row['rows']} rows in all): nothing to train on")
    if problems:
        raise DataError(f"{uri} cannot be trained on: " + "; ".join(problems))
    return {"train": int(row["train"]), "valid": int(row["valid"]), "test": int(row["test"]), "feature_dim": int(row["max_len"])}
