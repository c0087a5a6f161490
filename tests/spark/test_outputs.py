"""Outputs never destroy inputs and never destroy the previous result before the new one is complete
(hardening issue items 1-3), on real Spark local[2]."""
import json
import os
import shutil

import pytest

from datagen import make_caltech_tree, make_features_table
from sparkdl.bundle import ModelBundle, load_bundle
from sparkdl.config import FeaturizeConfig, HeadConfig, IngestConfig, RunConfig, TrainConfig
from sparkdl.data import hadoopfs, outputs, tables
from sparkdl.data.images import ingest_images
from sparkdl.errors import DataError
from sparkdl.featurize.featurizer import featurize_images
from sparkdl.train.run import train_head

pytestmark = pytest.mark.spark

QUICK = TrainConfig(run=RunConfig(workers=1, execution="rounds"), epochs=1, head=HeadConfig())


def _snapshot(root):
    """Every file below ``root`` with its bytes (to prove a refused run touched nothing)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def tree(tmp_path):
    return make_caltech_tree(tmp_path / "data", per_class=2, bad_files=False)["root"]


# --- 1. an output equal to, inside, or an ancestor of an input is refused before any work --------------------

@pytest.mark.parametrize("where", ["same", "inside", "ancestor", "file-uri-vs-relative", "through-symlink"])
def test_ingest_refuses_an_output_overlapping_its_image_folder(spark, tree, tmp_path, monkeypatch, where):
    before = _snapshot(tree.parent)
    images, output = str(tree), {
        "same": str(tree),
        "inside": str(tree / "images.parquet"),
        "ancestor": str(tree.parent),
    }.get(where)
    if where == "file-uri-vs-relative":
        # file:///.../256_ObjectCategories vs the same folder as a relative path (Spark resolves it against the
        # working directory the JVM started in, which is this process's)
        images, output = tree.as_uri(), os.path.relpath(tree)
    if where == "through-symlink":
        (tmp_path / "link").symlink_to(tree.parent)
        output = str(tmp_path / "link" / tree.name / "out.parquet")
    with pytest.raises(DataError, match=r"^ingest: the output images table .* the input image folder .*choose an output outside it"):
        ingest_images(spark, IngestConfig(images_uri=images, output_uri=output, overwrite=True))
    assert _snapshot(tree.parent) == before


def test_featurize_and_train_refuse_their_own_input(spark, tmp_path):
    images = tmp_path / "images.parquet"
    ingest_images(spark, IngestConfig(images_uri=str(make_caltech_tree(tmp_path / "d", 2, False)["root"]),
                                      output_uri=str(images)))  # fmt: skip
    before = _snapshot(tmp_path)
    for output in (images, tmp_path / "images", tmp_path):  # the table; one whose meta is the input's meta; a parent
        with pytest.raises(DataError, match=r"^featurize: the output features table"):
            featurize_images(spark, FeaturizeConfig(input_uri=str(images), output_uri=str(output), backbone="tiny", overwrite=True))
    feats = make_features_table(spark, str(tmp_path / "f" / "features.parquet"), n=20, dim=4, n_classes=2)
    before = _snapshot(tmp_path)
    for output in (feats["uri"], "file://" + feats["uri"], str(tmp_path / "f")):
        with pytest.raises(DataError, match=r"^train: the output model directory .* the input features table"):
            train_head(spark, feats["uri"], output, QUICK, overwrite=True)
    assert _snapshot(tmp_path) == before
    assert spark.read.parquet(feats["uri"]).count() == 20


# --- 3. --overwrite replaces only an earlier output, checked before any work -------------------------------------

def test_overwrite_refuses_a_file_or_a_foreign_directory_before_training(spark, tmp_path):
    feats = make_features_table(spark, str(tmp_path / "features.parquet"), n=20, dim=4, n_classes=2)
    a_file = tmp_path / "model"
    a_file.write_text("precious")
    with pytest.raises(DataError, match=r"model directory .*model is a file, not a model bundle"):
        train_head(spark, feats["uri"], a_file, QUICK, overwrite=True)
    assert a_file.read_text() == "precious"
    home = tmp_path / "home"
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match=r"is not a model bundle .*--overwrite replaces only an earlier output"):
        train_head(spark, feats["uri"], home, QUICK, overwrite=True)
    with pytest.raises(DataError, match=r"is not a table .*--overwrite replaces only an earlier output"):
        featurize_images(spark, FeaturizeConfig(input_uri=feats["uri"], output_uri=str(home), backbone="tiny", overwrite=True))
    assert (home / "docs" / "thesis.tex").read_text() == "x"


# --- 2. the previous complete result stays readable until the new one is complete ---------------------------------

def test_interrupted_ingest_overwrite_keeps_the_previous_table_and_meta(spark, tree, tmp_path, monkeypatch):
    out = str(tmp_path / "images.parquet")
    first = ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out))
    old_meta = json.loads(open(first.meta_uri).read())
    # the user renames a class folder and re-ingests, but the run dies right after the table is complete
    os.rename(tree / "001.ak47", tree / "001.rifle")

    def die(self, meta):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs.TableOutput, "write_meta", die)
    with pytest.raises(KeyboardInterrupt):
        ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out, overwrite=True))
    monkeypatch.undo()
    assert json.loads(open(first.meta_uri).read()) == old_meta
    assert tables.read_meta(spark, out)["labels"][0] == "ak47"
    assert {r["label"] for r in spark.read.parquet(out).collect()} == set(old_meta["labels"])
    assert not os.path.exists(out + ".partial")
    # completed, the new set replaces the old one
    ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out, overwrite=True))
    assert tables.read_meta(spark, out)["labels"][0] == "rifle"
    assert {r["label"] for r in spark.read.parquet(out).collect()} >= {"rifle"}


def test_a_table_torn_from_its_meta_is_refused_naming_the_stage(spark, tree, tmp_path, monkeypatch):
    out = str(tmp_path / "images.parquet")
    ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out))
    # die in the middle of the swap: the table is the new one, the meta still the old one
    real_rename = hadoopfs.rename

    def rename(spark_, src, dst):
        if dst.endswith(".meta.json"):
            raise KeyboardInterrupt
        real_rename(spark_, src, dst)

    monkeypatch.setattr(hadoopfs, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out, overwrite=True))
    monkeypatch.undo()
    # the old meta was moved aside, the new one not yet in: the new table is not read with no (or the old) mapping
    with pytest.raises(DataError, match=r"images\.meta\.json is missing though `sparkdl ingest` wrote .*re-run `sparkdl ingest`"):
        tables.read_meta(spark, out, required=False)
    with pytest.raises(DataError, match=r"re-run `sparkdl ingest`"):
        featurize_images(spark, FeaturizeConfig(input_uri=out, output_uri=str(tmp_path / "f.parquet"), backbone="tiny"))
    # the case: the new table beside an older meta (one from before run ids, or from another run)
    for run_id in (None, "another-run"):
        meta = {"format": "sparkdl.images/1", "stage": "ingest", "labels": ["x", "y", "z"]}
        open(tables.meta_uri(out), "w").write(json.dumps({**meta, **({"run_id": run_id} if run_id else {})}))
        with pytest.raises(DataError, match=r"images\.parquet and .*images\.meta\.json come from different runs .*re-run `sparkdl ingest`"):
            tables.read_meta(spark, out)


def test_failed_reject_check_leaves_the_previous_set_whole(spark, tree, tmp_path):
    out = str(tmp_path / "images.parquet")
    first = ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out))
    (tree / "001.ak47" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"images\.parquet\.partial/images\.rejects\.parquet"):
        ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out, overwrite=True, max_reject_fraction=0.0))
    assert spark.read.parquet(first.rejects_uri).count() == 0  # the old rejects, not the failed run's
    assert tables.read_meta(spark, out)["rows_out"] == first.rows_out
    assert spark.read.parquet(out + ".partial/images.rejects.parquet").count() == 1


def _bundle(dim=3, n_classes=2, seed=0):
    from sparkdl.model import HeadSpec, build_head

    head = build_head(HeadConfig(), dim, n_classes, seed=seed)
    return ModelBundle(head=HeadSpec.from_module(HeadConfig(), dim, n_classes, head), labels=["a", "b"])


def test_interrupted_bundle_overwrite_keeps_the_previous_bundle(tmp_path, monkeypatch):
    model = tmp_path / "model"
    _bundle(seed=1).save(model)
    old = _snapshot(model)
    import safetensors.numpy

    def die(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", die)
    with pytest.raises(KeyboardInterrupt):
        _bundle(seed=2).save(model, overwrite=True)
    monkeypatch.undo()
    assert _snapshot(model) == old
    _bundle(seed=2).save(model, overwrite=True)
    assert _snapshot(model) != old and not (tmp_path / "model.replaced").exists()


def test_bundle_copied_to_a_hadoop_uri_is_swapped_not_deleted_first(spark, tmp_path, monkeypatch):
    """``put_dir`` (the remote-bundle path, here over Hadoop's local file system) keeps the previous copy until the
    new one is complete."""
    target = (tmp_path / "remote" / "model").as_uri()
    first, second = tmp_path / "b1", tmp_path / "b2"
    _bundle(seed=1).save(first)
    _bundle(seed=2).save(second)
    hadoopfs.put_dir(spark, first, target, overwrite=False)
    old = _snapshot(tmp_path / "remote" / "model")
    (second / "zz-dangling").symlink_to(tmp_path / "nowhere")  # the copy fails after head.safetensors went over
    with pytest.raises(DataError):
        hadoopfs.put_dir(spark, second, target, overwrite=True)
    assert _snapshot(tmp_path / "remote" / "model") == old
    _bundle(seed=2).save(tmp_path / "b3")
    hadoopfs.put_dir(spark, tmp_path / "b3", target, overwrite=True)
    assert load_bundle(target, spark=spark).head.params != {}
    assert sorted(p.name for p in (tmp_path / "remote").iterdir() if not p.name.startswith(".")) == ["model"]


def test_bundle_save_overwrites_only_an_earlier_bundle(tmp_path):
    """ModelBundle.save (no Spark) applies the same rule as the stages' check."""
    a_file, foreign = tmp_path / "file", tmp_path / "foreign"
    a_file.write_text("precious")
    (foreign / "docs").mkdir(parents=True)
    with pytest.raises(DataError, match=r"model directory .*file is a file, not a model bundle .*replaces only an earlier output"):
        _bundle().save(a_file, overwrite=True)
    with pytest.raises(DataError, match=r"model directory .*foreign is not a model bundle .*\(it holds 1 entries such as 'docs/'\)"):
        _bundle().save(foreign, overwrite=True)
    assert a_file.read_text() == "precious" and (foreign / "docs").is_dir()
