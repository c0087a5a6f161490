"""MLflow tracking against a real local MLflow store (SQLite + artifacts in a temp dir): `sparkdl train --mlflow`
logs its options as params, a point per epoch as it happens (loss, valid accuracy, bytes, tau for sharing), the final
per-split metrics and the model bundle as an artifact; featurize and predict log counts and speed; HeadClassifier
logs the same when given mlflowTrackingUri; a store that cannot be used fails the command before any work."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from datagen import make_bundle, make_features_table
from sparkdl.cli import main

pytestmark = pytest.mark.spark
mlflow = pytest.importorskip("mlflow", reason="the mlflow extra (pip install -e '.[test]' brings it)")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store; artifacts land under tmp_path/mlruns (MLflow's default root, relative to cwd)."""
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _only_run(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return client, runs[0]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_logs_params_epochs_as_they_happen_final_metrics_and_the_bundle(spark, tmp_path, store, capsys):
    feats = make_features_table(spark, str(tmp_path / "features.parquet"), n=0, dim=6, n_classes=3, seed=3,
                                split_counts={"train": 96, "valid": 24, "test": 24})["uri"]  # fmt: skip
    model = tmp_path / "model"
    rc = main(["train", "--features", feats, "--output", str(model), "--training-master", "sharing", "--workers", "2",
               "--epochs", "3", "--batch-size-per-worker", "8", "--lr", "0.1", "--json", "--quiet",
               "--mlflow-uri", store, "--mlflow-experiment", "digits", "--mlflow-run-name", "sharing-3"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    client, run = _only_run(store, "digits")
    assert run.info.status == "FINISHED" and run.info.run_name == "sharing-3"
    assert run.data.tags["sparkdl.stage"] == "train"
    params = run.data.params
    assert params["training_master"] == "sharing" and params["epochs"] == "3" and params["features"] == feats
    assert params["threshold"] == "adaptive"  # defaults are logged too: the run says how it was trained
    rid = run.info.run_id

    def history(key):
        return sorted(client.get_metric_history(rid, key), key=lambda m: m.step)

    loss, valid, tau, sent = history("train_loss"), history("valid_accuracy"), history("tau"), history("bytes_sent")
    assert [m.step for m in loss] == [1, 2, 3] == [m.step for m in valid] == [m.step for m in tau] == [m.step for m in sent]
    events = [json.loads(line) for line in (model / "events.jsonl").read_text().splitlines()]
    epochs = [e for e in events if e["type"] == "epoch"]
    assert [m.value for m in loss] == pytest.approx([e["train_loss"] for e in epochs])
    assert [m.value for m in valid] == pytest.approx([e["valid_accuracy"] for e in epochs])
    assert all(m.value > 0 for m in tau + sent)
    # per epoch as the driver received them, before the final scoring: timestamps in order
    test_acc = client.get_metric_history(rid, "test.accuracy")
    assert len(test_acc) == 1 and [m.timestamp for m in loss] == sorted(m.timestamp for m in loss)
    assert loss[0].timestamp <= test_acc[0].timestamp
    bundle_metrics = json.loads((model / "metrics.json").read_text())
    assert test_acc[0].value == pytest.approx(bundle_metrics["test"]["accuracy"])
    assert run.data.metrics["valid.accuracy"] == pytest.approx(bundle_metrics["valid"]["accuracy"])
    # the bundle is the run's `model` artifact, byte for byte
    listed = {Path(a.path).name for a in client.list_artifacts(rid, "model")}
    assert {"config.json", "head.safetensors", "metrics.json"} <= listed
    local = Path(client.download_artifacts(rid, "model", str(tmp_path / "download")))
    for name in ("config.json", "head.safetensors"):
        assert _sha(local / name) == _sha(model / name)


def test_featurize_and_predict_log_counts_and_speed(spark, ingested, tmp_path, store, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # --mlflow takes the URI from the environment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "stages")
    out = tmp_path / "features.parquet"
    assert main(["featurize", "--input", ingested.output_uri, "--output", str(out), "--backbone", "tiny", "--quiet",
                 "--json", "--mlflow"]) == 0, capsys.readouterr().err  # fmt: skip
    bundle = make_bundle(tmp_path / "bundle")
    assert main(["predict", "--table", ingested.output_uri, "--model", str(bundle), "--output", str(tmp_path / "p.parquet"),
                 "--quiet", "--json", "--mlflow"]) == 0, capsys.readouterr().err  # fmt: skip
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("stages").experiment_id])
    by_stage = {r.data.tags["sparkdl.stage"]: r for r in runs}
    assert set(by_stage) == {"featurize", "predict"} and all(r.info.status == "FINISHED" for r in runs)
    feat, pred = by_stage["featurize"].data, by_stage["predict"].data
    assert feat.params["backbone"] == "tiny" and feat.params["output"] == str(out)
    assert feat.metrics["rows_out"] == 18 and feat.metrics["images_per_second"] > 0 and feat.metrics["seconds"] > 0
    assert pred.metrics["rows_out"] == 18 and pred.metrics["images_per_second"] > 0


def test_head_classifier_logs_the_fit_when_asked(spark, tmp_path, store, monkeypatch):
    from sparkdl.ml import HeadClassifier

    feats = make_features_table(spark, str(tmp_path / "f.parquet"), n=0, dim=4, n_classes=2, seed=5,
                                split_counts={"train": 48, "valid": 16})["uri"]  # fmt: skip
    df = spark.read.parquet(feats)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # a notebook's own run, opened with MLflow's fluent API
    with mlflow.start_run(run_name="notebook") as mine:
        HeadClassifier(workers=2, epochs=2, batchSizePerWorker=8, mlflowTrackingUri=store, mlflowExperiment="ml").fit(df)
        assert mlflow.active_run().info.run_id == mine.info.run_id  # still the notebook's, untouched
    notebook = mlflow.tracking.MlflowClient(tracking_uri=store).get_run(mine.info.run_id).data
    assert notebook.params == {} and notebook.metrics == {}
    client, run = _only_run(store, "ml")
    assert run.info.status == "FINISHED" and run.data.tags["sparkdl.stage"] == "HeadClassifier.fit"
    assert run.data.params["epochs"] == "2" and run.data.params["master"] == "averaging"
    loss = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in loss) == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "bytes_sent")] == [1, 2]  # the allreduce payloads
    assert "best_valid_accuracy" in run.data.metrics
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")} >= {"config.json", "head.safetensors"}


def test_a_store_that_cannot_be_used_fails_before_any_work(spark, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    model = tmp_path / "model"
    args = ["train", "--features", str(tmp_path / "absent.parquet"), "--output", str(model), "--quiet"]
    assert main([*args, "--mlflow"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sparkdl train: error: --mlflow needs a tracking URI: --mlflow-uri URI or MLFLOW_TRACKING_URI "
                   "(e.g. http://mlflow:5000, or sqlite:///mlflow.db for a local store)"]  # fmt: skip
    assert main([*args, "--mlflow-uri", "bogus-scheme://nowhere"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparkdl train: error: MLflow tracking at 'bogus-scheme://nowhere' failed: ")
    assert not model.exists()


def test_a_failed_stage_closes_its_run_failed(spark, tmp_path, store, capsys):
    model = tmp_path / "model"
    args = ["train", "--features", str(tmp_path / "absent.parquet"), "--output", str(model), "--quiet", "--mlflow-uri", store]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sparkdl train: error: ") and "does not exist" in err
    _, run = _only_run(store, "sparkdl")
    assert run.info.status == "FAILED" and "does not exist" in run.data.tags["sparkdl.error"]
    assert run.data.params["features"] == str(tmp_path / "absent.parquet")
