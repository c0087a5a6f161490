"""Every stage on a real HDFS (NameNode + DataNode on 127.0.0.1, permissions on, NameNode run by Hadoop user
``hdfs``): the dataset and weights uploaded over WebHDFS with ``sparkdl fs``, then ingest -> featurize -> train ->
evaluate submitted with the real ``spark-submit`` (``--master local[2]``: where the jobs run on a cluster is
``test_multihost.py``'s, whose namespaced hosts cannot reach this HDFS on 127.0.0.1) with every input and output an
``hdfs://`` URI; and the bad inputs a cluster user meets (no permission, wrong-schema table, unreachable name node)
stopping before any work."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster_services import free_port, local_submitter, submit
from datagen import make_caltech_tree

pytestmark = [pytest.mark.slow, pytest.mark.spark]

SPARKDL = shutil.which("sparkdl", path=str(Path(sys.executable).parent)) or "sparkdl"


def sparkdl(*args, env=None):
    return subprocess.run([SPARKDL, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def _errors(proc) -> list[str]:
    # spark-submit's PythonRunner merges the Python driver's stderr into stdout
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ": error: " in ln]


def _tiny_weights(path: Path) -> Path:
    import torch

    from sparkdl.featurize.backbones import load_backbone

    state = {k: v * 1.5 for k, v in load_backbone("tiny").module.state_dict().items()}  # not the seeded init
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def cluster():
    return local_submitter()


def test_every_stage_reads_and_writes_hdfs(cluster, hdfs, tmp_path):
    from sparkdl.featurize.weights import file_digest

    tree = make_caltech_tree(tmp_path / "data", per_class=8, bad_files=False)
    weights = _tiny_weights(tmp_path / "tiny.pth")
    base = f"{hdfs['home']}/caltech"
    conf = {"HADOOP_CONF_DIR": hdfs["conf_dir"]}  # sparkdl fs finds the WebHDFS address there

    # outside Spark, over WebHDFS
    for local, uri in ((tree["root"], f"{base}/256_ObjectCategories"), (weights, f"{base}/weights/tiny.pth")):
        put = sparkdl("fs", "put", str(local), uri, "--quiet", env=conf)
        assert put.returncode == 0, put.stderr
    assert sparkdl("fs", "exists", f"{base}/weights/tiny.pth", env=conf).returncode == 0
    assert sparkdl("fs", "exists", f"{base}/nothing-here", env=conf).returncode == 1
    listing = json.loads(sparkdl("fs", "ls", f"{base}/256_ObjectCategories", "--json", env=conf).stdout)
    assert sorted(e["name"] for e in listing["entries"]) == ["001.ak47", "002.american-flag", "003.backpack"]

    # the jobs, through Spark's Hadoop client
    ing = submit(cluster, "ingest", "--images", f"{base}/256_ObjectCategories", "--output", f"{base}/images.parquet", "--json", "--quiet")
    assert ing.returncode == 0, ing.stdout[-3000:] + ing.stderr[-3000:]
    assert json.loads(ing.stdout)["rows_out"] == 24
    feat = submit(cluster, "featurize", "--input", f"{base}/images.parquet", "--output", f"{base}/features.parquet",
                  "--backbone", "tiny", "--weights", f"{base}/weights/tiny.pth", "--json", "--quiet")  # fmt: skip
    assert feat.returncode == 0, feat.stdout[-3000:] + feat.stderr[-3000:]
    backbone = json.loads(feat.stdout)["backbone"]
    assert backbone["weights"] == f"{base}/weights/tiny.pth" and backbone["weights_sha256"] == file_digest(weights)
    tr = submit(cluster, "train", "--features", f"{base}/features.parquet", "--output", f"{base}/model", "--training-master", "averaging",
                "--workers", "2", "--epochs", "2", "--batch-size-per-worker", "4", "--json", "--quiet")  # fmt: skip
    assert tr.returncode == 0, tr.stdout[-3000:] + tr.stderr[-3000:]
    assert json.loads(tr.stdout)["model_dir"] == f"{base}/model"
    ev = submit(cluster, "evaluate", "--model", f"{base}/model", "--features", f"{base}/features.parquet", "--json", "--quiet")
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    assert json.loads(ev.stdout)["n"] == json.loads(ing.stdout)["split_counts"]["test"]

    # what landed on HDFS: committed tables, sidecars, a complete model bundle and no .partial left behind
    names = {e["name"] for e in json.loads(sparkdl("fs", "ls", base, "--json", env=conf).stdout)["entries"]}
    assert {"images.parquet", "images.meta.json", "features.parquet", "features.meta.json", "model"} <= names
    assert not any(n.endswith(".partial") for n in names)
    admin = hdfs["admin"]
    path = base.split(hdfs["fs"], 1)[1]
    assert admin.exists(f"{path}/features.parquet/_SUCCESS")
    # the bundle carries its backbone: the weights file read from HDFS, converted and stored beside the head
    assert {e["name"] for e in admin.list(f"{path}/model")} == {"config.json", "head.safetensors", "metrics.json",
                                                                "events.jsonl", "backbone.safetensors"}  # fmt: skip
    got = sparkdl("fs", "get", f"{base}/model", str(tmp_path / "model"), "--quiet", env=conf)
    assert got.returncode == 0, got.stderr
    assert sparkdl("report", "--model", str(tmp_path / "model"), "--quiet").returncode == 0
    assert (tmp_path / "model" / "report" / "report.html").exists()
    carried = json.loads((tmp_path / "model" / "config.json").read_text())["backbone"]["carried"]
    assert carried["kind"] == "bundle" and carried["source"] == f"{base}/weights/tiny.pth"
    assert carried["source_sha256"] == file_digest(weights)
    # predict straight from HDFS: the model, its carried backbone and the images all on hdfs://
    pr = submit(cluster, "predict", "--model", f"{base}/model", "--table", f"{base}/images.parquet",
                "--output", f"{base}/predictions.parquet", "--json", "--quiet")  # fmt: skip
    assert pr.returncode == 0, pr.stdout[-3000:] + pr.stderr[-3000:]
    assert json.loads(pr.stdout)["rows_out"] == 24


def test_bad_inputs_on_hdfs_stop_before_any_work(spark, hdfs, ingested, tmp_path):
    from sparkdl.config import FeaturizeConfig, IngestConfig, RunConfig, TrainConfig
    from sparkdl.data.images import ingest_images
    from sparkdl.data.webhdfs import WebHdfs
    from sparkdl.errors import ConfigError, DataError
    from sparkdl.featurize.featurizer import featurize_images
    from sparkdl.train.run import train_head

    home, fs = hdfs["home"], hdfs["fs"]
    tree = make_caltech_tree(tmp_path / "data", per_class=2, bad_files=False)
    # writing under a directory of another user (mode 700)
    with pytest.raises(DataError, match=r"permission denied writing images table .*/locked/images.parquet.*Hadoop user") as err:
        ingest_images(spark, IngestConfig(images_uri=str(tree["root"]), output_uri=f"{fs}/locked/images.parquet"))
    assert "\n" not in str(err.value)
    # reading from it
    with pytest.raises(DataError, match=r"permission denied reading image folder .*/locked/data"):
        ingest_images(spark, IngestConfig(images_uri=f"{fs}/locked/data", output_uri=f"{home}/x.parquet"))
    # a model directory that cannot be written fails before training, not after it
    spark.range(4).write.mode("overwrite").parquet(f"{home}/not-features.parquet")
    with pytest.raises(DataError, match=r"permission denied writing model directory"):
        train_head(spark, f"{home}/not-features.parquet", f"{fs}/locked/model", TrainConfig(run=RunConfig(workers=1), epochs=1))
    # weights on HDFS of another architecture: refused on the driver, before the backbone runs on any image
    WebHdfs(hdfs["webhdfs"], hdfs["user"]).upload(_tiny_weights(tmp_path / "tiny.pth"), f"{home.split(fs, 1)[1]}/tiny.pth")
    with pytest.raises(ConfigError, match=r"do not fit the EfficientNet architecture"):
        featurize_images(spark, FeaturizeConfig(input_uri=ingested.output_uri, output_uri=f"{home}/features.parquet",
                                                backbone="efficientnet_lite0", weights=f"{home}/tiny.pth"))  # fmt: skip
    # a table of the wrong schema
    with pytest.raises(DataError, match=r"not-features.parquet"):
        train_head(spark, f"{home}/not-features.parquet", f"{home}/model", TrainConfig(run=RunConfig(workers=1), epochs=1))
    # a name node nobody listens on (no retries: the message, not Hadoop's retry policy, is under test)
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    hconf.set("ipc.client.connect.max.retries", "0")
    try:
        with pytest.raises(DataError, match=r"cannot reach the file system of hdfs://127.0.0.1:\d+/x.*ConnectException"):
            ingest_images(spark, IngestConfig(images_uri=str(tree["root"]), output_uri=f"hdfs://127.0.0.1:{free_port()}/x"))
    finally:
        hconf.unset("ipc.client.connect.max.retries")


def test_a_job_without_permission_exits_with_one_line(cluster, hdfs, tmp_path):
    tree = make_caltech_tree(tmp_path / "data", per_class=2, bad_files=False)
    # another Hadoop user than the owner of /user/<me>: simple authentication takes HADOOP_USER_NAME
    res = submit(cluster, "ingest", "--images", f"file://{tree['root']}", "--output", f"{hdfs['home']}/mallory.parquet",
                 "--quiet", env={"HADOOP_USER_NAME": "mallory"})  # fmt: skip
    errors = _errors(res)
    assert res.returncode == 1 and len(errors) == 1, res.stdout[-3000:] + res.stderr[-3000:]
    assert "permission denied writing images table" in errors[0] and "'mallory'" in errors[0]
    # and over WebHDFS
    put = sparkdl("fs", "put", str(tree["root"]), f"{hdfs['home']}/mallory", "--webhdfs", hdfs["webhdfs"], "--user", "mallory")
    assert put.returncode == 1 and "permission denied" in _errors(put)[0] and "'mallory'" in _errors(put)[0]


def test_overwrites_on_hdfs_keep_the_previous_output_until_the_new_one_is_complete(spark, hdfs, tmp_path, monkeypatch):
    from sparkdl.config import IngestConfig
    from sparkdl.data import outputs, tables
    from sparkdl.data.images import ingest_images
    from sparkdl.data.webhdfs import WebHdfs
    from sparkdl.errors import DataError

    home, fs = hdfs["home"], hdfs["fs"]
    tree = make_caltech_tree(tmp_path / "data", per_class=2, bad_files=False)["root"]
    out = f"{home}/swap/images.parquet"
    first = ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out))
    (tree / "001.ak47").rename(tree / "001.rifle")
    monkeypatch.setattr(outputs.TableOutput, "write_meta", lambda self, meta: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out, overwrite=True))
    monkeypatch.undo()
    assert tables.read_meta(spark, out)["labels"] == list(first.labels)  # the old set, whole
    assert {r["label"] for r in spark.read.parquet(out).collect()} == set(first.labels)
    ingest_images(spark, IngestConfig(images_uri=str(tree), output_uri=out, overwrite=True))
    assert tables.read_meta(spark, out)["labels"][0] == "rifle"
    admin, path = hdfs["admin"], f"{home.split(fs, 1)[1]}/swap"
    assert sorted(e["name"] for e in admin.list(path)) == ["images.meta.json", "images.parquet", "images.rejects.parquet"]
    # an output inside its input, on HDFS
    with pytest.raises(DataError, match=r"^ingest: the output images table .* lies inside the input image folder"):
        ingest_images(spark, IngestConfig(images_uri=f"{home}/swap", output_uri=f"{home}/swap/again.parquet"))
    # sparkdl fs put --overwrite: the old copy stays until the new upload is complete, then is replaced
    client = WebHdfs(hdfs["webhdfs"], hdfs["user"])
    (tmp_path / "w.bin").write_bytes(b"old")
    client.upload(tmp_path / "w.bin", f"{path}/w.bin")
    (tmp_path / "w.bin").write_bytes(b"new!")
    client.upload(tmp_path / "w.bin", f"{path}/w.bin", overwrite=True)
    entries = {e["name"]: e for e in admin.list(path)}
    assert entries["w.bin"]["length"] == 4
    assert not any(n.endswith((".partial", ".replaced")) for n in entries)


def test_spark_ml_models_save_and_load_on_hdfs(spark, hdfs):
    """A PipelineModel holding a HeadClassifierModel: Spark's metadata and the bundle as data, on hdfs://; loaded back
    it predicts the same bits; write().overwrite() swaps a new save in."""
    from pyspark.ml import PipelineModel

    from sparkdl.bundle import ModelBundle
    from sparkdl.config import HeadConfig
    from sparkdl.ml import HeadClassifierModel
    from sparkdl.model import HeadSpec, build_head

    head = HeadSpec.from_module(HeadConfig(), 4, 3, build_head(HeadConfig(), 4, 3, seed=5))
    model = HeadClassifierModel(ModelBundle(head=head, labels=["a", "b", "c"])).setPredictionCol("pred")
    df = spark.createDataFrame([(i, [float(i), 1.0, -1.0, 0.5 * i]) for i in range(20)], "id int, features array<float>")
    uri = f"{hdfs['home']}/ml/pipeline"
    PipelineModel(stages=[model]).write().save(uri)
    loaded = PipelineModel.load(uri)
    assert loaded.stages[0].getPredictionCol() == "pred" and loaded.stages[0].labels == ["a", "b", "c"]
    cols = ["id", "pred", "probability", "rawPrediction"]
    assert loaded.transform(df).orderBy("id").select(cols).collect() == model.transform(df).orderBy("id").select(cols).collect()
    model.setPredictionCol("p2").write().save(f"{hdfs['home']}/ml/head")
    model.setPredictionCol("p3").write().overwrite().save(f"{hdfs['home']}/ml/head")
    assert HeadClassifierModel.load(f"{hdfs['home']}/ml/head").getPredictionCol() == "p3"
    path = f"{hdfs['home'].split(hdfs['fs'], 1)[1]}/ml"
    assert sorted(e["name"] for e in hdfs["admin"].list(path)) == ["head", "pipeline"]


def test_checkpoints_and_resume_on_hdfs(spark, hdfs, tmp_path):
    """A fit with its checkpoints on hdfs:// (through Spark's Hadoop client), stopped after 2 epochs and resumed to
    3, ends bit-identical to a 3-epoch fit; the newest 2 checkpoints are kept, no .partial left."""
    import dataclasses

    from datagen import make_features_table
    from sparkdl.config import RunConfig, TrainConfig
    from sparkdl.model import build_head
    from sparkdl.train.checkpoint import CheckpointStore
    from sparkdl.train.driver import build_master

    uri = str(tmp_path / "f.parquet")
    make_features_table(spark, uri, n=0, dim=4, n_classes=3, seed=2, split_counts={"train": 40, "valid": 8})
    df = spark.read.parquet(uri)
    ck = f"{hdfs['home']}/checkpoints/run1"
    cfg = TrainConfig(run=RunConfig(workers=2, checkpoint_dir=ck), epochs=3, batch_size_per_worker=4)

    def fit(c):
        return build_master(c).fit(df, build_head(c.head, 4, 3, seed=0), 3)

    through = fit(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, checkpoint_dir=None)))
    fit(dataclasses.replace(cfg, epochs=2))
    resumed = fit(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True)))
    assert resumed.stats["resumed_from_epoch"] == 2
    for k, v in through.final_params.items():
        assert resumed.final_params[k].tobytes() == v.tobytes(), k
    assert CheckpointStore(ck, spark=spark).epochs() == [2, 3]
    path = ck.split(hdfs["fs"], 1)[1]
    assert sorted(e["name"] for e in hdfs["admin"].list(path)) == ["epoch-000002.ckpt", "epoch-000003.ckpt"]
