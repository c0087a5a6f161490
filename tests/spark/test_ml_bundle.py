"""Bundle round trip; Spark ML Estimator/Transformer; the train -> evaluate -> report stages."""
import json

import numpy as np
import pytest
import torch

from datagen import make_features_table
from sparkdl.bundle import ModelBundle
from sparkdl.config import AveragingConfig, OptimizerConfig, RunConfig, TrainConfig
from sparkdl.errors import DataError
from sparkdl.ml import HeadClassifier, HeadClassifierModel
from sparkdl.report import write_report
from sparkdl.train.run import evaluate_model, train_head

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("feat") / "features.parquet")
    return make_features_table(spark, uri, n=0, dim=8, n_classes=3, seed=4, split_counts={"train": 90, "valid": 30, "test": 30})


@pytest.fixture(scope="module")
def trained(spark, table, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model"
    cfg = TrainConfig(run=RunConfig(workers=2), epochs=3, batch_size_per_worker=8, algorithm=AveragingConfig(frequency=2),
                      optimizer=OptimizerConfig(lr=0.05))  # fmt: skip
    return train_head(spark, table["uri"], out, cfg)


def test_train_writes_a_complete_bundle(trained):
    bundle = ModelBundle.load(trained.model_dir)
    assert bundle.labels == ["class0", "class1", "class2"]
    assert bundle.head.in_dim == 8 and bundle.head.n_classes == 3
    assert set(bundle.metrics) >= {"train", "valid", "test", "wall_seconds", "examples_per_second",
                                    "bytes_driver_to_workers", "bytes_workers_to_driver", "phase_seconds"}  # fmt: skip
    assert bundle.metrics["test"]["accuracy"] == trained.metrics["test"]["accuracy"] >= 0.8
    rounds = [e for e in bundle.events if e["type"] == "round"]
    epochs = [e for e in bundle.events if e["type"] == "epoch"]
    assert len(epochs) == 3 and len(rounds) == 3 * 3  # 90 rows -> 2 shards of 45 / (8 x 2) -> 3 rounds per epoch
    assert {"worker_fit", "aggregate", "update"} <= set(rounds[0]["phases"])  # barrier: the allreduce aggregates
    assert {"loss", "lr", "examples"} <= set(rounds[0])
    cfg = json.loads((__import__("pathlib").Path(trained.model_dir) / "config.json").read_text())
    assert cfg["backbone"]["name"] == "synthetic" and cfg["training"]["run"]["workers"] == 2


def test_bundle_round_trip_and_transformer_predictions(spark, table, trained, tmp_path):
    model = HeadClassifierModel.load(trained.model_dir)
    df = spark.read.parquet(table["uri"])
    scored = model.transform(df).orderBy("path").collect()
    x = torch.from_numpy(np.stack([np.asarray(r["features"], np.float32) for r in scored]))
    with torch.inference_mode():
        logits = ModelBundle.load(trained.model_dir).head.build()(x)
    assert [int(r["prediction"]) for r in scored] == logits.argmax(1).tolist()
    np.testing.assert_allclose([r["probability"] for r in scored], torch.softmax(logits, 1).numpy(), rtol=1e-5, atol=1e-6)
    model.save(str(tmp_path / "again"))
    again = HeadClassifierModel.load(str(tmp_path / "again"))
    for k, v in model.bundle.head.params.items():
        np.testing.assert_array_equal(again.bundle.head.params[k], v)
    with pytest.raises(DataError, match="already exists"):
        model.save(str(tmp_path / "again"))


def test_estimator_fit_transform(spark, table):
    df = spark.read.parquet(table["uri"]).select("features", "label_index", "split")
    model = HeadClassifier(epochs=3, batchSizePerWorker=8, averagingFrequency=2, lr=0.05).fit(df)
    assert model.bundle.head.n_classes == 3
    acc = model.transform(df.filter("split = 'test'")).selectExpr("avg(cast(prediction = label_index as int))").first()[0]
    assert acc >= 0.8


def test_evaluate_and_report(spark, table, trained, tmp_path):
    m = evaluate_model(spark, trained.model_dir, table["uri"], split="test")
    assert m.accuracy == trained.metrics["test"]["accuracy"]
    page = write_report(trained.model_dir, tmp_path / "report")
    assert sorted(p.name for p in page.parent.iterdir()) == ["confusion.png", "epochs.png", "loss.png", "phases.png", "report.html"]
    assert all((page.parent / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in ("loss.png", "confusion.png"))
    assert "class" in page.read_text() or "accuracy" in page.read_text()


def test_evaluate_refuses_other_features(spark, trained, tmp_path):
    other = make_features_table(spark, str(tmp_path / "f.parquet"), n=10, dim=5, n_classes=3)
    with pytest.raises(DataError, match="has 5-d features but the model expects 8-d"):
        evaluate_model(spark, trained.model_dir, other["uri"], split="train")
