"""ImageFeaturizer (a pyspark.ml Transformer) and the featurize stage (images table -> features table).

Executor side: ``mapInArrow`` streams Arrow batches of images (encoded bytes, or Spark's image struct from
``spark.read.format("image")``) through a frozen backbone. The backbone is
built once per Python worker process (Spark reuses Python workers, ``spark.python.worker.reuse``) and kept for later
batches, partitions and tasks; torch uses ``spark.task.cpus`` threads so concurrent tasks do not oversubscribe cores.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkdl import params as P
from sparkdl.config import FeaturizeConfig
from sparkdl.data import hadoopfs, outputs, tables
from sparkdl.data.arrow import list_column
from sparkdl.data.decode import ImageDecodeError, decode_image
from sparkdl.data.features import FEATURES_COLUMNS, FEATURES_FORMAT, IMAGES_TYPES
from sparkdl.errors import DataError
from sparkdl.featurize.backbones import LoadedBackbone, check_backbone, get_backbone, list_backbones, load_backbone
from sparkdl.featurize.incremental import ORIGIN_COL, plan_reuse, with_content_hash
from sparkdl.featurize.precision import DEVICES, PRECISIONS, RUNTIMES, Numerics, choose, pick_device
from sparkdl.progress import stage_progress
from sparkdl.session import job_description

Progress = Callable[[str], None]


class _WorkerModels:
    """The one backbone a Python worker holds, keyed by (backbone, weights file identity, random_init, numerics,
    device, threads).

    Deliberately process-wide: this is how "one model per Python worker, reused across tasks" is achieved. Holding
    one entry bounds memory (VGG16 is ~550 MB); asking for another backbone replaces it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._model: LoadedBackbone | None = None
        self.loads = 0

    def get(
        self, backbone: str, weights: str | None, random_init: bool, numerics: Numerics = Numerics(),
        device: str = "cpu", threads: int = 1,
    ) -> LoadedBackbone:  # fmt: skip
        ident = None
        if weights is not None:
            st = os.stat(weights)
            ident = (os.path.abspath(weights), st.st_size, st.st_mtime_ns)
        key = (backbone, ident, random_init, numerics, device, threads)
        with self._lock:
            if self._key != key or self._model is None:
                self._model = None  # free the old one before building the next
                self._model = load_backbone(backbone, weights=weights, random_init=random_init, numerics=numerics,
                                            device=device, threads=threads)  # fmt: skip
                if self._model.notice:
                    print(f"sparkdl featurize: {self._model.notice}", file=sys.stderr, flush=True)
                self._key = key
                self.loads += 1
            return self._model


WORKER_MODELS = _WorkerModels()


def _shipped_weights_path(path: str | None, expected_size: int | None) -> str | None:
    """On an executor: the copy Spark shipped with ``addFile`` if there is one, else the path as given.

    Spark ships a path once per application: a file rewritten in place later in the same session is not shipped
    again. A size that differs from the driver's file is caught here instead of silently using old weights.
    """
    if not path:
        return None
    resolved = path
    try:
        from pyspark import SparkFiles

        shipped = SparkFiles.get(os.path.basename(path))
        if os.path.isfile(shipped):
            resolved = shipped
    except Exception:  # SparkFiles has no root outside a Spark job
        pass
    if expected_size is not None and os.path.getsize(resolved) != expected_size:
        raise DataError(
            f"the weights file {path} changed after Spark shipped it to the executors ({os.path.getsize(resolved)} "
            f"bytes there, {expected_size} on the driver): write new weights under a new file name or restart the session"
        )
    return resolved


