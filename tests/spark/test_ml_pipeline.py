"""Spark ML citizenship of HeadClassifier / HeadClassifierModel: persistence (Pipeline, CrossValidatorModel, a fresh
process), Spark's column types in and out, handleInvalid, Params, refusals at fit/transform time."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from datagen import make_features_table
from sparkdl.errors import ConfigError, DataError
from sparkdl.ml import HeadClassifier, HeadClassifierModel

pytestmark = pytest.mark.spark

FAST = dict(epochs=2, batchSizePerWorker=8, averagingFrequency=2, lr=0.05)


@pytest.fixture(scope="module")
def frame(spark, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("mlfeat") / "features.parquet")
    make_features_table(spark, uri, n=0, dim=6, n_classes=3, seed=7, split_counts={"train": 72, "valid": 12, "test": 24})
    return spark.read.parquet(uri).cache()  # no orderBy: a 200-partition shuffle makes every fit and transform slow


@pytest.fixture(scope="module")
def fitted(frame):
    """String labels (indexed by the estimator), non-default output column names."""
    est = HeadClassifier(labelCol="label", predictionCol="pred", probabilityCol="prob", **FAST)
    return est.fit(frame)


def _rows(df, cols):
    """The rows' ``cols``, sorted by the first (unique) one on the driver (no shuffle)."""
    return sorted((tuple(r[c] for c in cols) for r in df.collect()), key=lambda t: t[0])


def test_outputs_follow_spark_ml_conventions(frame, fitted):
    from pyspark.ml.feature import IndexToString
    from pyspark.ml.linalg import DenseVector

    assert fitted.labels == ["class0", "class1", "class2"]
    assert fitted.numClasses == 3 and fitted.numFeatures == 6
    assert json.loads(json.dumps(fitted.bundle.training))["label_source"] == "string"
    out = fitted.transform(frame)
    types = {f.name: f.dataType.simpleString() for f in out.schema.fields}
    assert types["pred"] == "double" and types["prob"] == "vector" and types["rawPrediction"] == "vector"
    assert types["prediction_error"] == "string"
    row = out.first()
    assert isinstance(row["prob"], DenseVector) and abs(row["prob"].toArray().sum() - 1) < 1e-9
    assert int(row["pred"]) == int(np.argmax(row["rawPrediction"].toArray()))
    named = IndexToString(inputCol="pred", outputCol="pred_label").transform(out)  # names from the ML attributes
    assert {r["pred_label"] for r in named.collect()} <= set(fitted.labels)
    acc = named.filter("split = 'test'").selectExpr("avg(cast(pred_label = label as int))").first()[0]
    assert acc >= 0.8


def test_spark_evaluators_read_the_outputs(frame, fitted):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import StringIndexer

    out = fitted.transform(StringIndexer(inputCol="label", outputCol="y", stringOrderType="alphabetAsc").fit(frame).transform(frame))
    acc = MulticlassClassificationEvaluator(labelCol="y", predictionCol="pred", metricName="accuracy").evaluate(out)
    loss = MulticlassClassificationEvaluator(labelCol="y", predictionCol="pred", probabilityCol="prob", metricName="logLoss").evaluate(out)
    assert acc >= 0.8 and 0 < loss < 1.5


@pytest.mark.parametrize("kind", ["vector", "array<double>"])
def test_vector_and_double_features_give_the_same_model(frame, fitted, kind):
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    col = array_to_vector("features") if kind == "vector" else F.col("features").cast("array<double>")
    other = frame.withColumn("features", col)
    assert other.schema["features"].dataType.simpleString() == kind
    a = _rows(fitted.transform(frame), ["path", "prob"])
    b = _rows(fitted.transform(other), ["path", "prob"])
    assert [p for _, p in a] == [p for _, p in b]
    model = HeadClassifier(labelCol="label", **FAST).fit(other)  # the estimator takes the same types
    ref = HeadClassifier(labelCol="label", **FAST).fit(frame)
    for k, v in ref.bundle.head.params.items():
        np.testing.assert_array_equal(model.bundle.head.params[k], v)


def test_string_indexer_names_are_kept(frame):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StringIndexer

    pipe = Pipeline(stages=[StringIndexer(inputCol="label", outputCol="y"), HeadClassifier(labelCol="y", **FAST)])
    model = pipe.fit(frame).stages[-1]
    assert sorted(model.labels) == ["class0", "class1", "class2"]  # StringIndexer's order (by frequency), its names
    assert model.bundle.training["label_source"] == "ml_attr"


