"""Ingest: an image-folder tree on any Hadoop URI -> the images table.

Table schema: ``path string, label string, label_index int, split string, image binary``.

* Files are listed and read by Spark's ``binaryFile`` source (recursive). Names starting with ``.`` or ``_`` are
  hidden files to every Spark file source and are not listed.
* The class of a file is the first folder below the root (for the usual ``root/<class>/<file>`` layout: the parent
  folder). Caltech-256's ``001.ak47`` gives label ``ak47``; when every class folder has such a numeric prefix,
  label indices follow the prefixes (``001`` -> 0), otherwise sorted folder names.
* The split comes from a hash of (seed, path relative to the root): the same file lands in the same split whatever
  the cluster, partitioning or storage (local copy vs HDFS).
* Every file is fully decoded once; files that fail are not written to the table but listed in the rejects table
  with a reason, counted in the meta sidecar and reported. Too many turn into a DataError.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sparkdl.config import SPLIT_NAMES, IngestConfig
from sparkdl.data import decode, hadoopfs, tables
from sparkdl.errors import DataError

Progress = Callable[[str], None]

_PREFIX_RE = re.compile(r"^(\d+)\.(.+)$")

VALIDATED_SCHEMA = (
    "path string, rel_path string, class_dir string, split string, image binary, "
    f"{tables.REASON_COL} string, {tables.DETAIL_COL} string"
)
IMAGES_COLUMNS = ("path", "label", "label_index", "split", "image")
IMAGES_FORMAT = "sparkdl.images/1"


@dataclass(frozen=True)
class LabelMapping:
    """Class folder names in label-index order, and the label each one carries."""

    folders: tuple[str, ...]
    labels: tuple[str, ...]
    source: str  # "numeric_prefix" or "sorted_names"

    @classmethod
    def from_folders(cls, folders: list[str] | set[str]) -> "LabelMapping":
        names = sorted(set(folders))
        if not names:
            raise DataError("no class folders found: images must sit in <root>/<class name>/<file>")
        matches = [_PREFIX_RE.match(n) for n in names]
        if all(matches):
            ordered = sorted(zip(matches, names), key=lambda mn: (int(mn[0].group(1)), mn[1]))
            folders_t = tuple(n for _, n in ordered)
            labels = tuple(m.group(2) for m, _ in ordered)
            source = "numeric_prefix"
        else:
            folders_t = tuple(names)
            labels = tuple(names)
            source = "sorted_names"
        seen: dict[str, str] = {}
        for folder, label in zip(folders_t, labels):
            if label in seen:
                raise DataError(f"class folders {seen[label]!r} and {folder!r} both give label {label!r}; rename one")
            seen[label] = folder
        return cls(folders=folders_t, labels=labels, source=source)

    def index_of_folder(self) -> dict[str, int]:
        return {f: i for i, f in enumerate(self.folders)}

    def to_json(self) -> dict:
        return {"labels": list(self.labels), "class_folders": list(self.folders), "label_source": self.source}


def assign_split(rel_path: str, seed: int, fractions: tuple[float, ...]) -> str:
    """Deterministic split of one file from a 64-bit hash of (seed, relative path)."""
    digest = hashlib.blake2b(f"{seed}\0{rel_path}".encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    cumulative = 0.0
    last = SPLIT_NAMES[0]
    for name, frac in zip(SPLIT_NAMES, fractions):
        if frac <= 0:
            continue
        cumulative += frac
        last = name
        if u < cumulative:
            return name
    return last


def relative_path(path: str, root: str) -> str:
    prefix = root.rstrip("/") + "/"
    if path.startswith(prefix):
        return path[len(prefix):]
    # A scheme spelled differently (file:/x vs file:///x): fall back to the path part after the root's path part.
    root_path = root.split(":", 1)[-1].lstrip("/").rstrip("/") + "/"
    tail = path.split(":", 1)[-1].lstrip("/")
    if tail.startswith(root_path):
        return tail[len(root_path):]
    raise DataError(f"listed file {path} is not below the input root {root}")


def _validate_fn(root: str, seed: int, fractions: tuple[float, ...]):
    """The executor-side function: decode every file once; emit kept rows and rejects in one schema."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        schema = pa.schema(
            [
                ("path", pa.string()),
                ("rel_path", pa.string()),
                ("class_dir", pa.string()),
                ("split", pa.string()),
                ("image", pa.binary()),
                (tables.REASON_COL, pa.string()),
                (tables.DETAIL_COL, pa.string()),
            ]
        )
        for batch in batches:
            paths = batch.column("path").to_pylist()
            contents = batch.column("content")
            cols: dict[str, list] = {name: [] for name in schema.names}
            for i, path in enumerate(paths):
                rel = relative_path(path, root)
                parts = rel.split("/")
                class_dir = parts[0] if len(parts) > 1 else None
                data = contents[i].as_py()
                if class_dir is None:
                    reason, detail = decode.NOT_IN_CLASS_FOLDER, "file sits directly in the root, not in a class folder"
                else:
                    reason, detail = decode.check_image(data)
                cols["path"].append(path)
                cols["rel_path"].append(rel)
                cols["class_dir"].append(class_dir)
                cols["split"].append(assign_split(rel, seed, fractions))
                cols["image"].append(data if reason is None else None)
                cols[tables.REASON_COL].append(reason)
                cols[tables.DETAIL_COL].append(detail)
            yield pa.RecordBatch.from_pydict(cols, schema=schema)

    return run