def use_task_threads(threads: int = 0) -> int:
    """Executor side: torch uses ``threads`` threads (0: ``spark.task.cpus`` of the running task, 1 outside a task),
    so concurrent tasks do not oversubscribe the cores. Returns the count."""
    import torch

    if threads <= 0:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        threads = max(1, ctx.cpus() if ctx is not None else 1)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def featurize_arrow_batches(
    batches: Iterator,
    *,
    backbone: str,
    weights: str | None,
    random_init: bool,
    batch_size: int,
    threads: int,
    weights_size: int | None = None,
    input_col: str,
    output_col: str,
    error_col: str,
    handle_invalid: str = "keep",
    keep_input: bool = False,
    numerics: dict | None = None,
    device: str = "auto",
    fallback_rows=None,
) -> Iterator:
    """Images (encoded bytes or Spark's image struct) in Arrow record batches -> the same rows (without
    ``input_col`` unless ``keep_input``), plus features and errors. ``handle_invalid``: an image that does not
    decode gets null features and its error ("keep"), fails the task ("error") or drops its row ("skip").
    ``numerics``: the driver's resolved plan (``Numerics.to_json``); rows this host computes otherwise (a CPU without
    bf16) are added to the ``fallback_rows`` accumulator when one is given."""
    import numpy as np
    import pyarrow as pa
    import torch

    threads = use_task_threads(threads)
    plan = Numerics.from_json(numerics)
    model = None  # built at the first row: an empty partition (an incremental run's) loads nothing

    for batch in batches:
        if batch.num_rows and model is None:
            model = WORKER_MODELS.get(backbone, _shipped_weights_path(weights, weights_size), random_init, plan,
                                      pick_device(device), threads)  # fmt: skip
            fell_back = model.numerics.precision != plan.precision
            prep = model.preprocess
            dim = model.spec.feature_dim
        keep = [name for name in batch.schema.names if keep_input or name != input_col]
        images = batch.column(input_col)
        for start in range(0, batch.num_rows, batch_size):
            n = min(batch_size, batch.num_rows - start)
            arrays, good, errors = [], [], [None] * n
            for i in range(n):
                try:
                    img = decode_image(images[start + i].as_py(), draft_size=prep.resize)
                    arrays.append(prep.to_array(img))
                    good.append(i)
                except ImageDecodeError as exc:
                    if handle_invalid == "error":
                        raise DataError(f"row {start + i} of a batch: {exc}") from None
                    errors[i] = f"{exc.reason}: {exc.detail}"
            sliced = batch.slice(start, n)
            if handle_invalid == "skip" and len(good) < n:
                sliced, n, errors = sliced.take(pa.array(good, type=pa.int64())), len(good), [None] * len(good)
                good = list(range(n))
            if n == 0:
                continue
            values = np.zeros((n, dim), dtype=np.float32)
            if arrays:
                out = model(torch.from_numpy(np.stack(arrays)))
                values[good] = out.numpy()
                if fell_back and fallback_rows is not None:
                    fallback_rows.add(len(arrays))
            valid = np.zeros(n, dtype=bool)
            valid[good] = True
            features = list_column(values, valid)
            columns = [sliced.column(name) for name in keep] + [features, pa.array(errors, type=pa.string())]
            fields = [batch.schema.field(name) for name in keep] + [
                pa.field(output_col, pa.list_(pa.float32())),
                pa.field(error_col, pa.string()),
            ]
            yield pa.RecordBatch.from_arrays(columns, schema=pa.schema(fields))


HANDLE_INVALID = ("keep", "error", "skip")
IMAGE_STRUCT_FIELDS = {"origin": "string", "height": "int", "width": "int", "nChannels": "int", "mode": "int", "data": "binary"}
IMAGE_INPUT_TYPES = "binary (encoded image bytes, e.g. binaryFile's content) or Spark's image struct (spark.read.format('image'))"


def is_image_input(data_type) -> bool:
    """A Spark type images can come in: binary (encoded bytes) or Spark's image struct (its six fields, any order)."""
    from pyspark.sql.types import BinaryType, StructType

    if isinstance(data_type, BinaryType):
        return True
    return isinstance(data_type, StructType) and {
        f.name: f.dataType.simpleString() for f in data_type.fields
    } == IMAGE_STRUCT_FIELDS


def check_image_column(df, column: str, what: str, taker: str) -> None:
    """Refuse a missing column or one that holds no images, in one line naming the column and its type."""
    if column not in df.columns:
        raise DataError(f"{what} {column!r} not found (columns: {df.columns})")
    data_type = df.schema[column].dataType
    if not is_image_input(data_type):
        raise DataError(f"{what} {column!r} has type {data_type.simpleString()}; {taker} takes {IMAGE_INPUT_TYPES}")


