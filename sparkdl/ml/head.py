"""``HeadClassifier`` (Estimator) -> ``HeadClassifierModel`` (Transformer): a head on features, by Spark ML's rules.

    model = HeadClassifier(featuresCol="features", labelCol="label", epochs=10).fit(train_df)
    scored = model.transform(df)   # + rawPrediction, probability (DenseVector), prediction (double, class names
                                   #   in its ML attributes: IndexToString needs no labels)
    model.write().overwrite().save("hdfs:///models/head"); HeadClassifierModel.load("hdfs:///models/head")

Features: ``Vector`` or ``array<float|double>``. Labels: indices (ints, or ``StringIndexer``'s doubles, whose names
are kept) or strings (indexed here in sorted order; ``model.labels`` has the names). A ``split`` string column, when
present, picks the training rows ('train') and the best epoch ('valid'); without it every row trains.

``transform`` uses DataFrame functions and one Arrow UDF only, so it runs on Spark Connect; ``fit`` needs a classic
session (training is a Spark barrier stage) and says so at once.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param.shared import (HasFeaturesCol, HasLabelCol, HasPredictionCol, HasProbabilityCol,
                                     HasRawPredictionCol)  # fmt: skip
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkdl.bundle import ModelBundle, load_bundle, save_bundle
from sparkdl.data.features import float_features
from sparkdl.errors import ConfigError, DataError
from sparkdl.ml import columns
from sparkdl.ml.persist import BundlePersistence, is_spark_ml_save
from sparkdl.ml.train_params import HasTrainingParams
from sparkdl.params import checked_string, column_name, one_of, param, with_accessors
from sparkdl.session import is_connect
from sparkdl.model import HeadSpec

HANDLE_INVALID = ("keep", "skip", "error")
SCORE_TYPE = "struct<raw:array<double>,prob:array<double>,pred:double,err:string>"
_TMP = "__sparkdl_"


def _nonempty(text: str) -> None:
    if not text.strip():
        raise ConfigError("mlflowExperiment must be a non-empty name")


class _HeadColumns(HasFeaturesCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol):
    """The columns and invalid-row handling the estimator and its model share (copied from one to the other)."""

    handleInvalid = param(
        "handleInvalid",
        "rows whose features are null, of the wrong length or not finite: 'keep' (null prediction, the reason in "
        "errorCol), 'skip' (dropped) or 'error' (the job fails); fit skips them unless 'error' (counted in the model)",
        one_of("handleInvalid", HANDLE_INVALID),
    )
    errorCol = param("errorCol", "with handleInvalid='keep': why a row has no prediction", column_name("errorCol"))

    def _column_defaults(self) -> None:
        self._setDefault(featuresCol="features", predictionCol="prediction", probabilityCol="probability",
                         rawPredictionCol="rawPrediction", handleInvalid="keep", errorCol="prediction_error")  # fmt: skip


@with_accessors
class HeadClassifier(Estimator, _HeadColumns, HasLabelCol, HasTrainingParams, DefaultParamsReadable, DefaultParamsWritable):
    """Trains a head with a distributed training master (every Param of ``sparkdl train``; defaults shared with it).
    With ``mlflowTrackingUri`` set, the fit is an MLflow run, as ``sparkdl train --mlflow`` logs it."""

    mlflowTrackingUri = param("mlflowTrackingUri", "log the fit to MLflow at this tracking URI, e.g. http://mlflow:5000 "
                              "('': not tracked; needs the mlflow extra)", checked_string("mlflowTrackingUri", lambda s: None,
                                                                                      "a tracking URI or ''"))  # fmt: skip
    mlflowExperiment = param("mlflowExperiment", "the MLflow experiment of the run (created when missing)",
                             checked_string("mlflowExperiment", _nonempty, "a non-empty name"))  # fmt: skip

    @keyword_only
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self._column_defaults()
        self._setDefault(labelCol="label_index", mlflowTrackingUri="", mlflowExperiment="sparkdl")
        self._set(**self._input_kwargs)

    def _fit(self, dataset) -> "HeadClassifierModel":
        uri = self.getMlflowTrackingUri()
        if not uri:
            return self._fit_tracked(dataset, None)
        from sparkdl.tracking import MlflowRun, TrackingConfig

        params = {**self.trainConfig().to_json(), "featuresCol": self.getFeaturesCol(), "labelCol": self.getLabelCol()}
        with MlflowRun(TrackingConfig(uri, self.getMlflowExperiment()), "HeadClassifier.fit", params) as run:
            return self._fit_tracked(dataset, run)

    def _fit_tracked(self, dataset, run) -> "HeadClassifierModel":
        from pyspark.sql import functions as F

        from sparkdl.session import job_description
        from sparkdl.model import build_head
        from sparkdl.train.driver import build_master

        if is_connect(dataset):
            raise ConfigError(
                "HeadClassifier.fit needs a classic SparkSession: training runs as a Spark barrier stage, which Spark "
                "Connect does not offer. Fit on a classic session (or `sparkdl train`), save the model, and use "
                "HeadClassifierModel.transform over Spark Connect"
            )
        cfg = self.trainConfig()
        spark = dataset.sparkSession
        features = float_features(dataset, self.getFeaturesCol())
        lcol = self.getLabelCol()
        columns.label_type(dataset, lcol)  # refused now, before the input is read
        with job_description(spark, "train", "HeadClassifier.fit: reading the input"):
            has_split = "split" in dataset.columns and dataset.schema["split"].dataType.simpleString() == "string"
            df = dataset.select(features.alias("features"), F.col(f"`{lcol}`").alias("label"),
                                (F.col("split") if has_split else F.lit("train")).alias("split"))  # fmt: skip
            # the master validates and deals rows per input partition: many small ones (an orderBy gives up to
            # spark.sql.shuffle.partitions) cost a Python task each, so merge them first (measured: 108 -> 4)
            target = max(cfg.run.workers, spark.sparkContext.defaultParallelism)
            if df.rdd.getNumPartitions() > target:
                df = df.coalesce(target)
            # the input is read once (it may be a featurizer's uncached output: a backbone pass per read), pinned
            # with a stable key per row for the shuffle plan; labels and skipped rows are counted on the pinned copy
            pinned = df.withColumn("path", F.monotonically_increasing_id().cast("string")).localCheckpoint(eager=True)
            label, labels = columns.index_labels(pinned, "label", shown=lcol)
            df = pinned.select("features", label.alias("label_index"), "split", "path")
            skipped = 0
            if self.getHandleInvalid() != "error":
                bad = _invalid_features(F.col("features"))
                skipped = df.filter(bad).count()
                df = df.filter(~bad)
            n_classes = self.getNumClasses() or (len(labels.names) if labels.names else 0)
            if n_classes <= 0:
                top = df.agg(F.max("label_index")).first()[0]
                if top is None:
                    raise DataError("HeadClassifier.fit got no rows with a label")
                n_classes = int(top) + 1
            first = df.filter(F.col("features").isNotNull()).select(F.size("features")).first()
            if first is None:
                raise DataError(f"HeadClassifier.fit: column {self.getFeaturesCol()!r} is null in every row")
            dim = int(first[0])
        result = build_master(cfg).fit(df, build_head(cfg.head, dim, n_classes, seed=cfg.seed), n_classes,
                                       listeners=[run.listener()] if run is not None else [])  # fmt: skip
        names = list(labels.names or [])
        names += [str(i) for i in range(len(names), n_classes)]
        training = {**cfg.to_json(), "label_source": labels.source, "skipped_rows": skipped}
        bundle = ModelBundle(head=HeadSpec.from_module(cfg.head, dim, n_classes, result.head), labels=names[:n_classes],
                             training=training)  # fmt: skip
        if run is not None:
            _log_fit(run, bundle, result, skipped)
        return self._copyValues(HeadClassifierModel(bundle))


def _log_fit(run, bundle: ModelBundle, result, skipped: int) -> None:
    """The fit's final numbers and the model bundle, into its MLflow run."""
    import tempfile

    best = result.history[result.best_epoch] if result.history else None
    run.log_metrics({"best_epoch": result.best_epoch, "epochs_run": len(result.history), "skipped_rows": skipped,
                     "train_seconds": result.seconds, "best_valid_accuracy": getattr(best, "valid_accuracy", None),
                     **{k: v for k, v in result.stats.items() if not isinstance(v, (list, dict))}})  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sparkdl-mlflow-") as tmp:
        save_bundle(bundle, f"{tmp}/model")
        run.log_dir(f"{tmp}/model", "model")


