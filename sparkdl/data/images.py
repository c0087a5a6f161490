"""Ingest: an image-folder tree on any Hadoop URI -> the images table.

Table schema: ``path string, label string, label_index int, split string, image binary``.

* On the driver's own disk (``file:``) the driver walks the tree (following symlinks, entering no directory twice:
  a symlink back to a directory already read is a ``symlink_loop`` reject) and the executors read the listed files;
  elsewhere (HDFS, object stores) Spark's ``binaryFile`` source lists and reads (recursive). Either way names Spark's
  file sources hide (``spark.sql.files.ignoredPathSegmentRegex``, default: starting with ``.`` or ``_``) are not
  read; hidden folders directly below the root are counted in the meta (``hidden_folders``).
* ``path`` is always in the reader's form (Hadoop's ``Path.toString()``: ``file:/d/a b.jpg``, never ``%20``).
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
import heapq
import math
import os
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

from sparkdl.config import SPLIT_NAMES, IngestConfig
from sparkdl.data import decode, hadoopfs, outputs, tables
from sparkdl.errors import ConfigError, DataError
from sparkdl.progress import stage_progress
from sparkdl.session import job_description

Progress = Callable[[str], None]

_PREFIX_RE = re.compile(r"^(\d+)\.(.+)$")

VALIDATED_SCHEMA = (
    "path string, rel_path string, class_dir string, split string, image binary, sha256 string, "
    f"{tables.REASON_COL} string, {tables.DETAIL_COL} string"
)
IMAGES_COLUMNS = ("path", "label", "label_index", "split", "image", "sha256")
IMAGES_FORMAT = "sparkdl.images/1"
_READ_SLICE_BYTES = 64 << 20  # bytes of files per partition when the executors read a driver-side listing
_READ_BATCH_BYTES = 16 << 20  # bytes of file contents per Arrow batch those readers emit


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
                ("sha256", pa.string()),
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
                # the content hash, computed once here: featurize --incremental reuses rows by (path, sha256)
                cols["sha256"].append(hashlib.sha256(data).hexdigest() if reason is None else None)
                cols[tables.REASON_COL].append(reason)
                cols[tables.DETAIL_COL].append(detail)
            yield pa.RecordBatch.from_pydict(cols, schema=schema)

    return run


class ListedFile(NamedTuple):
    path: str  # the reader's form: file:/d/a b.jpg
    length: int
    mtime_ms: int


@dataclass(frozen=True)
class HiddenFolders:
    """Folders directly below the root whose names Spark's file sources hide (by default: starting with ``_`` or
    ``.``): never read and never classes, so counted here instead of disappearing without a word."""

    names: tuple[str, ...] = ()
    files: int = 0  # files below them (not read)

    def to_json(self) -> dict:
        return {"count": len(self.names), "names": list(self.names), "files": self.files}

    def summary(self, shown: int = 5) -> str:
        names = ", ".join(self.names[:shown]) + (", ..." if len(self.names) > shown else "")
        return (
            f"{len(self.names)} not read ({names}: {self.files} files); Spark's file sources skip names starting with "
            "'_' or '.': rename them to ingest them"
        )


@dataclass(frozen=True)
class Listing:
    """What listing an image tree found. ``files`` is None where Spark's binaryFile source lists (not ``file:``)."""

    root: str  # qualified, the reader's form
    files: tuple[ListedFile, ...] | None
    loops: tuple[str, ...] = ()  # symlinks (reader's form) to directories already read: not entered
    hidden_folders: HiddenFolders = field(default_factory=HiddenFolders)


def reader_form(uri: str) -> str:
    """A listed URI (``DataFrame.inputFiles()``: ``file:///d/a%20b.jpg``) in the form the binaryFile reader writes
    in ``path`` (Hadoop's ``Path.toString()``: ``file:/d/a b.jpg``): escapes decoded, an empty authority dropped."""
    parts = urllib.parse.urlsplit(uri)
    head = f"{parts.scheme}:" if parts.scheme else ""
    if parts.netloc:
        head += "//" + parts.netloc
    return head + urllib.parse.unquote(parts.path)


