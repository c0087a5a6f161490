"""Images from Spark's own image source (``spark.read.format("image")``) next to encoded bytes (``binaryFile``):
the same pixels, the same features and predictions, invalid rows as reasons; ImageFeaturizer as a Spark ML citizen
(type refusal, handleInvalid, keepInputCol, Params validated when set, save/load); the featurize stage's job group.
"""
import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datagen import make_bundle
from sparkdl.config import FeaturizeConfig
from sparkdl.data.decode import image_from_struct, open_image
from sparkdl.errors import ConfigError, DataError
from sparkdl.featurize.featurizer import ImageFeaturizer, featurize_images

pytestmark = pytest.mark.spark

GOOD = ("rgb.png", "gray.png", "rgba.png")


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def png_dir(tmp_path_factory) -> Path:
    """Lossless PNGs (Java's and Pillow's decoders agree on every pixel): RGB, gray, RGBA, plus a truncated one."""
    root = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(7)
    (root / "rgb.png").write_bytes(_png(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), "RGB"))
    (root / "gray.png").write_bytes(_png(rng.integers(0, 256, (33, 29), dtype=np.uint8), "L"))
    rgba = rng.integers(0, 256, (36, 44, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(128, 256, (36, 44), dtype=np.uint8)  # translucent, never fully transparent
    (root / "rgba.png").write_bytes(_png(rgba, "RGBA"))
    whole = _png(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), "RGB")
    (root / "broken.png").write_bytes(whole[: len(whole) // 2])
    return root


def _structs(spark, root: Path):
    return spark.read.format("image").option("dropInvalid", False).load(str(root))


def _binaries(spark, root: Path):
    return spark.read.format("binaryFile").load(str(root))


def _origin_as_path():
    from pyspark.sql import functions as F

    return F.col("image.origin").alias("path")


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def test_struct_rows_decode_to_the_same_pixels_as_the_bytes(spark, png_dir):
    structs = {r["image"]["origin"]: r["image"].asDict() for r in _structs(spark, png_dir).collect()}
    binaries = {r["path"]: bytes(r["content"]) for r in _binaries(spark, png_dir).collect()}
    # the image source's origin is a URI string (file:///dir/x.png), binaryFile's path Hadoop's (file:/dir/x.png)
    assert {o.replace("file:///", "file:/", 1) for o in structs} == binaries.keys()
    assert {(_name(o), s["nChannels"], s["mode"]) for o, s in structs.items()} == {
        ("rgb.png", 3, 16), ("gray.png", 1, 0), ("rgba.png", 4, 24), ("broken.png", -1, -1),
    }  # fmt: skip
    for origin, row in structs.items():
        if _name(origin) in GOOD:
            want = np.asarray(open_image(binaries[origin.replace("file:///", "file:/", 1)]).convert("RGB"))
            assert np.array_equal(np.asarray(image_from_struct(row)), want), origin


def _features(spark, df, input_col: str, key: str, **params) -> dict:
    """{file name: (features or None, error)}; batchSize=1 so each image's forward pass is alone in both runs."""
    f = ImageFeaturizer(inputCol=input_col, randomInit=True, batchSize=1, keepInputCol=False, **params)
    return {_name(r[key]): (r["features"], r["featurize_error"]) for r in f.transform(df).collect()}


def test_both_sources_give_bit_identical_features_and_reasons(spark, png_dir):
    structs = _structs(spark, png_dir).select(_origin_as_path(), "image")
    by_struct = _features(spark, structs, "image", "path")
    by_bytes = _features(spark, _binaries(spark, png_dir), "content", "path")
    assert by_struct.keys() == by_bytes.keys() == {*GOOD, "broken.png"}
    for name in GOOD:
        a, b = np.asarray(by_struct[name][0], np.float32), np.asarray(by_bytes[name][0], np.float32)
        assert by_struct[name][1] is None and a.shape == (1280,) and np.abs(a).sum() > 0
        assert np.array_equal(a, b), name
    features, error = by_struct["broken.png"]
    assert features is None and error.startswith("corrupt_image: Spark's image source could not decode file:")
    assert "Traceback" not in error
    assert by_bytes["broken.png"][0] is None and by_bytes["broken.png"][1].split(":")[0] in ("corrupt_image", "not_an_image")


def test_handle_invalid_keep_error_skip(spark, png_dir):
    structs = _structs(spark, png_dir)
    tiny = dict(inputCol="image", backbone="tiny")
    kept = ImageFeaturizer(**tiny).transform(structs).collect()
    assert len(kept) == 4 and sum(r["features"] is None for r in kept) == 1
    skipped = ImageFeaturizer(handleInvalid="skip", **tiny).transform(structs).collect()
    assert sorted(_name(r["image"]["origin"]) for r in skipped) == sorted(GOOD)
    assert all(r["featurize_error"] is None and len(r["features"]) == 16 for r in skipped)
    with pytest.raises(Exception, match="corrupt_image: Spark's image source could not decode"):
        ImageFeaturizer(handleInvalid="error", **tiny).transform(structs).collect()


def test_keep_input_col(spark, png_dir):
    structs, binaries = _structs(spark, png_dir), _binaries(spark, png_dir)
    assert ImageFeaturizer(backbone="tiny").transform(structs).columns == ["image", "features", "featurize_error"]
    dropped = ImageFeaturizer(backbone="tiny", keepInputCol=False).transform(structs)
    assert dropped.columns == ["features", "featurize_error"]
    out = ImageFeaturizer(backbone="tiny", inputCol="content", outputCol="f").transform(binaries)
    assert out.columns == ["path", "modificationTime", "length", "content", "f", "featurize_error"]
    row = out.filter(out.path.endswith("rgb.png")).collect()[0]
    assert row["content"] == (png_dir / "rgb.png").read_bytes() and len(row["f"]) == 16
    with pytest.raises(DataError, match=r"^outputCol 'content' is already a column of the output: set another outputCol$"):
        ImageFeaturizer(backbone="tiny", inputCol="content", outputCol="content").transform(binaries)


def test_an_input_column_of_another_type_is_refused_in_one_line(spark):
    df = spark.createDataFrame([(1, (2, "x"))], "image int, s struct<a:int,b:string>")
    want = ("inputCol 'image' has type int; ImageFeaturizer takes binary (encoded image bytes, e.g. binaryFile's "
            "content) or Spark's image struct (spark.read.format('image'))")  # fmt: skip
    with pytest.raises(DataError) as exc:
        ImageFeaturizer().transform(df)
    assert str(exc.value) == want
    with pytest.raises(DataError, match=r"^inputCol 's' has type struct<a:int,b:string>; ImageFeaturizer takes binary"):
        ImageFeaturizer(inputCol="s").transform(df)
    with pytest.raises(DataError, match=r"^inputCol 'nope' not found"):
        ImageFeaturizer(inputCol="nope").transform(df)


@pytest.mark.parametrize(
    "name, value, match",
    [
        ("backbone", "resnet50", "Param backbone must be one of efficientnet_lite0, tiny, vgg16, got 'resnet50'"),
        ("handleInvalid", "drop", "Param handleInvalid must be one of keep, error, skip, got 'drop'"),
        ("batchSize", 0, "Param batchSize must be an integer >= 1, got 0"),
        ("threadsPerTask", -1, "Param threadsPerTask must be an integer >= 0, got -1"),
        ("errorCol", "", "Param errorCol must be a non-empty column name"),
        ("keepInputCol", "no", "Param keepInputCol must be True or False"),
    ],
)
def test_params_are_validated_when_set(name, value, match):
    f = ImageFeaturizer()
    setter = getattr(f, "set" + name[0].upper() + name[1:])
    with pytest.raises(ConfigError, match=match):
        setter(value)
    with pytest.raises(ConfigError, match=match):
        ImageFeaturizer(**{name: value})
    with pytest.raises(ConfigError, match=match):
        f.setParams(**{name: value})
    assert f.getOrDefault(name) == ImageFeaturizer().getOrDefault(name)  # the refused value was not kept


def test_setters_getters_and_set_params():
    f = ImageFeaturizer().setParams(backbone="tiny", handleInvalid="skip", keepInputCol=False)
    assert (f.getBackbone(), f.getHandleInvalid(), f.getKeepInputCol(), f.getBatchSize()) == ("tiny", "skip", False, 32)
    assert f.setBatchSize(4).getBatchSize() == 4
    with pytest.raises(ConfigError, match="ImageFeaturizer has no Param batch_size"):
        f.setParams(batch_size=4)


@pytest.mark.parametrize("params", [{}, dict(outputCol="feats", batchSize=7, backbone="tiny", handleInvalid="skip",
                                              keepInputCol=False, threadsPerTask=2, errorCol="err")])  # fmt: skip
def test_save_and_load_keep_every_param(spark, tmp_path, params):
    f = ImageFeaturizer(**params)
    f.write().save(str(tmp_path / "featurizer"))
    loaded = ImageFeaturizer.load(str(tmp_path / "featurizer"))
    assert type(loaded) is ImageFeaturizer and loaded.uid == f.uid
    assert len(f.params) == 13  # + precision, runtime, device (issue 14)
    for p in f.params:
        assert loaded.getOrDefault(p.name) == f.getOrDefault(p.name), p.name
        assert loaded.isSet(p.name) == f.isSet(p.name), p.name
    assert {p.name for p in loaded.params if loaded.isSet(p)} == set(params)


def test_featurize_stage_jobs_carry_a_group_and_a_description(spark, png_dir, tmp_path):
    rows = [(f"file:/p/{n}", "c", 0, "train", (png_dir / n).read_bytes()) for n in GOOD]
    src = str(tmp_path / "images.parquet")
    spark.createDataFrame(rows, "path string, label string, label_index int, split string, image binary").write.parquet(src)
    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup("sparkdl-featurize"))  # earlier tests' featurize runs, if any
    result = featurize_images(spark, FeaturizeConfig(input_uri=src, output_uri=str(tmp_path / "f.parquet"), backbone="tiny"))
    assert spark.read.parquet(result.output_uri).columns == ["path", "label", "label_index", "split", "features", "sha256"]
    deadline = time.monotonic() + 20
    while not set(tracker.getJobIdsForGroup("sparkdl-featurize")) - before and time.monotonic() < deadline:
        time.sleep(0.2)  # the status store follows the listener bus
    new = set(tracker.getJobIdsForGroup("sparkdl-featurize")) - before
    assert new
    jobs = spark.sparkContext._jsc.sc().statusStore().jobsList(None)
    described = [jobs.apply(i).description().get() for i in range(jobs.size()) if jobs.apply(i).jobId() in new]
    assert len(described) == len(new) and all(d.startswith(f"sparkdl featurize: tiny on {src}") for d in described)
    assert spark.sparkContext.getLocalProperty("spark.jobGroup.id") is None  # restored after the stage


def test_predict_frame_and_the_classifier_take_the_image_struct(spark, png_dir, tmp_path):
    from sparkdl.infer.classifier import ImageClassifier, Prediction, Reject
    from sparkdl.infer.predict import predict_frame, ship_model

    model = make_bundle(tmp_path / "model", "tiny")
    clf = ImageClassifier.load(model)
    structs = _structs(spark, png_dir)
    by_origin = {r["image"]["origin"]: r["image"].asDict() for r in structs.collect()}
    shipped = ship_model(spark, str(model))
    try:
        predicted, spec_bc = predict_frame(structs, shipped, top_k=2)
        rows = {_name(r["path"]): r for r in predicted.collect()}  # path: the struct's origin
        spec_bc.destroy()
        with pytest.raises(DataError, match=r"^column 'image' has type int; predict_frame takes binary"):
            predict_frame(spark.createDataFrame([(1,)], "image int"), shipped)
    finally:
        shipped.close()
    assert predicted.columns[0] == "path" and "image" not in predicted.columns
    assert rows.keys() == {*GOOD, "broken.png"}
    for origin, struct in by_origin.items():
        got, from_struct = rows[_name(origin)], clf.predict([struct], top_k=2)[0]
        if _name(origin) == "broken.png":
            assert isinstance(from_struct, Reject) and from_struct.reason == "corrupt_image"
            assert got["prediction"] is None and got["reject_reason"] == "corrupt_image"
            continue
        from_bytes = clf.predict([(png_dir / _name(origin)).read_bytes()], top_k=2)[0]
        assert isinstance(from_struct, Prediction) and from_struct == from_bytes
        assert (got["prediction"], got["reject_reason"]) == (from_bytes.label, None)
        assert got["probability"] == pytest.approx(from_bytes.probability, abs=1e-6)
