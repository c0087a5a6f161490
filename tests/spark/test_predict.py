"""`sparkdl predict` on real Spark local[2]: batch from a folder and from an images table, agreement with the
in-process ImageClassifier and with `evaluate`, the carried backbone's checks, and streaming exactly once across a
restart."""
import json
import shutil

import pytest

from datagen import jpeg_bytes, make_bundle, make_caltech_tree, tiny_weights
from sparkdl.config import FeaturizeConfig, PredictConfig, RunConfig, TrainConfig
from sparkdl.errors import DataError
from sparkdl.featurize.featurizer import featurize_images
from sparkdl.infer.classifier import ImageClassifier, Prediction
from sparkdl.infer.predict import predict_images, start_stream
from sparkdl.train.run import evaluate_model, train_head

pytestmark = pytest.mark.spark

COLUMNS = [("path", "string"), ("prediction", "string"), ("prediction_index", "int"), ("probability", "float"),
           ("top_k", "array<struct<label:string,probability:float>>")]  # fmt: skip


def test_folder_predictions_equal_the_classifier_and_rejects_are_listed(spark, caltech, tmp_path):
    model = make_bundle(tmp_path / "model", "tiny", weights=tiny_weights(tmp_path / "w.pth"))  # carried in the bundle
    out = str(tmp_path / "pred.parquet")
    result = predict_images(spark, PredictConfig(model_uri=str(model), output_uri=out, images_uri=str(caltech["root"]),
                                                 top_k=2, max_reject_fraction=0.2))  # fmt: skip
    assert (result.rows_in, result.rows_out) == (21, 18)
    assert result.rejects == {"corrupt_image": 1, "empty_file": 1, "not_an_image": 1}
    df = spark.read.parquet(out)
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == COLUMNS
    clf = ImageClassifier.load(model)
    prefix = "file:" + str(caltech["root"]) + "/"
    rows = {r["path"][len(prefix):]: r for r in df.collect()}
    assert sorted(rows) == caltech["good"]
    expected = clf.predict([(caltech["root"] / rel).read_bytes() for rel in caltech["good"]], top_k=2)
    for rel, want in zip(caltech["good"], expected):
        got = rows[rel]
        assert isinstance(want, Prediction)
        assert (got["prediction"], got["prediction_index"]) == (want.label, want.index)
        assert got["probability"] == pytest.approx(want.probability, abs=1e-6)
        assert [(t["label"], pytest.approx(t["probability"], abs=1e-6)) for t in got["top_k"]] == list(want.top_k)
    rejects = {r["path"][len(prefix):]: r["reason"] for r in spark.read.parquet(result.rejects_uri).collect()}
    assert rejects == caltech["bad"]
    meta = json.loads(open(result.meta_uri).read())
    assert meta["model_sha256"] == clf.model_sha256 and meta["labels"] == clf.labels and meta["top_k"] == 2


def test_predict_on_an_images_table_agrees_with_evaluate(spark, ingested, tmp_path):
    """ingest -> featurize -> train -> predict on the images table: predict's test accuracy is evaluate's."""
    feats = featurize_images(spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"),
                                                    backbone="tiny"))  # fmt: skip
    model = tmp_path / "model"
    train_head(spark, feats.output_uri, model, TrainConfig(run=RunConfig(workers=2), epochs=3, batch_size_per_worker=4))
    config = json.loads((model / "config.json").read_text())
    assert config["backbone"]["carried"]["kind"] == "seeded"
    result = predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "p.parquet"),
                                                 table_uri=ingested.output_uri))  # fmt: skip
    df = spark.read.parquet(result.output_uri)
    assert {"label", "label_index", "split"} <= set(df.columns)
    assert result.accuracy["test"] == pytest.approx(evaluate_model(spark, model, feats.output_uri, "test").accuracy)
    assert result.split_counts == ingested.split_counts


def test_the_carried_backbone_is_checked_before_any_work(spark, caltech, tmp_path):
    images = str(caltech["root"])
    # a features-only model (no backbone) scores features, not images
    model = make_bundle(tmp_path / "m1", "tiny")
    cfg = json.loads((model / "config.json").read_text())
    cfg["backbone"] = {}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"the model has no backbone .*scores features"):
        predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "a.parquet"), images_uri=images))
    # a backbone file that is not the one the head was trained with
    model = make_bundle(tmp_path / "m2", "tiny", weights=tiny_weights(tmp_path / "w.pth"))
    with open(model / "backbone.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(DataError, match=r"backbone.safetensors has sha256 [0-9a-f]{16}… but the model was trained with [0-9a-f]{16}…"):
        predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "b.parquet"), images_uri=images))
    # a head whose input does not fit the backbone: both numbers, on the driver
    model = make_bundle(tmp_path / "m3", "tiny")
    cfg = json.loads((model / "config.json").read_text())
    cfg["backbone"]["name"] = "efficientnet_lite0"
    cfg["backbone"]["carried"] = {"kind": "seeded"}
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match=r"the head takes 16-d features but its backbone efficientnet_lite0 gives 1280-d"):
        predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "c.parquet"), images_uri=images))
    # a referenced weights file (--no-embed-backbone) that is gone
    weights = tiny_weights(tmp_path / "ref.pth")
    model = make_bundle(tmp_path / "m4", "tiny", weights=weights, embed=False)
    assert not (model / "backbone.safetensors").exists()
    weights.unlink()
    with pytest.raises(DataError, match=r"ref.pth does not exist here"):
        predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "d.parquet"), images_uri=images))
    # and an output inside the model directory
    with pytest.raises(DataError, match=r"^predict: the output predictions table .* lies inside the input model"):
        predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(model / "p.parquet"), images_uri=images))


