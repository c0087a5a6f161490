"""``sparkdl predict``: a model bundle over images on Spark, batch or streaming.

One ``mapInArrow`` pass decodes each image, runs the backbone and the head (the bundle's :class:`ImageClassifier`,
built once per Python worker) and writes::

    path, [label, label_index, split,] prediction string, prediction_index int, probability float,
    top_k array<struct<label string, probability float>>

Batch: a table + ``<name>.rejects.parquet`` + ``<name>.meta.json`` like every stage (staged, swapped in when
complete; more than ``max_reject_fraction`` rejects fails the stage). Streaming: Structured Streaming over a folder
that receives new images (``binaryFile``) or a table another job appends to, the same function per micro-batch, a
file sink with a checkpoint (each image predicted exactly once across restarts); rejected images are rows of the
output with ``reject_reason`` / ``reject_detail`` set, never dropped.
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from sparkdl.config import PredictConfig
from sparkdl.data import hadoopfs, outputs, tables
from sparkdl.errors import DataError
from sparkdl.featurize.featurizer import _shipped_weights_path, check_image_column, plan_partitions, use_task_threads
from sparkdl.infer.classifier import ClassifierSpec, ImageClassifier, resolve_bundle
from sparkdl.progress import stage_progress

Progress = Callable[[str], None]
PREDICTIONS_FORMAT = "sparkdl.predictions/1"
TOP_K_TYPE = "array<struct<label:string,probability:float>>"
PREDICTION_FIELDS = (("prediction", "string"), ("prediction_index", "int"), ("probability", "float"), ("top_k", TOP_K_TYPE))
BINARY_FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
LABEL_TYPES = {"label": ("string",), "label_index": ("int", "bigint"), "split": ("string",)}


class _WorkerClassifiers:
    """The one classifier a Python worker holds (keyed by the bundle's sha256 and the weights file's identity),
    reused across batches, partitions, tasks and micro-batches. Deliberately process-wide, like the featurizer's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._model: ImageClassifier | None = None

    def get(self, spec: ClassifierSpec, weights: str | None) -> ImageClassifier:
        ident = None
        if weights is not None:
            st = os.stat(weights)
            ident = (os.path.abspath(weights), st.st_size, st.st_mtime_ns)
        key = (spec.model_sha256, ident)
        with self._lock:
            if self._key != key or self._model is None:
                self._model = None
                self._model = ImageClassifier(spec, weights)
                self._key = key
            return self._model


WORKER_CLASSIFIERS = _WorkerClassifiers()


def predict_arrow_batches(batches: Iterator, *, spec_bc, weights: str | None, weights_size: int | None,
                          batch_size: int, threads: int, top_k: int, image_col: str) -> Iterator:  # fmt: skip
    """Executor side: rows with images (encoded bytes or Spark's image struct) -> the same rows without ``image_col``,
    plus the prediction columns
    and ``reject_reason`` / ``reject_detail`` (set, with null predictions, for an image that does not decode)."""
    import pyarrow as pa

    use_task_threads(threads)
    spec: ClassifierSpec = spec_bc.value
    model = WORKER_CLASSIFIERS.get(spec, _shipped_weights_path(weights, weights_size))
    k = max(1, min(top_k, spec.n_classes))
    top_type = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))
    for batch in batches:
        keep = [name for name in batch.schema.names if name != image_col]
        images = batch.column(image_col)
        for start in range(0, batch.num_rows, batch_size):
            n = min(batch_size, batch.num_rows - start)
            probs, rejects = model.score([images[start + i].as_py() for i in range(n)])
            cols: dict[str, list] = {"prediction": [None] * n, "prediction_index": [None] * n, "probability": [None] * n,
                                     "top_k": [None] * n, tables.REASON_COL: [None] * n, tables.DETAIL_COL: [None] * n}  # fmt: skip
            for i, (p, reject) in enumerate(zip(probs, rejects)):
                if reject is not None:
                    cols[tables.REASON_COL][i], cols[tables.DETAIL_COL][i] = reject.reason, reject.detail
                    continue
                pred = model.prediction(p, k)
                cols["prediction"][i], cols["prediction_index"][i], cols["probability"][i] = pred.label, pred.index, pred.probability
                cols["top_k"][i] = [{"label": lab, "probability": prob} for lab, prob in pred.top_k]
            sliced = batch.slice(start, n)
            arrays = [sliced.column(name) for name in keep] + [
                pa.array(cols["prediction"], pa.string()), pa.array(cols["prediction_index"], pa.int32()),
                pa.array(cols["probability"], pa.float32()), pa.array(cols["top_k"], top_type),
                pa.array(cols[tables.REASON_COL], pa.string()), pa.array(cols[tables.DETAIL_COL], pa.string()),
            ]  # fmt: skip
            fields = [batch.schema.field(name) for name in keep] + [
                pa.field("prediction", pa.string()), pa.field("prediction_index", pa.int32()),
                pa.field("probability", pa.float32()), pa.field("top_k", top_type),
                pa.field(tables.REASON_COL, pa.string()), pa.field(tables.DETAIL_COL, pa.string()),
            ]  # fmt: skip
            yield pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