def _hidden_name_rule(spark) -> Callable[[str], bool]:
    """The names Spark's file sources skip while listing (``HadoopFSUtils.shouldFilterOutPathName`` with this session's
    ``spark.sql.files.ignoredPathSegmentRegex``, default ``^[._]``)."""
    key = "spark.sql.files.ignoredPathSegmentRegex"
    regex = spark.conf.get(key, "^[._]")
    try:
        pattern = re.compile(regex) if regex else None
    except re.error as exc:
        raise ConfigError(f"{key}={regex!r} is not a regular expression Python can read ({exc}); simplify it") from None

    def hidden(name: str) -> bool:
        if name.startswith(("_common_metadata", "_metadata")):
            return False
        if name.endswith("._COPYING_"):
            return True
        if name.startswith("_") and "=" in name:
            return False
        return bool(pattern is not None and pattern.search(name))

    return hidden


def _local_dir(root: str) -> str | None:
    """The driver-side directory of a qualified ``file:/d`` root (no unquoting: Path.toString() is not escaped)."""
    if not root.startswith("file:/") or root.startswith("file://"):
        return None
    return root[len("file:"):].rstrip("/") or "/"


def _scan(directory: str) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {directory}: {exc.strerror or exc}") from None


def _entry_kind(entry: os.DirEntry) -> str:
    """``dir``, ``linked_dir``, ``file`` (symlinks followed), ``loop`` (a symlink that resolves to itself) or ``other``
    (a broken symlink, a socket, a pipe: Hadoop's listing leaves those out too)."""
    try:
        if entry.is_dir():
            return "linked_dir" if entry.is_symlink() else "dir"
        return "file" if entry.is_file() else "other"
    except OSError:  # ELOOP: a -> b -> a
        return "loop"


