"""Featurize on real Spark local[2]: shapes, determinism, equality with a plain torch call, rejects, weights
shipping, one model per Python worker."""
import json
import os

import numpy as np
import pytest
import torch

from datagen import jpeg_bytes
from sparkdl.config import FeaturizeConfig
from sparkdl.data.decode import open_image
from sparkdl.errors import DataError
from sparkdl.featurize import weights as wio
from sparkdl.featurize.backbones import load_backbone
from sparkdl.featurize.featurizer import ImageFeaturizer, featurize_images

pytestmark = pytest.mark.spark


def plain_torch_features(backbone, images, weights=None):
    """The reference: the same decode + preprocessing + backbone, called directly, one image at a time."""
    model = load_backbone(backbone, weights=weights)
    out = []
    for data in images:
        img = open_image(data, draft_size=model.preprocess.resize)
        out.append(model(torch.from_numpy(model.preprocess.to_array(img)[None]))[0].numpy())
    return np.stack(out)


def _features_by_path(spark, uri):
    return {r["path"]: np.asarray(r["features"], dtype=np.float32) for r in spark.read.parquet(uri).collect()}


@pytest.fixture(scope="module")
def tiny_features(spark, ingested, tmp_path_factory):
    out = tmp_path_factory.mktemp("feat") / "features.parquet"
    return featurize_images(spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(out), backbone="tiny"))


def test_schema_shapes_and_meta(spark, ingested, tiny_features):
    assert tiny_features.rows_in == tiny_features.rows_out == 18
    assert tiny_features.rejects == {}
    assert tiny_features.partitions >= 2  # one input file, spread over both cores
    df = spark.read.parquet(tiny_features.output_uri)
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("path", "string"), ("label", "string"), ("label_index", "int"), ("split", "string"), ("features", "array<float>"),
        ("sha256", "string"),
    ]
    assert {len(r["features"]) for r in df.collect()} == {16}
    images = {r["path"]: (r["label"], r["label_index"], r["split"]) for r in spark.read.parquet(ingested.output_uri).collect()}
    assert {r["path"]: (r["label"], r["label_index"], r["split"]) for r in df.collect()} == images
    meta = json.loads(open(tiny_features.meta_uri).read())
    assert meta["labels"] == ["ak47", "american-flag", "backpack"]
    assert meta["backbone"]["name"] == "tiny" and meta["feature_dim"] == 16
    assert meta["split_counts"] == ingested.split_counts


def test_deterministic_across_runs_and_partitionings(spark, ingested, tiny_features, tmp_path):
    again = featurize_images(
        spark,
        FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"), backbone="tiny", partitions=5, batch_size=4),
    )
    a, b = _features_by_path(spark, tiny_features.output_uri), _features_by_path(spark, again.output_uri)
    assert a.keys() == b.keys()
    for p in a:
        np.testing.assert_allclose(a[p], b[p], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["tiny", "efficientnet_lite0"])
def test_spark_features_equal_plain_torch(spark, ingested, tmp_path, backbone):
    rows = spark.read.parquet(ingested.output_uri).orderBy("path").collect()
    expected = plain_torch_features(backbone, [bytes(r["image"]) for r in rows])
    result = featurize_images(
        spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"), backbone=backbone, batch_size=5)
    )
    got = _features_by_path(spark, result.output_uri)
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(np.stack([got[r["path"]] for r in rows]), expected, rtol=1e-4, atol=1e-5)


def test_weights_file_is_shipped_and_used(spark, ingested, tiny_features, tmp_path):
    base = load_backbone("tiny").module.state_dict()
    g = torch.Generator().manual_seed(11)
    path = tmp_path / "tiny-custom.safetensors"
    wio.save_state_dict({k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in base.items()}, path)
    result = featurize_images(
        spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"), backbone="tiny", weights=str(path))
    )
    assert result.backbone["weights"] == str(path)
    assert result.backbone["weights_sha256"] == wio.file_digest(path)
    rows = spark.read.parquet(ingested.output_uri).orderBy("path").collect()
    expected = plain_torch_features("tiny", [bytes(r["image"]) for r in rows], weights=path)
    got = _features_by_path(spark, result.output_uri)
    seeded = _features_by_path(spark, tiny_features.output_uri)
    np.testing.assert_allclose(np.stack([got[r["path"]] for r in rows]), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got[rows[0]["path"]], seeded[rows[0]["path"]])