# ------------------------------------------------------------------------------------------------- the driver side
_SHIP_DIR = Path(tempfile.gettempdir()) / f"sparkdl-ship-{os.getpid()}"


def _ship_dir() -> Path:
    """Where this driver keeps the backbone files it ships with ``addFile``: one stable path per file for the
    process' life (Spark refuses the same name from two paths), removed at exit."""
    if not _SHIP_DIR.exists():
        _SHIP_DIR.mkdir(parents=True)
        atexit.register(shutil.rmtree, _SHIP_DIR, True)
    return _SHIP_DIR


@dataclass
class ShippedModel:
    """A bundle loaded on the driver, its backbone weights file registered with ``addFile``."""

    spec: ClassifierSpec
    weights: str | None  # the driver's path of the shipped file (executors resolve it through SparkFiles)
    weights_size: int | None
    scratch: Path

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def ship_model(spark, model_uri: str) -> ShippedModel:
    """Load and check a bundle (local or Hadoop URI) on the driver and ship its backbone to the executors."""
    if not hadoopfs.is_local(model_uri):
        tables.check_input(spark, model_uri, "model")
    spec, scratch = resolve_bundle(model_uri, spark)
    try:
        weights = size = None
        if spec.backbone.weights is not None:
            source = Path(spec.backbone.weights)
            shipped = _ship_dir() / f"{spec.model_sha256[:16]}-{source.name}"
            if not shipped.exists():
                tmp = shipped.with_name(shipped.name + ".partial")
                tmp.unlink(missing_ok=True)
                try:
                    os.link(source, tmp)  # no copy of a 528 MB VGG16 file when both are on one file system
                except OSError:
                    shutil.copyfile(source, tmp)
                tmp.rename(shipped)
            spark.sparkContext.addFile(str(shipped))
            weights, size = str(shipped), shipped.stat().st_size
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return ShippedModel(spec, weights, size, scratch)


def _input_frame(spark, config: PredictConfig, stream: bool):
    """``path, image`` (+ ``label, label_index, split`` when the input has them) and, for a folder outside the
    driver's disk, the listed paths (to count empty files Spark's binaryFile reader skips)."""
    from pyspark.sql import functions as F

    if config.images_uri is not None:
        if stream:
            reader = (spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA)
                      .option("recursiveFileLookup", "true"))  # fmt: skip
            if config.max_files_per_trigger:
                reader = reader.option("maxFilesPerTrigger", config.max_files_per_trigger)
            return reader.load(config.images_uri).select("path", F.col("content").alias("image")), None
        from sparkdl.data.images import list_images, read_images, spark_listed_files

        listing = list_images(spark, config.images_uri)
        raw = read_images(spark, config.images_uri, None, listing)
        listed = spark_listed_files(raw) if listing.files is None else None
        return raw.select("path", F.col("content").alias("image")), listed
    tables.check_input(spark, config.table_uri, "images table")
    static = spark.read.parquet(config.table_uri)
    tables.check_columns(static, {"path": ("string",), "image": ("binary",)}, "images table", config.table_uri)
    tables.read_meta(spark, config.table_uri, required=False)  # a torn table/meta set is refused here
    present = {f.name: f.dataType.simpleString() for f in static.schema.fields}
    extra = [c for c, ok in LABEL_TYPES.items() if present.get(c) in ok]
    if stream:
        reader = spark.readStream.schema(static.schema)
        if config.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", config.max_files_per_trigger)
        static = reader.parquet(config.table_uri)
    return static.select("path", *extra, "image"), None