def _walk_local(root_dir: str, hidden: Callable[[str], bool]) -> tuple[list[ListedFile], list[str]]:
    """Every file below ``root_dir`` and the symlinked directories not entered. Symlinks are followed, but no directory
    is entered twice (by device and inode): the real tree first, then symlinked directories in name order, so a symlink
    into the tree never takes a file away from its real class folder."""
    files: list[ListedFile] = []
    loops: list[str] = []
    seen: set[tuple[int, int]] = set()
    real, linked = [root_dir], []
    while real or linked:
        top = real.pop() if real else heapq.heappop(linked)
        try:
            info = os.stat(top)
        except OSError as exc:
            raise DataError(f"cannot list {top}: {exc.strerror or exc}") from None
        if (info.st_dev, info.st_ino) in seen:
            loops.append(top)
            continue
        seen.add((info.st_dev, info.st_ino))
        for entry in _scan(top):
            if hidden(entry.name):
                continue
            path = top.rstrip("/") + "/" + entry.name
            kind = _entry_kind(entry)
            if kind == "dir":
                real.append(path)
            elif kind == "linked_dir":
                heapq.heappush(linked, path)
            elif kind == "loop":
                loops.append(path)
            elif kind == "file":
                stat = entry.stat()
                files.append(ListedFile(path, stat.st_size, stat.st_mtime_ns // 1_000_000))
    return sorted(files), sorted(loops)


def _count_files_local(directory: str) -> int:
    return sum(len(names) for _dirpath, _dirs, names in os.walk(directory))  # symlinked directories not followed


def _hidden_folders_local(root_dir: str, hidden: Callable[[str], bool]) -> HiddenFolders:
    folders = [e for e in _scan(root_dir) if hidden(e.name) and _entry_kind(e) in ("dir", "linked_dir")]
    return HiddenFolders(
        tuple(e.name for e in folders), sum(_count_files_local(f"{root_dir.rstrip('/')}/{e.name}") for e in folders)
    )


def _hidden_folders_hadoop(spark, root: str, hidden: Callable[[str], bool]) -> HiddenFolders:
    """One listing of the root and one content summary per hidden folder, through Spark's Hadoop client."""
    fs, path = hadoopfs._fs_path(spark, root)
    names, files = [], 0
    with hadoopfs._hadoop(spark, root, "listing"):
        for status in fs.listStatus(path):
            name = str(status.getPath().getName())
            if hidden(name) and status.isDirectory():
                names.append(name)
                files += int(fs.getContentSummary(status.getPath()).getFileCount())
    return HiddenFolders(tuple(sorted(names)), files)


def list_images(spark, uri: str) -> Listing:
    """Check ``uri`` is a readable folder and list it: on ``file:`` every file (see :func:`_walk_local`), elsewhere only
    the hidden folders below the root (Spark's binaryFile source lists the files; HDFS has symlinks off by default)."""
    tables.check_input(spark, uri, "image folder")
    if not hadoopfs.is_dir(spark, uri):
        raise DataError(f"{uri} is a file; --images must be the root folder of an image-folder tree")
    root = hadoopfs.qualify(spark, uri)
    hidden = _hidden_name_rule(spark)
    root_dir = _local_dir(root)
    if root_dir is None:
        return Listing(root, None, hidden_folders=_hidden_folders_hadoop(spark, root, hidden))
    files, loops = _walk_local(root_dir, hidden)
    return Listing(
        root,
        tuple(f._replace(path="file:" + f.path) for f in files),
        tuple("file:" + p for p in loops),
        _hidden_folders_local(root_dir, hidden),
    )


def _read_local_fn(batch_bytes: int = _READ_BATCH_BYTES):
    """The executor-side reader of listed ``file:`` paths (bounded Arrow batches: images can be large)."""

    def run(batches: Iterator) -> Iterator:
        import pyarrow as pa

        schema = pa.schema(
            [("path", pa.string()), ("length", pa.int64()), ("mtime_ms", pa.int64()), ("content", pa.binary())]
        )
        for batch in batches:
            cols: dict[str, list] = {name: [] for name in schema.names}
            size = 0
            for path, mtime_ms in zip(batch.column("path").to_pylist(), batch.column("mtime_ms").to_pylist()):
                with open(path[len("file:"):], "rb") as fh:
                    data = fh.read()
                for name, value in zip(schema.names, (path, len(data), mtime_ms, data)):
                    cols[name].append(value)
                size += len(data)
                if size >= batch_bytes:
                    yield pa.RecordBatch.from_pydict(cols, schema=schema)
                    cols, size = {name: [] for name in schema.names}, 0
            if cols["path"]:
                yield pa.RecordBatch.from_pydict(cols, schema=schema)

    return run


def _read_listed(spark, files: tuple[ListedFile, ...], partitions: int | None):
    """binaryFile's columns for files the driver listed: the executors read them, ``partitions`` slices (default:
    about 64 MiB of files each, at least one per core)."""
    from pyspark.sql import functions as F

    total = sum(f.length for f in files)
    slices = partitions or max(spark.sparkContext.defaultParallelism, math.ceil(total / _READ_SLICE_BYTES))
    rows = spark.sparkContext.parallelize([(f.path, f.mtime_ms) for f in files], max(1, min(slices, len(files))))
    listed = spark.createDataFrame(rows, "path string, mtime_ms long")
    read = listed.mapInArrow(_read_local_fn(), "path string, length long, mtime_ms long, content binary")
    return read.select("path", F.timestamp_millis("mtime_ms").alias("modificationTime"), "length", "content")


def read_images(spark, uri: str, partitions: int | None = None, listing: Listing | None = None):
    """Every file below ``uri`` (recursive) as Spark's binaryFile columns ``path, modificationTime, length, content``.
    ``listing``: :func:`list_images` of ``uri``, when the caller has it already."""
    listing = listing or list_images(spark, uri)
    if listing.files is not None:
        return _read_listed(spark, listing.files, partitions)
    df = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(uri)
    if partitions is not None:
        df = df.repartition(partitions)
    return df


def spark_listed_files(df) -> list[str]:
    """The files a binaryFile DataFrame lists, in the reader's form (``inputFiles()`` percent-escapes them)."""
    return [reader_form(uri) for uri in df.inputFiles()]


def _listed_rejects(spark, paths: list[str], root: str, reason: str, detail: str):
    """Rejects (in the validated schema) for listed paths that produce no row of their own."""
    rows = []
    for path in sorted(paths):
        rel = relative_path(path, root)
        parts = rel.split("/")
        rows.append((path, rel, parts[0] if len(parts) > 1 else None, None, None, None, reason, detail))
    return spark.createDataFrame(rows, VALIDATED_SCHEMA)


def _unread_files(spark, validated, listed: list[str], root: str):
    """Rows (as rejects) for files the listing found but the binaryFile reader never produced. ``listed``: in the
    reader's form (:func:`spark_listed_files`), so that names with spaces, ``%``, ``#`` or non-ASCII compare equal."""
    listed_df = spark.createDataFrame([(p, relative_path(p, root)) for p in listed], "path string, rel_path string")
    missing = [r["path"] for r in listed_df.join(validated.select("rel_path"), "rel_path", "left_anti").collect()]
    detail = "the file has 0 bytes (listed, but Spark's binaryFile reader skips empty files)"
    return _listed_rejects(spark, missing, root, decode.EMPTY_FILE, detail)


def _loop_rejects(spark, loops: tuple[str, ...], root: str):
    """Rejects for the symlinks :func:`list_images` did not follow (their directory is read once, elsewhere)."""
    detail = "a symlink back to a directory already read (or to itself): not followed, so no file is read twice"
    return _listed_rejects(spark, list(loops), root, decode.SYMLINK_LOOP, detail)


@dataclass(frozen=True)
class IngestResult(tables.StageResult):
    labels: tuple[str, ...] = ()
    label_source: str = ""
    class_counts: dict[str, int] = field(default_factory=dict)
    hidden_folders: HiddenFolders = field(default_factory=HiddenFolders)  # not read: Spark hides their names


def ingest_images(spark, config: IngestConfig, progress: Progress | None = None) -> IngestResult:
    """Read, validate, label and split an image-folder tree; write the images table, its rejects and its meta.
    Its Spark jobs show ``sparkdl ingest: <images> -> <output>`` in the Spark UI (job group ``sparkdl-ingest``)."""
    with job_description(spark, "ingest", f"{config.images_uri} -> {config.output_uri}"):
        return _ingest_images(spark, config, progress)


def _ingest_images(spark, config: IngestConfig, progress: Progress | None) -> IngestResult:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    outputs.check_output(spark, "ingest", config.output_uri, config.overwrite, "table", "images table",
                         inputs=[outputs.Place("image folder", config.images_uri)])
    out = outputs.TableOutput(spark, config.output_uri, "ingest").open()
    root = hadoopfs.qualify(spark, config.images_uri)
    listing = list_images(spark, config.images_uri)
    raw = read_images(spark, config.images_uri, config.partitions, listing)
    say(f"ingest: listing and decoding files below {root}")
    if listing.hidden_folders.names:
        say(f"ingest: hidden folders: {listing.hidden_folders.summary()}")

    validated = raw.select("path", "content").mapInArrow(
        _validate_fn(root, config.seed, tuple(config.split)), VALIDATED_SCHEMA
    )
    if listing.loops:
        validated = validated.unionByName(_loop_rejects(spark, listing.loops, root))
    cached = validated.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        files = len(listing.files) if listing.files is not None else None  # None: Spark's binaryFile lists them
        with stage_progress(spark, "ingest", say, total_rows=files):
            counts, groups = tables.count_rejects(validated, ("split", "class_dir"))
        listed = spark_listed_files(raw) if listing.files is None else [f.path for f in listing.files]
        if len(listed) + len(listing.loops) > counts.rows_in:
            # Spark's file sources skip zero-length files without a word; find them and count them as rejects.
            validated = validated.unionByName(_unread_files(spark, validated, listed, root))
            counts, groups = tables.count_rejects(validated, ("split", "class_dir"))
        if counts.rows_in == 0:
            raise DataError(f"no files found below {root}")
        say(f"ingest: {counts.rows_in} files read, {counts.rejected} rejected {counts.by_reason or ''}".rstrip())
        rejects_at = out.write_rejects(validated)
        out.enforce_rejects(counts, config.max_reject_fraction)

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
            F.col("sha256"),
        )
        say(f"ingest: writing {counts.rows_out} rows, {len(mapping.labels)} classes ({mapping.source}) to {config.output_uri}")
        out.write_table(table)
    except BaseException:
        out.abandon()
        raise
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
        "hidden_folders": listing.hidden_folders.to_json(),
    }
    meta_at = out.finish(meta)
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
        hidden_folders=listing.hidden_folders,
    )