def test_undecodable_rows_are_counted_not_dropped(spark, tmp_path):
    good = [(f"file:/x/c{i % 2}/{i}.jpg", f"c{i % 2}", i % 2, "train", jpeg_bytes(i)) for i in range(6)]
    bad = [("file:/x/c0/broken.jpg", "c0", 0, "train", jpeg_bytes(50, size=(100, 100))[:400]),
           ("file:/x/c1/empty.jpg", "c1", 1, "test", b"")]  # fmt: skip
    src = tmp_path / "images.parquet"
    spark.createDataFrame(good + bad, "path string, label string, label_index int, split string, image binary").write.parquet(str(src))
    out = tmp_path / "features.parquet"
    with pytest.raises(DataError, match=r"featurize: 2 of 8 rows rejected \(25.00%\)"):
        featurize_images(spark, FeaturizeConfig(input_uri=str(src), output_uri=str(out), backbone="tiny"))
    assert not out.exists()
    result = featurize_images(
        spark, FeaturizeConfig(input_uri=str(src), output_uri=str(out), backbone="tiny", max_reject_fraction=0.3)
    )
    assert (result.rows_in, result.rows_out) == (8, 6)
    assert result.rejects == {"corrupt_image": 1, "empty_file": 1}
    rejects = {r["path"]: (r["stage"], r["reason"]) for r in spark.read.parquet(result.rejects_uri).collect()}
    assert rejects == {"file:/x/c0/broken.jpg": ("featurize", "corrupt_image"), "file:/x/c1/empty.jpg": ("featurize", "empty_file")}
    meta = json.loads(open(result.meta_uri).read())
    assert meta["labels"] == ["c0", "c1"] and meta["label_source"] == "table"  # no ingest meta: derived


def test_transformer_keeps_invalid_rows_with_error(spark, tmp_path):
    df = spark.createDataFrame([("a", jpeg_bytes(1)), ("b", b"nope")], "id string, img binary")
    out = ImageFeaturizer(inputCol="img", outputCol="f", backbone="tiny").transform(df).orderBy("id").collect()
    assert out[0]["featurize_error"] is None and len(out[0]["f"]) == 16
    assert out[1]["f"] is None and out[1]["featurize_error"].startswith("not_an_image:")
    assert ImageFeaturizer().getOrDefault("backbone") == "efficientnet_lite0"
    with pytest.raises(Exception, match="not_an_image"):
        ImageFeaturizer(inputCol="img", backbone="tiny", handleInvalid="error").transform(df).collect()


def test_wrong_table_and_wrong_weights_fail_before_the_job(spark, ingested, tmp_path):
    wrong = tmp_path / "wrong.parquet"
    spark.createDataFrame([("a", 1)], "path string, n int").write.parquet(str(wrong))
    with pytest.raises(DataError, match="is not a valid images table.*column 'label' is missing"):
        featurize_images(spark, FeaturizeConfig(input_uri=str(wrong), output_uri=str(tmp_path / "o.parquet"), backbone="tiny"))
    w = tmp_path / "tiny.pth"
    wio.save_state_dict(load_backbone("tiny").module, w)
    from sparkdl.errors import ConfigError

    with pytest.raises(ConfigError, match="do not fit the EfficientNet architecture"):
        featurize_images(
            spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "o.parquet"), weights=str(w))
        )


def _probe_workers(spark, n=8):
    """(pid, models loaded so far, torch threads) from the Python workers that run SQL Arrow tasks."""

    def probe(batches):
        import pyarrow as pa
        import torch as t

        from sparkdl.featurize.featurizer import WORKER_MODELS

        for _ in batches:
            pass
        yield pa.RecordBatch.from_pydict(
            {"pid": [os.getpid()], "loads": [WORKER_MODELS.loads], "threads": [t.get_num_threads()]}
        )

    rows = spark.range(n).repartition(n).mapInArrow(probe, "pid long, loads long, threads long").collect()
    return {r["pid"]: (r["loads"], r["threads"]) for r in rows}


def test_one_model_per_python_worker_and_one_thread_per_task(spark, ingested, tmp_path):
    before = _probe_workers(spark)
    path = tmp_path / "tiny-unique.pth"  # a key no worker has loaded yet
    wio.save_state_dict(load_backbone("tiny").module, path)
    featurize_images(
        spark,
        FeaturizeConfig(
            input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"), backbone="tiny", weights=str(path), partitions=8
        ),
    )
    after = _probe_workers(spark)
    new_loads = sum(loads - before.get(pid, (0, 0))[0] for pid, (loads, _) in after.items())
    assert 1 <= new_loads <= len(after) < 8  # 8 partitions, but each worker built the model once
    assert {threads for _, threads in after.values()} == {1}  # spark.task.cpus = 1


def test_weights_rewritten_in_place_are_not_used_stale(spark, ingested, tmp_path):
    path = tmp_path / "tiny-rewritten.pth"
    state = load_backbone("tiny").module.state_dict()
    wio.save_state_dict(state, path)
    cfg = dict(input_uri=ingested.output_uri, backbone="tiny", weights=str(path), overwrite=True)
    featurize_images(spark, FeaturizeConfig(output_uri=str(tmp_path / "a.parquet"), **cfg))
    torch.save({"epoch": 2, "state_dict": {k: v + 1 for k, v in state.items()}}, path)  # same name, new content
    with pytest.raises(Exception, match="changed after Spark shipped it"):
        featurize_images(spark, FeaturizeConfig(output_uri=str(tmp_path / "b.parquet"), **cfg))
