"""``featurize --incremental``: reuse the rows of the previous features table whose image did not change.

A row is reused when the previous table has the same ``(path, sha256)`` (the content hash ingest computed while
decoding) and was made the same way: same backbone, cut, feature dimension, weights (sha256), preprocessing and
numerics (precision, runtime). Anything else differing is refused, naming each difference: recompute everything
without ``--incremental``. New and changed images are computed; images no longer in the input are dropped. The new
table replaces the old one atomically (the stage's usual staging and swap), and the previous table stays readable
until then: its reused rows are read while the new table is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from sparkdl.data import hadoopfs, tables
from sparkdl.data.features import FEATURES_FORMAT
from sparkdl.errors import ConfigError

ORIGIN_COL = "_sparkdl_origin"  # new | changed: counted with the rejects in one pass, never written
SAME_WAY = ("name", "cut", "feature_dim", "preprocess")


@dataclass
class Reuse:
    """What an incremental run computes and what it takes from the previous table."""

    to_compute: object  # DataFrame: the images table's rows to run through the backbone (+ ORIGIN_COL)
    to_compute_rows: int
    reused: object  # DataFrame: path, sha256, features, label, label_index, split (read while the new table is written)
    reused_splits: dict  # split -> reused rows (counted by the planning job)
    dropped: int  # rows of the previous table whose path is no longer in the input
    previous_run_id: str | None


def with_content_hash(images, say):
    """The images table with ``sha256`` (of the image bytes): ingest's column, or computed by Spark for an images
    table written before ingest recorded it."""
    from pyspark.sql import functions as F

    if "sha256" in images.columns:
        return images
    say("featurize: the images table has no sha256 column (ingested by an older sparkdl): hashing each image")
    return images.withColumn("sha256", F.sha2(F.col("image"), 256))


def differences(previous: dict, current: dict) -> list[str]:
    """``field: previous -> current`` for every way the previous table's backbone record differs from this run's."""
    out = []
    # the weights by content where both tables know it (a weights file moved elsewhere is the same weights)
    weights = "weights_sha256" if previous.get("weights_sha256") and current.get("weights_sha256") else "weights"
    for key in (*SAME_WAY, weights):
        if _as_json(previous.get(key)) != _as_json(current.get(key)):  # a meta read back has lists, not tuples
            out.append(f"{key}: {_short(previous.get(key))} -> {_short(current.get(key))}")
    was, now = previous.get("numerics") or {}, current.get("numerics") or {}
    for key in ("precision", "runtime"):
        if was.get(key, "fp32" if key == "precision" else "torch") != now.get(key):
            out.append(f"numerics.{key}: {was.get(key)} -> {now.get(key)}")
    return out


def _as_json(value):
    return json.loads(json.dumps(value, sort_keys=True))


def _short(value) -> str:
    text = str(value)
    return text[:16] + "…" if len(text) > 24 and " " not in text else text


def plan_reuse(spark, images, output_uri: str, backbone: dict, say) -> Reuse | None:
    """Split ``images`` (with ``sha256``) into rows to compute and rows to reuse from the table at ``output_uri``;
    None when there is no previous table (a full run). Refuses a previous table made another way."""
    from pyspark.sql import functions as F

    if not hadoopfs.exists(spark, output_uri):
        say(f"featurize --incremental: no table at {output_uri} yet: computing every image")
        return None
    meta = tables.read_meta(spark, output_uri, required=False)
    fix = "run without --incremental (and with --overwrite) to recompute every image"
    if meta is None or meta.get("format") != FEATURES_FORMAT:
        raise ConfigError(f"--incremental: {output_uri} is not a sparkdl features table (no features meta): {fix}")
    previous = spark.read.parquet(output_uri)
    if "sha256" not in previous.columns:
        raise ConfigError(f"--incremental: {output_uri} has no sha256 column (written by an older sparkdl), so no row "
                          f"can be matched to its image: {fix}")  # fmt: skip
    diff = differences(meta.get("backbone") or {}, backbone)
    if diff:
        raise ConfigError(f"--incremental: {output_uri} was made another way ({'; '.join(diff)}): {fix}")

    old = previous.select("path", F.col("sha256").alias("_old_sha256"))
    same = F.col("_old_sha256") == F.col("sha256")
    # one job counts what each path is: new, changed, reused (same bytes) or dropped (no longer in the input)
    status = (images.select("path", "sha256", "split").join(old, "path", "full_outer")
              .select(F.when(F.col("sha256").isNull(), "dropped").when(F.col("_old_sha256").isNull(), "new")
                      .when(same, "reused").otherwise("changed").alias("status"), "split")
              .groupBy("status", "split").count().collect())  # fmt: skip
    counts = {"new": 0, "changed": 0, "reused": 0, "dropped": 0}
    reused_splits: dict[str, int] = {}
    for r in status:
        counts[r["status"]] += int(r["count"])
        if r["status"] == "reused":
            reused_splits[r["split"]] = reused_splits.get(r["split"], 0) + int(r["count"])
    # the previous table's keys (path + sha256, ~150 bytes a row) and the reused rows' keys are broadcast: neither the
    # image bytes nor the previous features are shuffled
    keyed = images.join(F.broadcast(old), "path", "left")
    to_compute = keyed.filter(F.col("_old_sha256").isNull() | ~same).withColumn(
        ORIGIN_COL, F.when(F.col("_old_sha256").isNull(), F.lit("new")).otherwise(F.lit("changed"))
    ).drop("_old_sha256")
    keep = keyed.filter(same).select("path", "sha256", "label", "label_index", "split")  # no image bytes read
    reused = previous.select("path", "sha256", "features").join(F.broadcast(keep), ["path", "sha256"])
    return Reuse(to_compute=to_compute, to_compute_rows=counts["new"] + counts["changed"], reused=reused,
                 reused_splits=reused_splits, dropped=counts["dropped"], previous_run_id=meta.get("run_id"))
