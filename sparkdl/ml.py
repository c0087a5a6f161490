"""Spark ML API for the head: ``HeadClassifier`` (Estimator) -> ``HeadClassifierModel`` (Transformer).

    model = HeadClassifier(featuresCol="features", labelCol="label_index", epochs=10).fit(train_df)
    scored = model.transform(df)      # + prediction (double), probability (array<float>)
    model.save("/models/head"); HeadClassifierModel.load("/models/head")

Saving writes a model bundle (see ``sparkdl.bundle``), the same format ``sparkdl train`` writes.
"""
from __future__ import annotations

import functools

import numpy as np
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol, HasSeed

from sparkdl.bundle import ModelBundle, load_bundle, save_bundle
from sparkdl.config import HeadConfig, OptimizerConfig, TrainConfig
from sparkdl.errors import DataError
from sparkdl.train.head import HeadSpec, build_head


class _HeadParams(HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol):
    pass


class HeadClassifier(Estimator, _HeadParams, HasSeed):
    """Trains a head with a distributed training master on every row of the input DataFrame (or only the rows
    whose ``split`` is 'train' when that column exists; 'valid' rows then pick the best epoch)."""

    master = Param(Params._dummy(), "master", "training master", TypeConverters.toString)
    workers = Param(Params._dummy(), "workers", "data-parallel workers", TypeConverters.toInt)
    epochs = Param(Params._dummy(), "epochs", "epochs", TypeConverters.toInt)
    batchSizePerWorker = Param(Params._dummy(), "batchSizePerWorker", "minibatch per worker", TypeConverters.toInt)
    averagingFrequency = Param(Params._dummy(), "averagingFrequency", "minibatches between averagings", TypeConverters.toInt)
    head = Param(Params._dummy(), "head", "softmax or mlp:H1,H2", TypeConverters.toString)
    optimizer = Param(Params._dummy(), "optimizer", "sgd, nesterov or adam", TypeConverters.toString)
    lr = Param(Params._dummy(), "lr", "learning rate", TypeConverters.toFloat)
    numClasses = Param(Params._dummy(), "numClasses", "classes (0 = max label + 1)", TypeConverters.toInt)

    @keyword_only
    def __init__(self, *, featuresCol="features", labelCol="label_index", predictionCol="prediction",
                 probabilityCol="probability", master="averaging", workers=2, epochs=10, batchSizePerWorker=16,
                 averagingFrequency=5, head="softmax", optimizer="nesterov", lr=0.01, numClasses=0, seed=42):  # fmt: skip
        super().__init__()
        self._setDefault(featuresCol="features", labelCol="label_index", predictionCol="prediction",
                         probabilityCol="probability", master="averaging", workers=2, epochs=10, batchSizePerWorker=16,
                         averagingFrequency=5, head="softmax", optimizer="nesterov", lr=0.01, numClasses=0, seed=42)  # fmt: skip
        self._set(**self._input_kwargs)

    def train_config(self) -> TrainConfig:
        g = self.getOrDefault
        return TrainConfig(
            master=g(self.master), workers=g(self.workers), epochs=g(self.epochs),
            batch_size_per_worker=g(self.batchSizePerWorker), averaging_frequency=g(self.averagingFrequency),
            head=HeadConfig.parse(g(self.head)), optimizer=OptimizerConfig(name=g(self.optimizer), lr=g(self.lr)),
            seed=g(self.seed),
        )  # fmt: skip

    def _fit(self, dataset):
        from pyspark.sql import functions as F

        from sparkdl.train.master import build_master

        fcol, lcol = self.getFeaturesCol(), self.getLabelCol()
        cols = [F.col(fcol).cast("array<float>").alias("features"), F.col(lcol).cast("int").alias("label_index")]
        cols.append(F.col("split") if "split" in dataset.columns else F.lit("train").alias("split"))
        # a stable key per row for the shuffle plan (inputs may be recomputed, so pin them first)
        df = dataset.select(*cols).withColumn("path", F.monotonically_increasing_id().cast("string")).localCheckpoint(eager=True)
        n_classes = self.getOrDefault(self.numClasses)
        if n_classes <= 0:
            top = df.agg(F.max("label_index")).first()[0]
            if top is None:
                raise DataError("HeadClassifier.fit got an empty DataFrame")
            n_classes = int(top) + 1
        dim = int(df.select(F.size("features")).first()[0])
        cfg = self.train_config()
        result = build_master(cfg).fit(df, build_head(cfg.head, dim, n_classes, seed=cfg.seed), n_classes)
        spec = HeadSpec.from_module(cfg.head, dim, n_classes, result.head)
        model = HeadClassifierModel(ModelBundle(head=spec, labels=[str(i) for i in range(n_classes)], training=cfg.to_json()))
        return self._copyValues(model)


def _score_partition(batches, *, spec_bc, features_col):
    import pyarrow as pa
    import torch

    from sparkdl.data.arrow import features_matrix, list_column
    from sparkdl.train.local import predict_logits

    torch.set_num_threads(1)
    model = spec_bc.value.build()
    for batch in batches:
        if batch.num_rows == 0:
            continue
        logits = predict_logits(model, features_matrix(batch.column(features_col)))
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        pred_col = pa.array(probs.argmax(axis=1).astype(np.float64))
        yield batch.append_column("__prediction", pred_col).append_column("__probability", list_column(probs))


class HeadClassifierModel(Model, _HeadParams):
    """Adds ``predictionCol`` (double, the label index) and ``probabilityCol`` (array<float>, softmax)."""

    def __init__(self, bundle: ModelBundle | None = None) -> None:
        super().__init__()
        self._setDefault(featuresCol="features", labelCol="label_index", predictionCol="prediction", probabilityCol="probability")
        self.bundle = bundle

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def _transform(self, dataset):
        from pyspark.sql.types import ArrayType, DoubleType, FloatType, StructField, StructType

        fcol = self.getFeaturesCol()
        if fcol not in dataset.columns:
            raise DataError(f"features column {fcol!r} not found (columns: {dataset.columns})")
        spark = dataset.sparkSession
        spec_bc = spark.sparkContext.broadcast(self.bundle.head)
        schema = StructType(list(dataset.schema.fields) + [
            StructField("__prediction", DoubleType()), StructField("__probability", ArrayType(FloatType()))])  # fmt: skip
        fn = functools.partial(_score_partition, spec_bc=spec_bc, features_col=fcol)
        out = dataset.mapInArrow(fn, schema)
        return out.withColumnRenamed("__prediction", self.getPredictionCol()).withColumnRenamed(
            "__probability", self.getProbabilityCol()
        )

    def save(self, path: str, overwrite: bool = False) -> None:
        """A local directory or a Hadoop URI (through the active SparkSession)."""
        save_bundle(self.bundle, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str) -> "HeadClassifierModel":
        return cls(load_bundle(path))
