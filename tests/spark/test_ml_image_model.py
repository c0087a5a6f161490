"""ImageClassifierModel: a self-contained bundle as a Spark ML Transformer over binaryFile bytes or Spark's image
struct; same answers as ImageClassifier; Spark ML persistence (Pipeline) with the bundle as data."""
import pytest

from datagen import make_bundle
from sparkdl.errors import DataError
from sparkdl.infer.classifier import ImageClassifier
from sparkdl.ml.image import ImageClassifierModel

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def images(spark, caltech):
    from pyspark.sql import functions as F

    return spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(caltech["root"])).select(
        "path", F.col("content").alias("image")).cache()


def test_scores_like_the_classifier_and_keeps_bad_images(spark, images, tmp_path):
    from pyspark.ml.feature import IndexToString

    bundle = make_bundle(tmp_path / "model", "tiny")
    model = ImageClassifierModel.fromBundle(str(bundle)).setPredictionCol("pred")
    out = model.transform(images)
    assert out.schema["probability"].dataType.simpleString() == "vector"
    rows = out.collect()
    ref = ImageClassifier.load(bundle).predict([r["image"] for r in rows])
    for r, p in zip(rows, ref):
        if hasattr(p, "reason"):
            assert r["pred"] is None and r["prediction_error"].startswith(p.reason)
        else:
            assert int(r["pred"]) == p.index and r["prediction_error"] is None
            assert abs(r["probability"][p.index] - p.probability) < 1e-6
    # the tree's corrupt JPEG and text file (binaryFile does not list its empty file)
    assert sum(r["prediction_error"] is not None for r in rows) == 2
    named = IndexToString(inputCol="pred", outputCol="name").transform(out.filter("pred is not null"))
    assert {r["name"] for r in named.collect()} <= set(model.labels)
    assert model.copy({model.handleInvalid: "skip"}).transform(images).count() == len(rows) - 2
    with pytest.raises(DataError, match="inputCol 'path' has type string"):
        model.copy({model.inputCol: "path"}).transform(images)


def test_pipeline_save_load_carries_the_bundle(spark, images, tmp_path):
    from pyspark.ml import PipelineModel

    bundle = make_bundle(tmp_path / "model", "tiny")
    model = ImageClassifierModel.fromBundle(str(bundle)).setBatchSize(4)
    PipelineModel(stages=[model]).write().save(str(tmp_path / "pipe"))
    assert (tmp_path / "pipe" / "stages").exists()
    loaded = PipelineModel.load(str(tmp_path / "pipe")).stages[0]
    assert isinstance(loaded, ImageClassifierModel) and loaded.getBatchSize() == 4 and loaded.uid == model.uid
    cols = ["path", "prediction", "probability"]
    a = sorted((tuple(r[c] for c in cols) for r in model.transform(images).collect()), key=lambda t: t[0])
    b = sorted((tuple(r[c] for c in cols) for r in loaded.transform(images).collect()), key=lambda t: t[0])
    assert a == b