def test_handle_invalid(spark, frame, fitted):
    from pyspark.sql import functions as F

    bad = frame.limit(6).withColumn(
        "features",
        F.when(F.col("path").endswith("0.jpg") | F.col("path").endswith("1.jpg"), F.lit(None).cast("array<float>"))
        .otherwise(F.col("features")),
    ).unionByName(frame.limit(1).withColumn("features", F.array(F.lit(1.0).cast("float"))))
    bad = bad.unionByName(frame.limit(1).withColumn("features", F.array_repeat(F.lit(float("nan")).cast("float"), 6)))
    n_bad = bad.filter("features is null or size(features) != 6").count() + 1
    kept = fitted.transform(bad).collect()
    assert len(kept) == bad.count()
    reasons = sorted(r["prediction_error"].split(":")[0] for r in kept if r["prediction_error"])
    assert len(reasons) == n_bad and set(reasons) == {"null_features", "wrong_length", "non_finite"}
    assert all(r["pred"] is None and r["prob"] is None for r in kept if r["prediction_error"])
    skipped = fitted.copy({fitted.handleInvalid: "skip"}).transform(bad)
    assert skipped.count() == bad.count() - n_bad and "prediction_error" not in skipped.columns
    with pytest.raises(Exception, match="cannot be scored.*handleInvalid"):
        fitted.copy({fitted.handleInvalid: "error"}).transform(bad).collect()


def test_fit_skips_and_counts_null_features(frame):
    from pyspark.sql import functions as F

    holes = frame.withColumn("features", F.when(F.col("path").endswith("3.jpg"), F.lit(None)).otherwise(F.col("features")))
    n = holes.filter("features is null").count()
    model = HeadClassifier(labelCol="label", **FAST).fit(holes)
    assert n > 0 and model.bundle.training["skipped_rows"] == n
    with pytest.raises(DataError, match="null in"):
        HeadClassifier(labelCol="label", handleInvalid="error", **FAST).fit(holes)


def test_wrong_column_types_are_refused_up_front(frame, fitted):
    from pyspark.sql import functions as F

    as_text = frame.withColumn("features", F.lit("1,2,3"))
    with pytest.raises(DataError, match="features column 'features' has type string"):
        fitted.transform(as_text)
    with pytest.raises(DataError, match="has type string"):
        HeadClassifier(**FAST).fit(as_text)
    with pytest.raises(DataError, match="label column 'label_index' has type array<int>"):
        HeadClassifier(**FAST).fit(frame.withColumn("label_index", F.array("label_index")))
    with pytest.raises(DataError, match="'pred' already exists"):
        fitted.transform(frame.withColumn("pred", F.lit(1.0)))


def test_params_are_validated_when_set():
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, nesterov, adam"):
        HeadClassifier(optimizer="adagrad")
    with pytest.raises(ConfigError, match="batchSizePerWorker must be an integer >= 1"):
        HeadClassifier().setBatchSizePerWorker(0)
    with pytest.raises(ConfigError, match="handleInvalid must be one of keep, skip, error"):
        HeadClassifierModel().setHandleInvalid("ignore")
    est = HeadClassifier().setParams(dropout=0.25, head="mlp:8", momentum=0.5)
    assert est.getDropout() == 0.25 and est.trainConfig().head.hidden == (8,)


def test_model_save_load_keeps_params_and_predictions(spark, frame, fitted, tmp_path):
    path = str(tmp_path / "m")
    fitted.save(path)
    again = HeadClassifierModel.load(path)
    assert again.uid == fitted.uid and again.getPredictionCol() == "pred" and again.getProbabilityCol() == "prob"
    assert again.labels == fitted.labels
    assert _rows(again.transform(frame), ["path", "pred", "prob", "rawPrediction"]) == _rows(
        fitted.transform(frame), ["path", "pred", "prob", "rawPrediction"])
    with pytest.raises(DataError, match="already exists"):
        fitted.save(path)
    fitted.copy({fitted.predictionCol: "p2"}).write().overwrite().save(path)  # swapped in whole
    assert HeadClassifierModel.load(path).getPredictionCol() == "p2"
    assert not (tmp_path / "m.partial").exists()
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not a saved Spark ML stage"):
        fitted.write().overwrite().save(str(tmp_path / "notamodel"))
    assert (tmp_path / "notamodel" / "keep.txt").exists()
    bare = HeadClassifierModel.load(path + "/data")  # the bundle inside is sparkdl train's format
    assert bare.labels == fitted.labels


