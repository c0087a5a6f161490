"""The packaged jobs and a user's Spark ML script on a standalone cluster of separate hosts (network namespaces: a
master, two Workers of two cores, the driver on a host of its own), submitted with plain
``spark-submit --master spark://<master-ip>:7077``. Every test asserts where the work ran, from Spark's own records:
the master registered the application, the stage's tasks ran on executors on the worker hosts (not on the driver's),
and training's four ranks (sharing from the train job, averaging from the user's HeadClassifier) were on both worker
hosts."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from datagen import make_caltech_tree
from spark_hosts import multihost_cluster

pytestmark = [pytest.mark.slow, pytest.mark.spark]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with multihost_cluster(tmp_path_factory.mktemp("multihost"), [2, 2]) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_caltech_tree(tmp_path_factory.mktemp("mh-data"), per_class=10, bad_files=False)


def _summary(done) -> dict:
    """The job's --json summary (the last JSON document on stdout)."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    start = done.stdout.rfind("\n{") + 1
    return json.JSONDecoder().raw_decode(done.stdout[start:])[0]


@pytest.fixture(scope="module")
def ingested(hosts, tree, tmp_path_factory):
    """The ingest job's output and its application (the other tests read the table)."""
    out = tmp_path_factory.mktemp("mh-out")
    done, app = hosts.submit(hosts.job("ingest"), "--images", f"file://{tree['root']}", "--output",
                             f"file://{out}/images.parquet", "--partitions", "4", "--json", "--quiet")  # fmt: skip
    return {"out": out, "summary": _summary(done), "app": app}


def test_the_jobs_run_on_the_worker_hosts(hosts, ingested):
    out, app = ingested["out"], ingested["app"]
    assert ingested["summary"]["rows_out"] == 30
    hosts.assert_ran_on_workers(app, "sparkdl-ingest")
    # the preflight ran once (a task per executor registered then), on the worker hosts
    preflight = app.task_hosts("sparkdl-preflight")
    assert preflight and set(preflight) <= {w.ip for w in hosts.workers} and sum(preflight.values()) <= len(app.executors)

    done, app = hosts.submit(hosts.job("featurize"), "--input", f"file://{out}/images.parquet", "--output",
                             f"file://{out}/features.parquet", "--backbone", "tiny", "--random-init", "--json", "--quiet")  # fmt: skip
    _summary(done)
    hosts.assert_ran_on_workers(app, "sparkdl-featurize")

    # sharing here; averaging (the default) is the user pipeline's HeadClassifier below, also W = 4 across hosts
    done, app = hosts.submit(hosts.job("train"), "--features", f"file://{out}/features.parquet", "--output",
                             str(out / "model"), "--training-master", "sharing", "--workers", "4", "--epochs", "2",
                             "--batch-size-per-worker", "4", "--threshold", "target-sparsity:0.1", "--residual-clip",
                             "5:5", "--staleness", "0", "--tree-fanout", "2", "--json", "--quiet")  # fmt: skip
    assert _summary(done)["epochs_run"] == 2
    hosts.assert_ran_on_workers(app, "sparkdl-train", min_hosts=2)
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    [placement] = metrics["placements"]
    peers = [a.rsplit(":", 1)[0] for a in placement["addresses"]]
    # four gRPC peers, on both worker hosts, none on the driver's
    assert len(peers) == 4 and set(peers) == {w.ip for w in hosts.workers}, placement
    # the sharing master's flags, stats and report (synchronous: the four ranks end bit-identical across hosts)
    assert metrics["ranks_identical"] is True and metrics["compression_ratio"] > 1
    assert {"bytes_sent", "bytes_received", "encode_seconds", "tau_per_epoch"} <= set(metrics["workers"][0])
    training = json.loads((out / "model" / "config.json").read_text())["training"]
    assert training["master"] == "sharing" and training["algorithm"]["threshold"] == {"kind": "target-sparsity", "value": 0.1}
    report = subprocess.run([str(Path(sys.executable).parent / "sparkdl"), "report", "--model", str(out / "model"), "--json"],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0 and "sharing.png" in json.loads(report.stdout)["files"], report.stderr

    done, app = hosts.submit(hosts.job("predict"), "--model", str(out / "model"), "--table",
                             f"file://{out}/images.parquet", "--output", f"file://{out}/predictions.parquet", "--json", "--quiet")  # fmt: skip
    assert _summary(done)["rows_out"] == 30
    hosts.assert_ran_on_workers(app, "sparkdl-predict")


USER_SCRIPT = textwrap.dedent("""
    import json, sys
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import SparkSession
    from sparkdl import ImageFeaturizer
    from sparkdl.ml import HeadClassifier

    images_uri, out = sys.argv[1], sys.argv[2]
    spark = SparkSession.builder.appName("user-pipeline").getOrCreate()   # the user's own session
    images = spark.read.parquet(images_uri)
    pipeline = Pipeline(stages=[
        ImageFeaturizer(inputCol="image", outputCol="features", backbone="tiny", randomInit=True),
        StringIndexer(inputCol="label", outputCol="y"),
        HeadClassifier(featuresCol="features", labelCol="y", epochs=2, workers=4, batchSizePerWorker=4),
    ])
    model = pipeline.fit(images)
    model.write().overwrite().save(out)
    rows = PipelineModel.load(out).transform(images).select("prediction").count()
    print(json.dumps({"rows": rows, "master": spark.sparkContext.master}))
""")


def test_a_users_spark_ml_pipeline_runs_on_the_worker_hosts(hosts, ingested, tmp_path):
    script = tmp_path / "user_pipeline.py"
    script.write_text(USER_SCRIPT)
    done, app = hosts.submit(str(script), f"file://{ingested['out']}/images.parquet", f"file://{tmp_path}/pipeline")
    seen = _summary(done)
    assert seen == {"rows": 30, "master": hosts.url}, seen
    assert app.name == "user-pipeline"  # the user's app name: sparkdl joined, it did not rename
    hosts.assert_ran_on_workers(app, "")  # every task (the transformers' jobs are the user's own, ungrouped)
    hosts.assert_ran_on_workers(app, "sparkdl-train", min_hosts=2)
