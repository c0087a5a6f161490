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