@P.with_accessors
class ImageFeaturizer(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable, DefaultParamsWritable):
    """Images (binary column of encoded bytes, or Spark's image struct) -> ``array<float>`` features from a frozen
    pretrained backbone.

    Rows whose image does not decode get null features and ``errorCol`` = "<reason>: <detail>"
    (``handleInvalid="keep"``, the default), fail the job ("error") or are dropped ("skip"). The input column is
    kept in the output unless ``keepInputCol=False``.
    """

    backbone = P.param("backbone", "registered backbone name", P.one_of("backbone", list_backbones))
    weightsPath = P.param(
        "weightsPath", "weights file readable on the driver ('' = embedded default)", TypeConverters.toString
    )
    randomInit = P.param("randomInit", "seeded random weights (timing runs only)", P.boolean("randomInit"))
    batchSize = P.param("batchSize", "images per forward pass (>= 1)", P.int_at_least("batchSize", 1))
    threadsPerTask = P.param(
        "threadsPerTask", "torch threads per task (0 = spark.task.cpus)", P.int_at_least("threadsPerTask", 0)
    )
    errorCol = P.param("errorCol", "column for per-row decode errors", P.column_name("errorCol"))
    handleInvalid = P.param(
        "handleInvalid",
        "undecodable image: 'keep' (null features + errorCol), 'error' (fail) or 'skip' (drop the row)",
        P.one_of("handleInvalid", HANDLE_INVALID),
    )
    keepInputCol = P.param("keepInputCol", "keep the input column in the output", P.boolean("keepInputCol"))
    precision = P.param(
        "precision", "auto (the backbone's measured fast and faithful choice), fp32 or bf16", P.one_of("precision", PRECISIONS)
    )
    runtime = P.param("runtime", "auto, torch or onnxruntime (fp32 only)", P.one_of("runtime", RUNTIMES))
    device = P.param("device", "auto (the GPU Spark assigned the task, else CPU), cpu or cuda", P.one_of("device", DEVICES))

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str = "image",
        outputCol: str = "features",
        backbone: str = "efficientnet_lite0",
        weightsPath: str = "",
        randomInit: bool = False,
        batchSize: int = 32,
        threadsPerTask: int = 0,
        errorCol: str = "featurize_error",
        handleInvalid: str = "keep",
        keepInputCol: bool = True,
        precision: str = "auto",
        runtime: str = "auto",
        device: str = "auto",
    ) -> None:
        super().__init__()
        self._setDefault(
            inputCol="image",
            outputCol="features",
            backbone="efficientnet_lite0",
            weightsPath="",
            randomInit=False,
            batchSize=32,
            threadsPerTask=0,
            errorCol="featurize_error",
            handleInvalid="keep",
            keepInputCol=True,
            precision="auto",
            runtime="auto",
            device="auto",
        )
        self._set(**self._input_kwargs)

    def numerics(self) -> Numerics:
        """What ``precision`` and ``runtime`` resolve to for this backbone (what every executor runs)."""
        return choose(get_backbone(self.getBackbone()).numerics, self.getPrecision(), self.getRuntime())

    def _output_fields(self, dataset) -> list:
        """The input's fields (less ``inputCol`` unless kept) + outputCol + errorCol, refusing a name clash."""
        from pyspark.sql.types import ArrayType, FloatType, StringType, StructField

        in_col, out_col, err_col = self.getInputCol(), self.getOutputCol(), self.getErrorCol()
        fields = [f for f in dataset.schema.fields if self.getKeepInputCol() or f.name != in_col]
        taken = {f.name for f in fields}
        for what, name in (("outputCol", out_col), ("errorCol", err_col)):
            if name in taken:
                raise DataError(f"{what} {name!r} is already a column of the output: set another {what}")
            taken.add(name)
        return fields + [StructField(out_col, ArrayType(FloatType())), StructField(err_col, StringType())]

    def _transform(self, dataset):
        return self._featurize(dataset)

    def _featurize(self, dataset, fallback_rows=None):
        """``transform``; ``fallback_rows``: an accumulator counting rows a host computed in fp32 for lack of bf16."""
        from pyspark.sql.types import StructType

        check_image_column(dataset, self.getInputCol(), "inputCol", "ImageFeaturizer")
        schema = StructType(self._output_fields(dataset))
        weights = self.getWeightsPath() or None
        if weights is not None:
            if not os.path.isfile(weights):
                raise DataError(f"weights file {weights} does not exist on the driver")
            dataset.sparkSession.sparkContext.addFile(weights)  # shipped to every executor
        fn = functools.partial(
            featurize_arrow_batches,
            backbone=self.getBackbone(),
            weights=weights,
            weights_size=os.path.getsize(weights) if weights else None,
            random_init=self.getRandomInit(),
            batch_size=self.getBatchSize(),
            threads=self.getThreadsPerTask(),
            input_col=self.getInputCol(),
            output_col=self.getOutputCol(),
            error_col=self.getErrorCol(),
            handle_invalid=self.getHandleInvalid(),
            keep_input=self.getKeepInputCol(),
            numerics=self.numerics().to_json(),
            device=self.getDevice(),
            fallback_rows=fallback_rows,
        )
        return dataset.mapInArrow(fn, schema)


