"""``ImageClassifierModel``: images -> labels with a self-contained model bundle (backbone + head), as a Spark ML
Transformer (the Spark ML face of :class:`sparkdl.infer.classifier.ImageClassifier`).

    model = ImageClassifierModel.fromBundle("hdfs:///models/caltech")     # what `sparkdl train` wrote
    scored = model.transform(spark.read.format("binaryFile").load(dir).withColumnRenamed("content", "image"))
    # + probability (DenseVector), prediction (double; class names in its ML attributes), prediction_error
    model.write().save("hdfs:///models/caltech-stage"); ImageClassifierModel.load(...)

The image column is encoded bytes (``binaryFile``'s ``content``) or Spark's image struct (``format("image")``). The
bundle's backbone weights file, if it carries one, is shipped to the executors once (``addFile``); each Python
worker builds the network once and keeps it. Needs a classic SparkSession.
"""
from __future__ import annotations

import shutil
import weakref
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.ml import Model
from pyspark.ml.param.shared import HasInputCol, HasPredictionCol, HasProbabilityCol

from sparkdl.errors import ConfigError, DataError
from sparkdl.ml import columns
from sparkdl.ml.head import HANDLE_INVALID
from sparkdl.ml.persist import BundlePersistence, refuse_connect
from sparkdl.params import column_name, int_at_least, one_of, param, with_accessors

SCORE_TYPE = "struct<prob:array<double>,pred:double,err:string>"


def _scorer(spec, weights: str | None, weights_size: int | None, batch_size: int, fail: bool):
    def score(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        yield from _score_images(arrays, spec=spec, weights=weights, weights_size=weights_size,
                                 batch_size=batch_size, fail=fail)  # fmt: skip

    return score


def _score_images(arrays: Iterator, *, spec, weights, weights_size, batch_size: int, fail: bool) -> Iterator:
    """Executor side: images (bytes or Spark image structs) -> (softmax, argmax, why not) per row."""
    from sparkdl.featurize.featurizer import _shipped_weights_path, use_task_threads
    from sparkdl.infer.predict import WORKER_CLASSIFIERS

    use_task_threads()
    model = WORKER_CLASSIFIERS.get(spec, _shipped_weights_path(weights, weights_size))
    k = spec.n_classes
    for arr in arrays:
        items = arr.to_pylist()
        n = len(items)
        probs = np.zeros((n, k), dtype=np.float64)
        errors: list[str | None] = [None] * n
        for start in range(0, n, batch_size):
            chunk, rejects = model.score(items[start : start + batch_size])
            probs[start : start + len(chunk)] = chunk
            for i, d in enumerate(rejects):
                if d is not None:
                    if fail:
                        raise DataError(f"an image cannot be scored: {d.reason}: {d.detail}; set handleInvalid='keep' or 'skip'")
                    errors[start + i] = f"{d.reason}: {d.detail}"
        ok = np.array([e is None for e in errors], dtype=bool)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * k)
        yield pa.StructArray.from_arrays(
            [pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)), mask=pa.array(~ok)),
             pa.array(probs.argmax(axis=1).astype(np.float64), mask=~ok), pa.array(errors, pa.string())],
            names=["prob", "pred", "err"],
        )  # fmt: skip


