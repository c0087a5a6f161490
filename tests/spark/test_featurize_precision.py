"""Precision and runtime on real Spark, with real images (the demo's handwritten digits) and the real pretrained
EfficientNet-Lite0 weights: the default is faithful and recorded; a bundle carries the numerics and predict computes
the features the same way."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sparkdl.config import FeaturizeConfig, IngestConfig, RunConfig, TrainConfig
from sparkdl.data.images import ingest_images
from sparkdl.demo import write_digits_tree
from sparkdl.featurize.backbones import load_backbone
from sparkdl.featurize.featurizer import featurize_images
from sparkdl.featurize.precision import Numerics, cpu_has_bf16
from sparkdl.infer.classifier import ImageClassifier
from sparkdl.train.run import train_head

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def digits(spark, tmp_path_factory):
    """40 real scans per digit (400 images), ingested once."""
    work = tmp_path_factory.mktemp("digits")
    write_digits_tree(work / "tree", max_per_class=40)
    return ingest_images(spark, IngestConfig(images_uri=str(work / "tree"), output_uri=str(work / "images.parquet")))


def _table(spark, uri):
    rows = spark.read.parquet(uri).orderBy("path").collect()
    return [r["path"] for r in rows], np.array([r["features"] for r in rows], dtype=np.float64), rows


def min_cosine(a, b) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def head_accuracy(features, rows) -> float:
    """A softmax head (multinomial logistic regression) trained on split=train, scored on the other rows."""
    from sklearn.linear_model import LogisticRegression

    train = np.array([r["split"] == "train" for r in rows])
    labels = np.array([r["label_index"] for r in rows])
    model = LogisticRegression(max_iter=2000, C=1.0).fit(features[train], labels[train])
    return float((model.predict(features[~train]) == labels[~train]).mean())


@pytest.mark.slow
def test_the_default_on_lite0_is_faithful_fast_fp32_and_recorded(spark, digits, tmp_path):
    def featurize(name, **kw):
        return featurize_images(spark, FeaturizeConfig(input_uri=digits.output_uri, output_uri=str(tmp_path / name), **kw))

    default = featurize("auto.parquet")
    reference = featurize("torch.parquet", precision="fp32", runtime="torch")
    meta = json.loads(open(default.meta_uri).read())
    assert meta["backbone"]["numerics"] == {"precision": "fp32", "runtime": "onnxruntime", "device": "auto", "fallback_rows": 0}
    assert reference.backbone["numerics"]["runtime"] == "torch"
    paths, auto_f, rows = _table(spark, default.output_uri)
    ref_paths, ref_f, _ = _table(spark, reference.output_uri)
    assert paths == ref_paths and len(paths) == 400
    assert min_cosine(auto_f, ref_f) >= 0.99999  # the issue asks >= 0.999 of bf16, >= 0.99 of int8
    # ~120 held-out images: one image is 0.8 point, so this asks for at most one; the demo's full 1,797 (0.5 point)
    # are compared by bench/featurize.py --fidelity (BENCHMARKS.md)
    held_out = sum(r["split"] != "train" for r in rows)
    assert abs(head_accuracy(auto_f, rows) - head_accuracy(ref_f, rows)) <= 1 / held_out + 1e-9


def test_bf16_is_recorded_carried_into_the_bundle_and_used_by_predict(spark, ingested, tmp_path):
    feats = featurize_images(spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=str(tmp_path / "f.parquet"),
                                                    backbone="tiny", precision="bf16"))  # fmt: skip
    bf16_here = cpu_has_bf16()
    assert feats.backbone["numerics"] == {"precision": "bf16", "runtime": "torch", "device": "auto",
                                          "fallback_rows": 0 if bf16_here else feats.rows_out}  # fmt: skip
    model = tmp_path / "model"
    train_head(spark, feats.output_uri, model, TrainConfig(run=RunConfig(workers=2), epochs=1, batch_size_per_worker=4))
    assert json.loads((model / "config.json").read_text())["backbone"]["numerics"]["precision"] == "bf16"
    clf = ImageClassifier.load(model)
    assert clf._backbone.numerics == (Numerics("bf16", "torch") if bf16_here else Numerics("fp32", "torch"))
    # the classifier's backbone computes what featurize computed, image by image
    _paths, table, rows = _table(spark, feats.output_uri)
    images = {r["path"]: bytes(r["image"]) for r in spark.read.parquet(ingested.output_uri).collect()}
    batch = np.stack([clf.decode(images[r["path"]]) for r in rows])
    import torch

    np.testing.assert_allclose(clf._backbone(torch.from_numpy(batch)).numpy(), table, rtol=0, atol=1e-6)
    fp32 = load_backbone("tiny")(torch.from_numpy(batch)).numpy()
    assert bf16_here == (not np.array_equal(fp32, table))  # bf16 really ran where the CPU has it


@pytest.mark.slow
@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 instructions: bf16 runs fp32 (tested above)")
def test_vgg16_bf16_features_are_within_the_fidelity_bar(spark, digits):
    """VGG16 with seeded weights (no pretrained VGG16 ships here): bf16 vs fp32 on 16 real digit images."""
    import torch

    rows = spark.read.parquet(digits.output_uri).orderBy("path").limit(16).collect()
    fp32 = load_backbone("vgg16", random_init=True)
    bf16 = load_backbone("vgg16", random_init=True, numerics=Numerics("bf16", "torch"))
    batch = torch.from_numpy(np.stack([fp32.preprocess.to_array(_image(r["image"])) for r in rows]))
    assert min_cosine(fp32(batch).double().numpy(), bf16(batch).double().numpy()) >= 0.999


def _image(data):
    from sparkdl.data.decode import decode_image

    return decode_image(bytes(data), draft_size=256)
