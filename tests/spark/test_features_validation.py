"""One validation of a features table, shared by train and evaluate: bad rows, wrong or zero feature sizes, one
class, tables without a meta.json (derived label mapping), Vector and array<double> features. Real Spark."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from datagen import make_features_table
from sparkdl.config import AveragingConfig, OptimizerConfig, RunConfig, TrainConfig
from sparkdl.data import tables
from sparkdl.errors import DataError
from sparkdl.evaluate import partial_counts
from sparkdl.train.run import evaluate_model, train_head

pytestmark = pytest.mark.spark

DIM, CLASSES = 4, 3
SPARKDL = shutil.which("sparkdl", path=str(Path(sys.executable).parent)) or "sparkdl"
CFG = TrainConfig(run=RunConfig(workers=2), epochs=1, batch_size_per_worker=8, algorithm=AveragingConfig(frequency=1),
                  optimizer=OptimizerConfig(lr=0.05))  # fmt: skip


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory):
    """A good table (3 classes, 4-d, with meta) and a model trained on it."""
    root = tmp_path_factory.mktemp("fv")
    table = make_features_table(spark, str(root / "good.parquet"), n=0, dim=DIM, n_classes=CLASSES, seed=11,
                                split_counts={"train": 24, "valid": 6, "test": 9})  # fmt: skip
    model = train_head(spark, table["uri"], root / "model", CFG)
    return {**table, "root": root, "model": model.model_dir}


def write_table(spark, uri, rows, features_type="array<float>", meta: dict | None = None) -> str:
    """``rows`` (path, label, label_index, split, features) as a Parquet table; a meta.json beside it only if given."""
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.types import ArrayType, DoubleType, FloatType, IntegerType, StringType, StructField, StructType

    features = {"vector": VectorUDT(), "array<double>": ArrayType(DoubleType()), "array<float>": ArrayType(FloatType())}
    schema = StructType([StructField("path", StringType()), StructField("label", StringType()),
                         StructField("label_index", IntegerType()), StructField("split", StringType()),
                         StructField("features", features[features_type])])  # fmt: skip
    spark.createDataFrame(rows, schema).write.mode("overwrite").parquet(str(uri))
    if meta is not None:
        tables.write_meta(spark, str(uri), {"format": "sparkdl.features/1", **meta})
    return str(uri)


def _meta(labels=tuple(f"class{c}" for c in range(CLASSES)), dim=DIM) -> dict:
    return {"labels": list(labels), "feature_dim": dim, "backbone": {"name": "synthetic", "feature_dim": dim}}


def _in_test(rows, change, count=2):
    """``change`` applied to the first ``count`` rows of split 'test'."""
    out, done = [], 0
    for r in rows:
        if r[3] == "test" and done < count:
            r, done = change(r), done + 1
        out.append(r)
    return out


# ------------------------------------------------------------------------------------- 5: evaluate validates
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: (*r[:4], [float("nan")] + r[4][1:]), r"column 'features' has NaN/inf/null values in 2 rows"),
        (lambda r: (*r[:4], r[4][:-1] + [float("inf")]), r"column 'features' has NaN/inf/null values in 2 rows"),
        (lambda r: (r[0], r[1], -1, *r[3:]), r"column 'label_index' is null or outside \[0, 3\) in 2 rows"),
        (lambda r: (r[0], r[1], 3, *r[3:]), r"column 'label_index' is null or outside \[0, 3\) in 2 rows"),
    ],
    ids=["nan", "inf", "label-minus-1", "label-n_classes"],
)
def test_evaluate_refuses_what_train_refuses_with_the_same_error(spark, base, tmp_path, change, message):
    uri = write_table(spark, tmp_path / "bad.parquet", _in_test(base["rows"], change), meta=_meta())
    with pytest.raises(DataError, match=message) as trained:
        train_head(spark, uri, tmp_path / "m", CFG)
    with pytest.raises(DataError, match=message) as evaluated:
        evaluate_model(spark, base["model"], uri, split="test")
    assert str(evaluated.value) == str(trained.value)
    assert uri in str(evaluated.value) and "\n" not in str(evaluated.value)


@pytest.mark.parametrize("label", [-1, 3])
def test_partial_counts_refuses_labels_out_of_range(label):
    logits = np.zeros((3, CLASSES))
    with pytest.raises(DataError, match=r"label_index outside \[0, 3\) in 1 rows"):
        partial_counts(logits, np.array([0, label, 2]), CLASSES)


# ------------------------------------------------------------------ 8: wrong / zero feature sizes, one class
def _cli_train(features_uri, out):
    return subprocess.run([SPARKDL, "train", "--features", features_uri, "--output", str(out), "--workers", "2",
                           "--epochs", "1", "--spark-master", "local[2]", "--quiet"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip


@pytest.mark.parametrize(
    "kind, expected",
    [("wrong-dim", r"has 4-d features but its meta\.json says 1280-d"), ("zero-length", r"empty array \(0 values\) in 39 rows")],
)
def test_feature_size_errors_are_one_line_from_the_cli(spark, base, tmp_path, kind, expected):
    if kind == "wrong-dim":
        uri = write_table(spark, tmp_path / "f.parquet", base["rows"], meta=_meta(dim=1280))
    else:
        uri = write_table(spark, tmp_path / "f.parquet", [(*r[:4], []) for r in base["rows"]],
                          meta={"labels": _meta()["labels"]})  # fmt: skip
    done = _cli_train(uri, tmp_path / "model")
    assert done.returncode == 1, done.stderr
    # the JVM's own start-up notice aside (printed before any sparkdl code runs), exactly one line
    lines = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith("WARNING: Using incubator modules")]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sparkdl train: error: ") and uri in lines[0]
    assert re.search(expected, lines[0]), lines[0]
    assert not (tmp_path / "model").exists()


def test_one_class_table_trains_with_a_warning(spark, base, tmp_path, capsys):
    from sparkdl.cli import main

    rows = [(r[0], "only", 0, r[3], r[4]) for r in base["rows"]]
    uri = write_table(spark, tmp_path / "one.parquet", rows, meta=_meta(labels=["only"]))
    assert main(["train", "--features", uri, "--output", str(tmp_path / "m"), "--workers", "2", "--epochs", "1",
                 "--spark-master", "local[2]", "--quiet", "--json"]) == 0  # fmt: skip
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["warnings"]) == 1 and "one class ('only')" in payload["warnings"][0]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["training"]["warnings"] == payload["warnings"] and config["n_classes"] == 1


# ------------------------------------------------------------------------------------------- 9: no meta.json
def _relabelled(rows, names):
    return [(r[0], names[r[2]], r[2], r[3], r[4]) for r in rows]


def test_table_without_meta_trains_and_evaluates_with_derived_labels(spark, base, tmp_path):
    uri = write_table(spark, tmp_path / "foreign.parquet", _relabelled(base["rows"], ["cat", "dog", "emu"]))
    assert not Path(tables.meta_uri(uri)).exists()
    summary = train_head(spark, uri, tmp_path / "m", CFG)
    config = json.loads((Path(summary.model_dir) / "config.json").read_text())
    assert config["labels"] == ["cat", "dog", "emu"] and config["feature_dim"] == DIM
    assert config["training"]["label_source"] == "derived"
    m = evaluate_model(spark, summary.model_dir, uri, split="test")
    assert m.n == 9 and m.accuracy == summary.metrics["test"]["accuracy"]
    # evaluating a meta-less table whose names disagree with the model's mapping is refused, naming them
    other = write_table(spark, tmp_path / "other.parquet", _relabelled(base["rows"], ["cat", "emu", "dog"]))
    with pytest.raises(DataError, match=r"label_index 1 is 'emu' here .* but 'dog' in the model"):
        evaluate_model(spark, summary.model_dir, other, split="test")


@pytest.mark.parametrize(
    "change, message",
    [
        # one index, two labels: both named with their row counts and an example path
        (lambda r, i: (r[0], "wolf", *r[2:]) if r[2] == 1 and i % 2 else r,
         r"label_index 1 has 2 labels: 'class1' \(\d+ rows, e\.g\. file:/gen/c1/\d+\.jpg\) and 'wolf' \(\d+ rows"),
        # one label, two indices
        (lambda r, i: (r[0], "class0", *r[2:]) if r[2] == 2 else r, r"label 'class0' has 2 label_index values: 0 \("),
        # indices not 0..n-1: 0, 1, 5
        (lambda r, i: (r[0], r[1], 5, *r[3:]) if r[2] == 2 else r,
         r"label_index values must be 0\.\.2 for 3 distinct values, found 5 \(\d+ rows, e\.g\. file:/gen/c2/.*\(missing 2\)"),
    ],
    ids=["index-two-labels", "label-two-indices", "not-dense"],
)
def test_table_without_meta_with_inconsistent_labels_is_refused(spark, base, tmp_path, change, message):
    uri = write_table(spark, tmp_path / "foreign.parquet", [change(r, i) for i, r in enumerate(base["rows"])])
    with pytest.raises(DataError, match=message) as refused:
        train_head(spark, uri, tmp_path / "m", CFG)
    assert "has no meta.json and its label mapping cannot be derived" in str(refused.value)
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------ 9: Vector and array<double> features
def _as_vectors(rows):
    from pyspark.ml.linalg import Vectors

    def vec(i, x):  # every other row sparse (zeros left out)
        return Vectors.dense(x) if i % 2 else Vectors.sparse(len(x), {j: v for j, v in enumerate(x) if v != 0.0})

    return [(*r[:4], vec(i, r[4])) for i, r in enumerate(rows)]


@pytest.mark.parametrize("kind", ["vector", "array<double>"])
def test_vector_and_double_features_train_and_evaluate(spark, base, tmp_path, kind):
    rows = _as_vectors(base["rows"]) if kind == "vector" else base["rows"]
    uri = write_table(spark, tmp_path / "f.parquet", rows, features_type=kind, meta=_meta())
    assert spark.read.parquet(uri).schema["features"].dataType.simpleString() == kind
    summary = train_head(spark, uri, tmp_path / "m", CFG)
    reference = evaluate_model(spark, base["model"], base["uri"], split="test")
    m = evaluate_model(spark, base["model"], uri, split="test")  # the same rows as float arrays: the same metrics
    assert m.n == 9 and m.confusion == reference.confusion and m.loss == pytest.approx(reference.loss, rel=1e-6)
    assert summary.metrics["train"]["n"] == 24