def read_images(spark, uri: str, partitions: int | None = None):
    """Spark's binaryFile listing of every file below ``uri`` (recursive): ``path, modificationTime, length, content``."""
    tables.check_input(spark, uri, "image folder")
    if not hadoopfs.is_dir(spark, uri):
        raise DataError(f"{uri} is a file; --images must be the root folder of an image-folder tree")
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
    if partitions is not None:
        df = df.repartition(partitions)
    return df


def _unread_files(spark, validated, listed: list[str], root: str):
    """Rows (as rejects) for files the listing found but the binaryFile reader never produced."""
    listed_df = spark.createDataFrame([(relative_path(p, root),) for p in listed], "rel_path string")
    missing = [r["rel_path"] for r in listed_df.join(validated.select("rel_path"), "rel_path", "left_anti").collect()]
    rows = []
    for rel in sorted(missing):
        parts = rel.split("/")
        rows.append(
            (
                root.rstrip("/") + "/" + rel,  # the form Spark's reader reports paths in
                rel,
                parts[0] if len(parts) > 1 else None,
                None,
                None,
                decode.EMPTY_FILE,
                "the file has 0 bytes (listed, but Spark's binaryFile reader skips empty files)",
            )
        )
    return spark.createDataFrame(rows, VALIDATED_SCHEMA)


@dataclass(frozen=True)
class IngestResult(tables.StageResult):
    labels: tuple[str, ...] = ()
    label_source: str = ""
    class_counts: dict[str, int] = field(default_factory=dict)


def ingest_images(spark, config: IngestConfig, progress: Progress | None = None) -> IngestResult:
    """Read, validate, label and split an image-folder tree; write the images table, its rejects and its meta."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    tables.check_output(spark, config.output_uri, config.overwrite)
    root = hadoopfs.qualify(spark, config.images_uri)
    raw = read_images(spark, config.images_uri, config.partitions)
    say(f"ingest: listing and decoding files below {root}")

    validated = raw.select("path", "content").mapInArrow(
        _validate_fn(root, config.seed, tuple(config.split)), VALIDATED_SCHEMA
    )
    cached = validated.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        counts, groups = tables.count_rejects(validated, ("split", "class_dir"))
        listed = raw.inputFiles()
        if len(listed) > counts.rows_in:
            # Spark's file sources skip zero-length files without a word; find them and count them as rejects.
            validated = validated.unionByName(_unread_files(spark, validated, listed, root))
            counts, groups = tables.count_rejects(validated, ("split", "class_dir"))
        if counts.rows_in == 0:
            raise DataError(f"no files found below {root}")
        say(f"ingest: {counts.rows_in} files read, {counts.rejected} rejected {counts.by_reason or ''}".rstrip())
        rejects_at = tables.write_rejects(validated, config.output_uri, stage="ingest")
        tables.enforce_reject_fraction(counts, config.max_reject_fraction, "ingest", rejects_at)

        mapping = LabelMapping.from_folders({key[1] for _, key, _ in groups if key[1] is not None})
        index = mapping.index_of_folder()
        pairs = [F.lit(x) for folder, i in index.items() for x in (folder, i)]
        label_pairs = [F.lit(x) for folder, label in zip(mapping.folders, mapping.labels) for x in (folder, label)]
        table = validated.filter(F.col(tables.REASON_COL).isNull()).select(
            F.col("path"),
            F.create_map(*label_pairs)[F.col("class_dir")].alias("label"),
            F.create_map(*pairs)[F.col("class_dir")].cast("int").alias("label_index"),
            F.col("split"),
            F.col("image"),
        )
        say(f"ingest: writing {counts.rows_out} rows, {len(mapping.labels)} classes ({mapping.source}) to {config.output_uri}")
        table.write.mode("overwrite" if config.overwrite else "errorifexists").parquet(config.output_uri)
    finally:
        cached.unpersist()

    split_counts = tables.kept_counts(groups, 0)
    class_counts = {mapping.labels[index[k]]: v for k, v in tables.kept_counts(groups, 1).items()}
    seconds = time.perf_counter() - start
    meta = {
        "format": IMAGES_FORMAT,
        "stage": "ingest",
        "source": root,
        **mapping.to_json(),
        "split_fractions": dict(zip(SPLIT_NAMES, config.split)),
        "seed": config.seed,
        "rows_in": counts.rows_in,
        "rows_out": counts.rows_out,
        "rejects": counts.by_reason,
        "split_counts": split_counts,
        "class_counts": class_counts,
    }
    meta_at = tables.write_meta(spark, config.output_uri, meta)
    return IngestResult(
        output_uri=config.output_uri,
        rejects_uri=rejects_at,
        meta_uri=meta_at,
        rows_in=counts.rows_in,
        rows_out=counts.rows_out,
        rejects=counts.by_reason,
        split_counts=split_counts,
        labels=mapping.labels,
        label_source=mapping.source,
        seconds=seconds,
        class_counts=class_counts,
    )