def predict_frame(df, shipped: ShippedModel, top_k: int = 5, batch_size: int = 32, threads_per_task: int | None = None):
    """A DataFrame with ``path string`` and ``image`` (binary encoded bytes, or Spark's image struct from
    ``spark.read.format("image")``; any other columns are kept), batch or streaming -> the prediction columns (and
    ``reject_reason`` / ``reject_detail``) instead of ``image``. An image struct with no ``path`` column gives
    ``path`` = its ``origin``. Returns (DataFrame, the broadcast spec to destroy when done). What ``sparkdl predict``
    runs; usable on any source (Kafka: README)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    check_image_column(df, "image", "column", "predict_frame")
    if "path" not in df.columns and isinstance(df.schema["image"].dataType, StructType):
        df = df.select(F.col("image.origin").alias("path"), "*")
    spark = df.sparkSession
    spec_bc = spark.sparkContext.broadcast(shipped.spec)
    fn = functools.partial(
        predict_arrow_batches, spec_bc=spec_bc, weights=shipped.weights, weights_size=shipped.weights_size,
        batch_size=batch_size, threads=threads_per_task or 0, top_k=top_k, image_col="image",
    )  # fmt: skip
    kept = [f"`{f.name}` {f.dataType.simpleString()}" for f in df.schema.fields if f.name != "image"]
    pred = [f"{n} {t}" for n, t in PREDICTION_FIELDS] + [f"{tables.REASON_COL} string", f"{tables.DETAIL_COL} string"]
    return df.mapInArrow(fn, ", ".join(kept + pred)), spec_bc


def _predicted(df, shipped: ShippedModel, config: PredictConfig):
    return predict_frame(df, shipped, config.top_k, config.batch_size, config.threads_per_task)


@dataclass(frozen=True)
class PredictResult(tables.StageResult):
    model_sha256: str = ""
    labels: tuple[str, ...] = ()
    accuracy: dict[str, float] = field(default_factory=dict)  # with labels in the input: overall and per split
    partitions: int = 0


def _accuracy(kept) -> dict[str, float]:
    from pyspark.sql import functions as F

    if "label" not in kept.columns:
        return {}
    hit = (F.col("prediction") == F.col("label")).cast("long")
    keys = ["split"] if "split" in kept.columns else []
    rows = kept.groupBy(*keys).agg(F.sum(hit).alias("hits"), F.count(F.lit(1)).alias("n")).collect()
    n, hits = sum(r["n"] for r in rows), sum(r["hits"] or 0 for r in rows)
    out = {"all": hits / n} if n else {}
    for r in rows:
        if keys and r["split"] is not None and r["n"]:
            out[r["split"]] = (r["hits"] or 0) / r["n"]
    return out


def _unread_rejects(spark, predicted, listed: list[str]):
    """Empty files Spark's binaryFile reader skipped on a cluster file system, as rejects (like ingest)."""
    from pyspark.sql import functions as F

    listed_df = spark.createDataFrame([(p,) for p in listed], "path string")
    missing = listed_df.join(predicted.select("path"), "path", "left_anti")
    row = [F.lit(None).cast(t).alias(n) for n, t in PREDICTION_FIELDS]
    cols = {c: F.lit(None).cast(predicted.schema[c].dataType) for c in predicted.columns if c not in
            {"path", *dict(PREDICTION_FIELDS), tables.REASON_COL, tables.DETAIL_COL}}  # fmt: skip
    detail = "the file has 0 bytes (listed, but Spark's binaryFile reader skips empty files)"
    return missing.select(
        "path", *[v.alias(k) for k, v in cols.items()], *row,
        F.lit("empty_file").alias(tables.REASON_COL), F.lit(detail).alias(tables.DETAIL_COL),
    ).select(*predicted.columns)  # fmt: skip


def predict_images(spark, config: PredictConfig, progress: Progress | None = None) -> PredictResult:
    """Batch prediction: a predictions table (+ rejects + meta), written complete or not at all. Its Spark jobs
    show ``sparkdl predict: <model> on <input>`` in the Spark UI (job group ``sparkdl-predict``)."""
    from sparkdl.session import job_description

    with job_description(spark, "predict", f"{config.model_uri} on {config.images_uri or config.table_uri}"):
        return _predict_images(spark, config, progress)