@with_accessors
class ImageClassifierModel(Model, HasInputCol, HasPredictionCol, HasProbabilityCol, BundlePersistence):
    """Adds ``probabilityCol`` (DenseVector, softmax) and ``predictionCol`` (double class index, names in the
    column's ML attributes: ``IndexToString`` needs no labels); with handleInvalid='keep' also ``errorCol``."""

    batchSize = param("batchSize", "images per forward pass", int_at_least("batchSize", 1))
    handleInvalid = param(
        "handleInvalid",
        "an image that does not decode: 'keep' (null prediction, the reason in errorCol), 'skip' (dropped) or 'error'",
        one_of("handleInvalid", HANDLE_INVALID),
    )
    errorCol = param("errorCol", "with handleInvalid='keep': why a row has no prediction", column_name("errorCol"))

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(inputCol="image", predictionCol="prediction", probabilityCol="probability", batchSize=32,
                         handleInvalid="keep", errorCol="prediction_error")  # fmt: skip
        self._bundle_dir = None  # a local copy of the bundle directory
        self._shipped = None

    @classmethod
    def fromBundle(cls, uri: str, spark=None) -> "ImageClassifierModel":
        """A self-contained bundle (``sparkdl train``'s output): local path or Hadoop URI; checked now (backbone
        sha256, dimensions), its backbone weights shipped to the executors."""
        from pyspark.sql import SparkSession

        from sparkdl.data import hadoopfs
        from sparkdl.featurize.carry import scratch_dir
        from sparkdl.infer.predict import ship_model

        spark = spark or SparkSession.getActiveSession()
        if spark is None:
            raise ConfigError("ImageClassifierModel.fromBundle needs a running SparkSession (it ships the backbone)")
        refuse_connect(spark, "loading")
        model = cls()
        scratch = scratch_dir()
        weakref.finalize(model, shutil.rmtree, scratch, True)
        resolved = str(hadoopfs.qualify(spark, str(uri)))
        if hadoopfs.is_local(resolved):
            model._bundle_dir = hadoopfs.local_path(resolved)
        else:
            model._bundle_dir = hadoopfs.copy_to_local(spark, resolved, scratch / "model")
        model._shipped = ship_model(spark, str(model._bundle_dir))
        weakref.finalize(model, model._shipped.close)
        return model

    @property
    def labels(self) -> list[str]:
        return list(self._spec().labels)

    @property
    def numClasses(self) -> int:
        return self._spec().n_classes

    def _spec(self):
        if self._shipped is None:
            raise ConfigError("this ImageClassifierModel has no model: build it with ImageClassifierModel.fromBundle")
        return self._shipped.spec

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        from sparkdl.featurize.featurizer import check_image_column

        spec = self._spec()
        refuse_connect(dataset.sparkSession, "scoring images with")
        check_image_column(dataset, self.getInputCol(), "inputCol", "ImageClassifierModel")
        handle = self.getHandleInvalid()
        outs = [self.getProbabilityCol(), self.getPredictionCol()] + ([self.getErrorCol()] if handle == "keep" else [])
        taken = [c for c in outs if c in dataset.columns]
        if taken:
            raise DataError(f"output column {taken[0]!r} already exists in the input: set another name with "
                            "setPredictionCol / setProbabilityCol / setErrorCol")  # fmt: skip
        shipped = self._shipped
        score = F.arrow_udf(_scorer(spec, shipped.weights, shipped.weights_size, self.getBatchSize(), handle == "error"),
                            SCORE_TYPE)  # fmt: skip
        s = "__sparkdl_score"
        scored = dataset.withColumn(s, score(F.col(f"`{self.getInputCol()}`")))
        if handle == "skip":
            scored = scored.filter(F.col(f"{s}.err").isNull())
        pred = self.getPredictionCol()
        cols = [F.col(f"`{c}`") for c in dataset.columns] + [
            F.when(F.col(f"{s}.err").isNull(), array_to_vector(F.col(f"{s}.prob"))).alias(outs[0]),
            F.col(f"{s}.pred").alias(pred, metadata=columns.nominal_metadata(pred, list(spec.labels))),
        ]  # fmt: skip
        if handle == "keep":
            cols.append(F.col(f"{s}.err").alias(outs[2]))
        return scored.select(*cols)

    def _write_data(self, uri: str, spark) -> None:
        from sparkdl.data import hadoopfs

        self._spec()
        target = str(hadoopfs.qualify(spark, uri))
        if hadoopfs.is_local(target):
            shutil.copytree(self._bundle_dir, hadoopfs.local_path(target))
        else:
            hadoopfs.put_dir(spark, self._bundle_dir, uri, overwrite=False)

    @classmethod
    def _read_data(cls, uri: str, spark) -> "ImageClassifierModel":
        return cls.fromBundle(uri, spark)