@dataclass(frozen=True)
class FeaturizeResult(tables.StageResult):
    backbone: dict = field(default_factory=dict)
    partitions: int = 0
    incremental: dict = field(default_factory=dict)  # enabled, reused, computed (new + changed), dropped


def plan_partitions(rows: int, parallelism: int, max_rows_per_partition: int) -> int:
    """Whole waves of equal tasks: a multiple of the parallelism, each partition at most ``max_rows_per_partition``."""
    parallelism = max(1, parallelism)
    waves = max(1, -(-rows // (parallelism * max_rows_per_partition)))
    return waves * parallelism


def _labels_of(spark, images, input_uri: str, say: Progress) -> dict:
    meta = tables.read_meta(spark, input_uri, required=False)  # a torn table/meta pair is refused here
    if meta is not None:
        return {k: meta[k] for k in ("labels", "class_folders", "label_source") if k in meta}
    say(f"featurize: {input_uri} has no sparkdl meta; deriving the label mapping from the table")
    pairs = images.select("label_index", "label").distinct().collect()
    by_index: dict[int, set] = {}
    for row in pairs:
        by_index.setdefault(int(row["label_index"]), set()).add(row["label"])
    clashes = {i: sorted(v) for i, v in by_index.items() if len(v) > 1}
    if clashes:
        raise DataError(f"{input_uri}: label_index values map to several labels: {clashes}")
    if by_index and sorted(by_index) != list(range(max(by_index) + 1)):
        say("featurize: label_index values are not dense 0..K-1; unused indices get empty labels")
    n = max(by_index) + 1 if by_index else 0
    return {"labels": [next(iter(by_index[i])) if i in by_index else "" for i in range(n)], "label_source": "table"}


def featurize_images(spark, config: FeaturizeConfig, progress: Progress | None = None) -> FeaturizeResult:
    """Images table -> features table (+ rejects + meta), with the backbone checked on the driver first.

    ``config.weights`` may be a local path or a Hadoop URI (copied to the driver once, then shipped by Spark)."""
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    reads = outputs.table_places("images table", config.input_uri)
    if config.weights:
        reads.append(outputs.Place("weights file", config.weights))
    with job_description(spark, "featurize", f"{config.backbone} on {config.input_uri}"):
        outputs.check_output(spark, "featurize", config.output_uri, config.overwrite or config.incremental, "table",
                             "features table", inputs=reads)  # fmt: skip
        tables.check_input(spark, config.input_uri, "images table")
        if config.weights and not hadoopfs.is_local(config.weights):
            # weights on the cluster's file system: one copy on the driver, which Spark then ships to the executors
            tables.check_input(spark, config.weights, "weights file")
            say(f"featurize: copying {config.weights} to the driver")
            with hadoopfs.local_copy(spark, config.weights, prefix="sparkdl-weights-") as local:
                return _featurize(spark, config, str(local), start, say)
        local = str(hadoopfs.local_path(config.weights)) if config.weights else None
        return _featurize(spark, config, local, start, say)


def _featurize(spark, config: FeaturizeConfig, weights: str | None, start: float, say: Progress) -> FeaturizeResult:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    images = spark.read.parquet(config.input_uri)
    tables.check_columns(images, IMAGES_TYPES, "images table (run `sparkdl ingest` first)", config.input_uri)
    labels = _labels_of(spark, images, config.input_uri, say)

    backbone_info = check_backbone(config.backbone, weights=weights, random_init=config.random_init)
    if weights:
        from sparkdl.featurize.weights import file_digest

        backbone_info["weights"] = config.weights  # the URI the user gave, not the driver's temporary copy
        backbone_info["weights_sha256"] = file_digest(weights)
    elif backbone_info["weights"].startswith("package:"):
        from sparkdl.featurize.backbones import get_backbone
        from sparkdl.featurize.weights import file_digest

        backbone_info["weights_sha256"] = file_digest(get_backbone(config.backbone).default_weights())
    say(f"featurize: backbone {config.backbone} ({backbone_info['feature_dim']}-d, weights {backbone_info['weights']})")

    featurizer = ImageFeaturizer(
        inputCol="image",
        outputCol="features",
        backbone=config.backbone,
        weightsPath=weights or "",
        randomInit=config.random_init,
        batchSize=config.batch_size,
        threadsPerTask=config.threads_per_task or 0,
        errorCol="featurize_error",
        keepInputCol=False,  # the features table holds no image bytes
        precision=config.precision,
        runtime=config.runtime,
        device=config.device,
    )
    plan = featurizer.numerics()
    backbone_info["numerics"] = {**plan.to_json(), "device": config.device}
    say(f"featurize: computing {plan.describe()} (--precision {config.precision}, --runtime {config.runtime}, "
        f"--device {config.device})")  # fmt: skip
    images = with_content_hash(images, say)
    reuse = plan_reuse(spark, images, config.output_uri, backbone_info, say) if config.incremental else None
    todo = reuse.to_compute if reuse else images.withColumn(ORIGIN_COL, F.lit("new"))

    # Always rebalance: the backbone costs ~1000x more per row than moving the row, and file splits can leave a
    # partition empty (one Parquet row group read by two byte-range splits gives one task all the rows).
    if reuse:
        rows = reuse.to_compute_rows
    else:
        rows = None if config.partitions else todo.count()  # no count job only for progress: tasks shown instead
    target = config.partitions or plan_partitions(rows, spark.sparkContext.defaultParallelism, config.max_rows_per_partition)
    if reuse:
        say(f"featurize --incremental: {rows} images to compute, the rest reused; "
            f"{reuse.dropped} rows of the previous table dropped (their images are gone)")  # fmt: skip
    fallback_rows = spark.sparkContext.accumulator(0)
    out = featurizer._featurize(todo.repartition(target), fallback_rows=fallback_rows)
    out = out.withColumn(tables.REASON_COL, F.substring_index("featurize_error", ":", 1)).withColumn(
        tables.DETAIL_COL, F.col("featurize_error")
    )
    cached = out.persist(StorageLevel.MEMORY_AND_DISK)  # the computed rows only: reused ones are read once, by the write
    sink = outputs.TableOutput(spark, config.output_uri, "featurize").open()
    try:
        say(f"featurize: {target} partitions, batch {config.batch_size}; running the backbone")
        with stage_progress(spark, "featurize", say, total_rows=rows, tasks=target):
            counts, groups = tables.count_rejects(cached, ("split", ORIGIN_COL))
        if reuse:  # the reused rows, counted by the planning job
            counts = tables.RejectCounts(counts.rows_in + sum(reuse.reused_splits.values()), counts.by_reason)
            groups += [(None, (split, "reused"), n) for split, n in reuse.reused_splits.items()]
        if counts.rows_in == 0:
            raise DataError(f"{config.input_uri} has no rows")
        say(f"featurize: {counts.rows_in} images, {counts.rejected} rejected {counts.by_reason or ''}".rstrip())
        rejects_at = sink.write_rejects(cached)
        sink.enforce_rejects(counts, config.max_reject_fraction)
        say(f"featurize: writing {counts.rows_out} rows to {config.output_uri}")
        table = cached.filter(F.col(tables.REASON_COL).isNull()).select(*FEATURES_COLUMNS)
        sink.write_table(table.unionByName(reuse.reused.select(*FEATURES_COLUMNS)) if reuse else table)
    except BaseException:
        sink.abandon()
        raise
    finally:
        cached.unpersist()
    seconds = time.perf_counter() - start
    split_counts = tables.kept_counts(groups, 0)
    backbone_info["numerics"]["fallback_rows"] = int(fallback_rows.value)
    origins = {origin: sum(n for _r, key, n in groups if key[1] == origin) for origin in ("new", "changed", "reused")}
    incremental = {"enabled": config.incremental, "reused": origins["reused"], "computed": origins["new"] + origins["changed"],
                   "new": origins["new"], "changed": origins["changed"], "dropped": reuse.dropped if reuse else 0,
                   "previous_run_id": reuse.previous_run_id if reuse else None}  # fmt: skip
    if fallback_rows.value:
        say(f"featurize: {fallback_rows.value} rows were computed in fp32, not {plan.precision}: their hosts' CPUs "
            "have no bf16 instructions (see the executors' stderr)")  # fmt: skip
    meta = {
        "format": FEATURES_FORMAT,
        "stage": "featurize",
        "source": config.input_uri,
        **labels,
        "backbone": backbone_info,
        "feature_dim": backbone_info["feature_dim"],
        "rows_in": counts.rows_in,
        "rows_out": counts.rows_out,
        "rejects": counts.by_reason,
        "split_counts": split_counts,
        "incremental": incremental,
        "seconds": round(seconds, 3),
    }
    meta_at = sink.finish(meta)
    return FeaturizeResult(
        output_uri=config.output_uri,
        rejects_uri=rejects_at,
        meta_uri=meta_at,
        rows_in=counts.rows_in,
        rows_out=counts.rows_out,
        rejects=counts.by_reason,
        split_counts=split_counts,
        backbone=backbone_info,
        partitions=target,
        incremental=incremental,
        seconds=seconds,
    )