def _predict_images(spark, config: PredictConfig, progress: Progress | None) -> PredictResult:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    if config.stream:
        raise DataError("predict_images is the batch path: use start_stream for --stream")
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    source = config.images_uri or config.table_uri
    reads = [outputs.Place("model", config.model_uri)]
    reads += [outputs.Place("image folder", config.images_uri)] if config.images_uri else outputs.table_places("images table", config.table_uri)
    outputs.check_output(spark, "predict", config.output_uri, config.overwrite, "table", "predictions table", inputs=reads)
    shipped = ship_model(spark, config.model_uri)
    spec = shipped.spec
    say(f"predict: model {spec.model_sha256[:12]} ({spec.backbone.name} -> {spec.n_classes} classes, backbone {spec.info.get('carried')})")
    sink = outputs.TableOutput(spark, config.output_uri, "predict").open()
    spec_bc = None
    try:
        df, listed = _input_frame(spark, config, stream=False)
        rows = None if config.partitions else df.count()  # no count job only for progress: tasks shown instead
        target = config.partitions or plan_partitions(rows, spark.sparkContext.defaultParallelism, config.max_rows_per_partition)
        predicted, spec_bc = _predicted(df.repartition(target), shipped, config)
        if listed is not None:
            predicted = predicted.unionByName(_unread_rejects(spark, predicted, listed))
        cached = predicted.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            say(f"predict: {target} partitions, batch {config.batch_size}; running the backbone and the head")
            keys = ("split",) if "split" in cached.columns else ()
            with stage_progress(spark, "predict", say, total_rows=rows, tasks=target):
                counts, groups = tables.count_rejects(cached, keys)
            if counts.rows_in == 0:
                raise DataError(f"{source} has no images")
            say(f"predict: {counts.rows_in} images, {counts.rejected} rejected {counts.by_reason or ''}".rstrip())
            rejects_at = sink.write_rejects(cached)
            sink.enforce_rejects(counts, config.max_reject_fraction)
            kept = cached.filter(F.col(tables.REASON_COL).isNull()).drop(tables.REASON_COL, tables.DETAIL_COL)
            accuracy = _accuracy(kept)
            say(f"predict: writing {counts.rows_out} rows to {config.output_uri}")
            sink.write_table(kept)
        finally:
            cached.unpersist()
    except BaseException:
        sink.abandon()
        raise
    finally:
        if spec_bc is not None:
            spec_bc.destroy()
        shipped.close()
    split_counts = tables.kept_counts(groups, 0) if keys else {}
    seconds = time.perf_counter() - start
    meta = {
        "format": PREDICTIONS_FORMAT, "stage": "predict", "source": source, "model": config.model_uri,
        "model_sha256": spec.model_sha256, "backbone": spec.info.get("backbone", {}), "labels": list(spec.labels),
        "top_k": min(config.top_k, spec.n_classes), "rows_in": counts.rows_in, "rows_out": counts.rows_out,
        "rejects": counts.by_reason, "split_counts": split_counts, "accuracy": accuracy, "seconds": round(seconds, 3),
    }  # fmt: skip
    meta_at = sink.finish(meta)
    return PredictResult(
        output_uri=config.output_uri, rejects_uri=rejects_at, meta_uri=meta_at, rows_in=counts.rows_in,
        rows_out=counts.rows_out, rejects=counts.by_reason, split_counts=split_counts, seconds=seconds,
        model_sha256=spec.model_sha256, labels=spec.labels, accuracy=accuracy, partitions=target,
    )  # fmt: skip


@dataclass
class StreamHandle:
    """A running streaming prediction: ``query`` is Spark's ``StreamingQuery``; ``stop()`` ends it cleanly."""

    query: object
    shipped: ShippedModel
    spec_bc: object

    def await_termination(self, timeout_s: float | None = None) -> bool:
        return bool(self.query.awaitTermination(timeout_s) if timeout_s is not None else self.query.awaitTermination() or True)

    def stop(self) -> None:
        try:
            self.query.stop()
        finally:
            self.shipped.close()


def start_stream(spark, config: PredictConfig, progress: Progress | None = None) -> StreamHandle:
    """Streaming prediction: a file sink with ``config.checkpoint_uri``; each image predicted exactly once across
    restarts (Spark's file source log + the sink's ``_spark_metadata`` log). ``trigger`` None = available-now."""
    say = progress or (lambda _msg: None)
    if not config.stream:
        raise DataError("start_stream needs config.stream = True")
    reads = [outputs.Place("model", config.model_uri)]
    reads += [outputs.Place("image folder", config.images_uri)] if config.images_uri else outputs.table_places("images table", config.table_uri)
    places = [outputs.Place("predictions table", config.output_uri), outputs.Place("checkpoint", config.checkpoint_uri)]
    outputs.check_disjoint(spark, "predict", reads, places)
    outputs.check_disjoint(spark, "predict", [places[0]], [places[1]])
    for place in places:
        hadoopfs.check_writable(spark, place.uri, place.what, overwrite=True)
    if config.images_uri:
        tables.check_input(spark, config.images_uri, "image folder")
    shipped = ship_model(spark, config.model_uri)
    try:
        df, _ = _input_frame(spark, config, stream=True)
        predicted, spec_bc = _predicted(df, shipped, config)
        writer = (predicted.writeStream.format("parquet").outputMode("append")
                  .option("checkpointLocation", config.checkpoint_uri).option("path", config.output_uri))  # fmt: skip
        writer = writer.trigger(availableNow=True) if config.trigger is None else writer.trigger(processingTime=config.trigger)
        query = writer.queryName(f"sparkdl-predict-{shipped.spec.model_sha256[:8]}").start()
    except BaseException:
        shipped.close()
        raise
    say(f"predict: streaming {config.images_uri or config.table_uri} -> {config.output_uri} "
        f"({'available-now' if config.trigger is None else 'every ' + config.trigger}; checkpoint {config.checkpoint_uri})")  # fmt: skip
    return StreamHandle(query, shipped, spec_bc)
