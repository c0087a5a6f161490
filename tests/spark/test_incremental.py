"""`featurize --incremental` on real Spark local[2] (ingest's content sha256 is checked in test_ingest): an incremental run
reuses unchanged rows (proved by marking them in the previous table), computes new and changed images, drops
removed ones, equals a full run, refuses a table made another way, and leaves the previous table as it was when it
fails."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from datagen import jpeg_bytes, make_caltech_tree
from sparkdl.config import FeaturizeConfig, IngestConfig
from sparkdl.data.images import ingest_images
from sparkdl.errors import ConfigError, DataError
from sparkdl.featurize.featurizer import featurize_images
from sparkdl.featurize.incremental import differences

pytestmark = pytest.mark.spark


def _ingest(spark, root, out):
    return ingest_images(spark, IngestConfig(images_uri=str(root), output_uri=str(out), overwrite=True, max_reject_fraction=0.5))


def _featurize(spark, images, out, **kw):
    kw.setdefault("backbone", "tiny")
    return featurize_images(spark, FeaturizeConfig(input_uri=images, output_uri=str(out), **kw))


def _by_path(spark, uri):
    return {r["path"]: (r["sha256"], np.array(r["features"])) for r in spark.read.parquet(uri).collect()}


def _mark_previous_rows(spark, uri, tmp_path):
    """Rewrite the table's data files with features + 1000 (its meta and run marker kept): a reused row shows it."""
    from pyspark.sql import functions as F

    marked = str(tmp_path / "marked.parquet")
    df = spark.read.parquet(uri)
    df.withColumn("features", F.transform("features", lambda x: x + F.lit(1000.0).cast("float"))).write.parquet(marked)
    table = tmp_path / uri.rsplit("/", 1)[-1]
    for part in table.glob("part-*"):
        part.unlink()
    for part in (tmp_path / "marked.parquet").glob("part-*"):
        shutil.copy(part, table / part.name)


def test_incremental_reuses_unchanged_rows_and_equals_a_full_run(spark, tmp_path):
    tree = make_caltech_tree(tmp_path / "tree", per_class=4, bad_files=False)
    root = tree["root"]
    images, out = tmp_path / "images.parquet", tmp_path / "features.parquet"
    _ingest(spark, root, images)
    first = _featurize(spark, str(images), out, incremental=True)  # no table yet: a full run
    assert first.incremental == {"enabled": True, "reused": 0, "computed": 12, "new": 12, "changed": 0, "dropped": 0,
                                 "previous_run_id": None}  # fmt: skip
    first_run_id = json.loads(open(first.meta_uri).read())["run_id"]
    _mark_previous_rows(spark, str(out), tmp_path)

    removed, changed = tree["good"][0], tree["good"][5]
    (root / removed).unlink()
    (root / changed).write_bytes(jpeg_bytes(seed=4242))
    for i in range(2):
        (root / tree["good"][-1]).with_name(f"new_{i}.jpg").write_bytes(jpeg_bytes(seed=777 + i))
    _ingest(spark, root, images)
    again = _featurize(spark, str(images), out, incremental=True)
    assert again.incremental["reused"] == 10 and again.incremental["dropped"] == 1
    assert (again.incremental["computed"], again.incremental["new"], again.incremental["changed"]) == (3, 2, 1)
    meta = json.loads(open(again.meta_uri).read())
    assert meta["incremental"] == again.incremental and meta["rows_out"] == 13
    assert meta["incremental"]["previous_run_id"] == first_run_id

    full = _featurize(spark, str(images), tmp_path / "full.parquet")
    assert full.incremental["enabled"] is False and full.incremental["computed"] == 13
    got, want = _by_path(spark, str(out)), _by_path(spark, full.output_uri)
    assert got.keys() == want.keys() and not any(p.endswith(removed) for p in got)
    for path, (sha, feats) in got.items():
        assert sha == want[path][0]
        computed = path.endswith((changed, "new_0.jpg", "new_1.jpg"))
        # reused rows carry the previous table's (marked) features; computed ones are fresh
        np.testing.assert_allclose(feats, want[path][1] + (0.0 if computed else 1000.0), rtol=1e-5, atol=1e-4)


def test_incremental_refuses_a_table_made_another_way_and_a_failure_keeps_the_previous_table(spark, tmp_path):
    tree = make_caltech_tree(tmp_path / "tree", per_class=2, bad_files=False)
    images, out = tmp_path / "images.parquet", tmp_path / "features.parquet"
    _ingest(spark, tree["root"], images)
    _featurize(spark, str(images), out)
    before = _by_path(spark, str(out))
    with pytest.raises(ConfigError, match=r"--incremental: .* was made another way \(numerics.precision: fp32 -> bf16\)"
                                          r": run without --incremental"):  # fmt: skip
        _featurize(spark, str(images), out, incremental=True, precision="bf16")
    with pytest.raises(ConfigError, match=r"name: tiny -> efficientnet_lite0.*feature_dim: 16 -> 1280"):
        _featurize(spark, str(images), out, incremental=True, backbone="efficientnet_lite0")
    # a failing incremental run (new rows whose bytes do not decode, over the reject limit) leaves the previous
    # table as it was
    df = spark.read.parquet(str(images))
    bad = spark.createDataFrame([(f"file:/gone/{i}.jpg", "ak47", 0, "train", b"not a jpeg", "0" * 64) for i in range(2)],
                                df.schema)  # fmt: skip
    df.unionByName(bad).write.parquet(str(tmp_path / "images2.parquet"))
    with pytest.raises(DataError, match="reject"):
        _featurize(spark, str(tmp_path / "images2.parquet"), out, incremental=True, max_reject_fraction=0.0)
    after = _by_path(spark, str(out))
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[p][1], before[p][1]) for p in before)


def test_differences_name_each_field():
    was = {"name": "vgg16", "cut": "fc2", "feature_dim": 4096, "weights": "/a/w.pth", "weights_sha256": "ab" * 32,
           "preprocess": {"crop": 224}, "numerics": {"precision": "bf16", "runtime": "torch"}}  # fmt: skip
    assert differences(was, {**was, "weights": "/moved/w.pth"}) == []  # same file content elsewhere
    now = {**was, "weights_sha256": "cd" * 32, "numerics": {"precision": "fp32", "runtime": "torch"}}
    assert differences(was, now) == ["weights_sha256: abababababababab… -> cdcdcdcdcdcdcdcd…", "numerics.precision: bf16 -> fp32"]
    assert differences({**was, "numerics": None}, {**was, "numerics": {"precision": "fp32", "runtime": "torch"}}) == []