def test_pipeline_and_crossvalidator_save_load_in_a_fresh_process(spark, frame, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.tuning import CrossValidator, CrossValidatorModel, ParamGridBuilder

    train = frame.filter("split != 'test'")
    indexer = StringIndexer(inputCol="label", outputCol="y")
    head = HeadClassifier(labelCol="y", predictionCol="pred", **FAST)
    pipe = Pipeline(stages=[indexer, head])
    pipe.write().save(str(tmp_path / "unfitted"))  # an unfitted Pipeline saves and loads too
    assert Pipeline.load(str(tmp_path / "unfitted")).getStages()[1].getPredictionCol() == "pred"
    model = pipe.fit(train)
    model.write().save(str(tmp_path / "pipeline"))
    grid = ParamGridBuilder().addGrid(head.lr, [0.05, 0.2]).build()
    cv = CrossValidator(estimator=pipe, estimatorParamMaps=grid, numFolds=2, seed=3,
                        evaluator=MulticlassClassificationEvaluator(labelCol="y", predictionCol="pred"))
    cv_model = cv.fit(train)
    cv_model.write().save(str(tmp_path / "cv"))
    test = frame.filter("split = 'test'").select("path", "label", "features")
    test.write.parquet(str(tmp_path / "test.parquet"))
    here = {
        "pipeline": _rows(PipelineModel.load(str(tmp_path / "pipeline")).transform(test), ["path", "pred", "probability"]),
        "cv": _rows(CrossValidatorModel.load(str(tmp_path / "cv")).transform(test), ["path", "pred", "probability"]),
    }
    assert here["pipeline"] == _rows(model.transform(test), ["path", "pred", "probability"])
    assert here["cv"] == _rows(cv_model.transform(test), ["path", "pred", "probability"])
    script = textwrap.dedent(f"""
        import json, sys
        from pyspark.ml import PipelineModel
        from pyspark.ml.tuning import CrossValidatorModel
        from sparkdl.config import SessionConfig
        from sparkdl.session import build_session
        spark = build_session(SessionConfig(master="local[1]", ui_enabled=False, driver_memory="512m"))
        test = spark.read.parquet({str(tmp_path / "test.parquet")!r})
        out = {{}}
        for name, cls in (("pipeline", PipelineModel), ("cv", CrossValidatorModel)):
            rows = sorted(cls.load({str(tmp_path)!r} + "/" + name).transform(test).collect(), key=lambda r: r["path"])
            out[name] = [[r["path"], r["pred"], r["probability"].toArray().tolist()] for r in rows]
        spark.stop()
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    for name in ("pipeline", "cv"):
        assert there[name] == [[p, pred, prob.toArray().tolist()] for p, pred, prob in here[name]]  # bit-identical


CONNECT_CLIENT = """
import json, sys
from pyspark.sql import SparkSession
from sparkdl.errors import ConfigError
from sparkdl.ml import HeadClassifier, HeadClassifierModel

spark = SparkSession.builder.getOrCreate()  # SPARK_REMOTE: the test's server
bundle, table = sys.argv[1], sys.argv[2]
df = spark.read.parquet(table)
model = HeadClassifierModel.fromBundle(bundle).setPredictionCol("pred")
rows = sorted(model.transform(df).collect(), key=lambda r: r["path"])
try:
    HeadClassifier(labelCol="label").fit(df)
    refusal = None
except ConfigError as exc:
    refusal = str(exc)
print(json.dumps({"rows": [[r["path"], r["pred"], r["probability"].toArray().tolist(), r["rawPrediction"].toArray().tolist()]
                           for r in rows], "types": {f.name: f.dataType.simpleString() for f in df.schema.fields},
                  "refusal": refusal}))
"""


def test_transform_over_spark_connect(spark, frame, fitted, tmp_path, connect_server):
    """The model scores through DataFrame APIs only: a Connect client gets the classic session's predictions,
    bit for bit; fit refuses at once, naming the classic-session requirement."""
    from connect_server import run_connect_client
    from pyspark.ml.functions import array_to_vector

    table = str(tmp_path / "vectors.parquet")
    frame.withColumn("features", array_to_vector("features")).write.parquet(table)  # a Vector column, too
    fitted.bundle.save(tmp_path / "bundle")
    done = run_connect_client(connect_server, CONNECT_CLIENT, [str(tmp_path / "bundle"), table])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["types"]["features"] == "vector"
    classic = _rows(fitted.transform(frame), ["path", "pred", "prob", "rawPrediction"])
    assert out["rows"] == [[p, pred, prob.toArray().tolist(), raw.toArray().tolist()] for p, pred, prob, raw in classic]
    assert "needs a classic SparkSession" in out["refusal"]


def test_fit_reads_its_input_once(spark, frame):
    """An uncached input (a featurizer's output: a backbone pass per read) is computed once by fit, string labels
    and skipped rows included."""
    from pyspark.sql import functions as F

    reads = spark.sparkContext.accumulator(0)

    def counted(batches):
        for batch in batches:
            reads.add(batch.num_rows)
            yield batch

    source = frame.withColumn("features", F.when(F.col("path").endswith("5.jpg"), F.lit(None)).otherwise(F.col("features")))
    rows = source.count()
    HeadClassifier(labelCol="label", **FAST).fit(source.mapInArrow(counted, source.schema))
    assert reads.value == rows