def _invalid_features(col):
    """Rows a head cannot score: null or empty features (the length and finiteness are checked by the scorer)."""
    from pyspark.sql import functions as F

    return col.isNull() | (F.size(col) <= 0)


def _scorer(spec: HeadSpec, fail: bool):
    """The Arrow UDF's function (type hints tell Spark it maps an iterator of batches)."""

    def score(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
        yield from _score(arrays, spec=spec, fail=fail)

    return score


def _score(arrays: Iterator, *, spec: HeadSpec, fail: bool) -> Iterator:
    """Executor side: ``array<float>`` features -> (logits, softmax, argmax, why not) per row; the head is built
    once per task. Rows that cannot be scored get nulls and the reason (or fail the task when ``fail``). Each row
    goes through the head alone, on one thread, so a prediction does not depend on how the rows are partitioned or
    batched (a fresh session, another cluster size: the same bits)."""
    import torch

    torch.set_num_threads(1)
    model = spec.build().eval()
    dim = spec.in_dim
    for arr in arrays:
        arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
        n = len(arr)
        lengths = pa.compute.list_value_length(arr).to_numpy(zero_copy_only=False)
        nulls = arr.is_null().to_numpy(zero_copy_only=False)
        errors: list[str | None] = [None] * n
        ok = np.zeros(n, dtype=bool)
        x = np.zeros((n, dim), dtype=np.float32)
        for i in range(n):
            if nulls[i]:
                errors[i] = "null_features: the features are null (an image the featurizer could not read?)"
            elif lengths[i] != dim:
                errors[i] = f"wrong_length: {int(lengths[i])} values, the model takes {dim}"
            else:
                ok[i] = True
        if ok.any():
            rows = pa.compute.filter(arr, pa.array(ok)).flatten().to_numpy(zero_copy_only=False)
            x[ok] = rows.astype(np.float32, copy=False).reshape(-1, dim)
            finite = np.isfinite(x).all(axis=1)
            for i in np.flatnonzero(ok & ~finite):
                errors[i] = "non_finite: the features hold NaN or inf"
            ok &= finite
        if fail and not ok.all():
            first = next(e for e in errors if e)
            raise DataError(f"{int((~ok).sum())} rows cannot be scored, e.g. {first}; set handleInvalid='keep' or 'skip'")
        logits = np.zeros((n, spec.n_classes), dtype=np.float64)
        if ok.any():
            xt = torch.from_numpy(x)
            with torch.inference_mode():  # row by row: a batched matmul's rounding depends on the batch's size
                for i in np.flatnonzero(ok):
                    logits[i] = model(xt[i : i + 1])[0].double().numpy()
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        offsets = pa.array(np.arange(n + 1, dtype=np.int32) * spec.n_classes)
        mask = pa.array(~ok)
        yield pa.StructArray.from_arrays(
            [pa.ListArray.from_arrays(offsets, pa.array(logits.reshape(-1)), mask=mask),
             pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)), mask=mask),
             pa.array(probs.argmax(axis=1).astype(np.float64), mask=~ok), pa.array(errors, pa.string())],
            names=["raw", "prob", "pred", "err"],
        )  # fmt: skip