def test_streaming_predicts_every_image_exactly_once_across_a_restart(spark, tmp_path):
    model = make_bundle(tmp_path / "model", "tiny")
    inbox = tmp_path / "inbox"
    (inbox / "day1").mkdir(parents=True)
    for i in range(5):
        (inbox / "day1" / f"img{i}.jpg").write_bytes(jpeg_bytes(i))
    (inbox / "day1" / "broken.jpg").write_bytes(b"not a jpeg")
    config = PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "out"), images_uri=str(inbox), stream=True,
                           checkpoint_uri=str(tmp_path / "checkpoint"))  # fmt: skip
    first = start_stream(spark, config)
    first.query.awaitTermination()
    first.stop()
    # new images arrive while the query is down (written elsewhere, then moved in whole)
    staging = tmp_path / "staging"
    staging.mkdir()
    for i in range(5, 9):
        (staging / f"img{i}.jpg").write_bytes(jpeg_bytes(i))
    shutil.move(str(staging), str(inbox / "day2"))
    second = start_stream(spark, config)  # same checkpoint: continues where the first stopped
    second.query.awaitTermination()
    second.stop()
    rows = spark.read.parquet(config.output_uri).collect()
    names = sorted(r["path"].rsplit("/", 1)[1] for r in rows)
    assert names == sorted([f"img{i}.jpg" for i in range(9)] + ["broken.jpg"])  # each exactly once
    broken = [r for r in rows if r["path"].endswith("broken.jpg")][0]
    assert broken["prediction"] is None and broken["reject_reason"] == "not_an_image"
    clf = ImageClassifier.load(model)
    good = {r["path"].rsplit("/", 1)[1]: r["prediction"] for r in rows if r["reject_reason"] is None}
    assert good == {f"img{i}.jpg": clf.predict([jpeg_bytes(i)])[0].label for i in range(9)}


def test_the_cli_streams_available_now_and_refuses_bad_options(tmp_path):
    from test_cli import one_line_error, run

    model = make_bundle(tmp_path / "model", "tiny")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(3):
        (inbox / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    res = run("predict", "--model", str(model), "--images", str(inbox), "--output", str(out), "--stream",
              "--checkpoint", str(ckpt), "--available-now", "--json", "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["images"] == 3
    no_ckpt = run("predict", "--model", str(model), "--images", str(inbox), "--output", str(out), "--stream", "--quiet")
    assert no_ckpt.returncode == 1
    assert "needs --checkpoint" in one_line_error(no_ckpt.stderr)


def test_the_readme_kafka_recipe_on_a_key_value_stream(spark, tmp_path):
    """README's Kafka snippet, with a Parquet stream of (key, value) rows standing in for the kafka source."""
    from sparkdl.infer.predict import predict_frame, ship_model

    model = make_bundle(tmp_path / "model", "tiny")
    src = tmp_path / "topic"
    spark.createDataFrame([(f"msg-{i}", jpeg_bytes(i)) for i in range(4)], "key string, value binary").write.parquet(str(src))
    stream = (spark.readStream.schema("key string, value binary").parquet(str(src))
              .selectExpr("CAST(key AS STRING) AS path", "value AS image"))  # fmt: skip
    predicted, spec_bc = predict_frame(stream, ship_model(spark, str(model)), top_k=5)
    query = (predicted.writeStream.format("parquet").option("checkpointLocation", str(tmp_path / "ck"))
             .trigger(availableNow=True).start(str(tmp_path / "out")))  # fmt: skip
    query.awaitTermination()
    spec_bc.destroy()
    clf = ImageClassifier.load(model)
    got = {r["path"]: r["prediction"] for r in spark.read.parquet(str(tmp_path / "out")).collect()}
    assert got == {f"msg-{i}": clf.predict([jpeg_bytes(i)])[0].label for i in range(4)}


def test_train_embeds_a_user_weights_file_or_references_it(spark, ingested, tmp_path):
    weights = tiny_weights(tmp_path / "tiny.pth")
    feats = featurize_images(spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"),
                                                    backbone="tiny", weights=str(weights)))  # fmt: skip
    quick = TrainConfig(run=RunConfig(workers=1, execution="rounds"), epochs=1)
    train_head(spark, feats.output_uri, tmp_path / "embedded", quick)
    train_head(spark, feats.output_uri, tmp_path / "referenced", quick, embed_backbone=False)
    embedded = json.loads((tmp_path / "embedded" / "config.json").read_text())["backbone"]["carried"]
    referenced = json.loads((tmp_path / "referenced" / "config.json").read_text())["backbone"]["carried"]
    assert embedded["kind"] == "bundle" and (tmp_path / "embedded" / "backbone.safetensors").is_file()
    assert referenced == {"kind": "reference", "uri": str(weights), "sha256": embedded["source_sha256"]}
    images = [jpeg_bytes(i) for i in range(4)]
    a, b = ImageClassifier.load(tmp_path / "embedded"), ImageClassifier.load(tmp_path / "referenced")
    assert [p.probability for p in a.predict(images)] == [p.probability for p in b.predict(images)]
    # the weights file changed after featurize: embedding is refused before training, naming both digests
    tiny_weights(weights)  # same values ...
    with open(weights, "ab") as f:
        f.write(b"\0")  # ... but not the same file
    with pytest.raises(DataError, match=r"tiny.pth has sha256 [0-9a-f]{16}… but the model was trained with [0-9a-f]{16}…"):
        train_head(spark, feats.output_uri, tmp_path / "again", quick)
    assert not (tmp_path / "again").exists()