@with_accessors
class HeadClassifierModel(Model, _HeadColumns, BundlePersistence):
    """Adds ``rawPredictionCol`` (logits) and ``probabilityCol`` (softmax) as DenseVectors and ``predictionCol``
    (double class index, names in the column's ML attributes); with handleInvalid='keep' also ``errorCol``."""

    def __init__(self, bundle: ModelBundle | None = None) -> None:
        super().__init__()
        self._column_defaults()
        self.bundle = bundle

    @classmethod
    def fromBundle(cls, uri: str, spark=None) -> "HeadClassifierModel":
        """A model bundle (``sparkdl train``'s output, or ``<saved model>/data``): local path or Hadoop URI."""
        return cls(load_bundle(uri, spark))

    @property
    def labels(self) -> list[str]:
        """Class names by index (``IndexToString(labels=model.labels)``)."""
        return list(self.bundle.labels)

    @property
    def numClasses(self) -> int:
        return self.bundle.head.n_classes

    @property
    def numFeatures(self) -> int:
        return self.bundle.head.in_dim

    def _transform(self, dataset):
        from pyspark.ml.functions import array_to_vector
        from pyspark.sql import functions as F

        if self.bundle is None:
            raise ConfigError("this HeadClassifierModel has no model: fit one, or load it with HeadClassifierModel.load")
        handle = self.getHandleInvalid()
        outs = [self.getRawPredictionCol(), self.getProbabilityCol(), self.getPredictionCol()]
        outs += [self.getErrorCol()] if handle == "keep" else []
        taken = [c for c in outs if c in dataset.columns]
        if taken:
            raise DataError(f"output column {taken[0]!r} already exists in the input: set another name with "
                            f"setPredictionCol / setProbabilityCol / setRawPredictionCol / setErrorCol")  # fmt: skip
        if is_connect(dataset):
            dataset = columns.rebuild_vectors(dataset)
        features = float_features(dataset, self.getFeaturesCol())
        score = F.arrow_udf(_scorer(self.bundle.head, handle == "error"), SCORE_TYPE)
        s = _TMP + "score"
        scored = dataset.withColumn(s, score(features))
        if handle == "skip":
            scored = scored.filter(F.col(f"{s}.err").isNull())
        pred = self.getPredictionCol()
        def vector(field: str):  # array_to_vector fails on a null array
            return F.when(F.col(f"{s}.err").isNull(), array_to_vector(F.col(f"{s}.{field}")))

        cols = [F.col(f"`{c}`") for c in dataset.columns] + [
            vector("raw").alias(outs[0]),
            vector("prob").alias(outs[1]),
            F.col(f"{s}.pred").alias(pred, metadata=columns.nominal_metadata(pred, self.labels)),
        ]  # fmt: skip
        if handle == "keep":
            cols.append(F.col(f"{s}.err").alias(outs[3]))
        return scored.select(*cols)

    def _write_data(self, uri: str, spark) -> None:
        save_bundle(self.bundle, uri, spark=spark)

    @classmethod
    def _read_data(cls, uri: str, spark) -> "HeadClassifierModel":
        return cls(load_bundle(uri, spark))

    @classmethod
    def load(cls, path: str) -> "HeadClassifierModel":
        """A saved model (Spark ML layout), or a bare model bundle (``sparkdl train``'s output)."""
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        if spark is not None and not is_spark_ml_save(spark, path):
            return cls.fromBundle(path, spark)
        return cls.read().load(path)
