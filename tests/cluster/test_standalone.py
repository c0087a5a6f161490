"""The jobs on a real Spark standalone cluster: a master and a worker started on 127.0.0.1 from the pip package's
``spark-class``, the stages submitted with the real ``spark-submit``, everything stopped at the end."""
import json

import pytest

from cluster_services import submit
from datagen import make_caltech_tree

pytestmark = [pytest.mark.slow, pytest.mark.spark]


def test_the_jobs_run_on_a_standalone_cluster(cluster, tmp_path):
    tree = make_caltech_tree(tmp_path / "data", per_class=8, bad_files=False)
    out = tmp_path / "out"
    ing = submit(cluster, "ingest", "--images", f"file://{tree['root']}", "--output", f"file://{out}/images.parquet", "--json", "--quiet")
    assert ing.returncode == 0, ing.stderr[-3000:]
    assert json.loads(ing.stdout)["rows_out"] == 24
    feat = submit(cluster, "featurize", "--input", f"file://{out}/images.parquet", "--output", f"file://{out}/features.parquet",
                  "--backbone", "tiny", "--random-init", "--json", "--quiet")  # fmt: skip
    assert feat.returncode == 0, feat.stderr[-3000:]
    for master in ("averaging", "sharing"):
        tr = submit(cluster, "train", "--features", f"file://{out}/features.parquet", "--output", str(out / f"model-{master}"),
                    "--training-master", master, "--workers", "2", "--epochs", "2", "--batch-size-per-worker", "4",
                    "--threshold", "target-sparsity:0.1", "--json", "--quiet")  # fmt: skip
        assert tr.returncode == 0, tr.stderr[-3000:]
        assert json.loads(tr.stdout)["epochs_run"] == 2
    ev = submit(cluster, "evaluate", "--model", str(out / "model-sharing"), "--features", f"file://{out}/features.parquet", "--json", "--quiet")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout)["split"] == "test" and 0.0 <= json.loads(ev.stdout)["accuracy"] <= 1.0
    pred = submit(cluster, "predict", "--model", str(out / "model-averaging"), "--table", f"file://{out}/images.parquet",
                  "--output", f"file://{out}/predictions.parquet", "--json", "--quiet")  # fmt: skip
    assert pred.returncode == 0, pred.stderr[-3000:]
    assert json.loads(pred.stdout)["rows_out"] == 24 and set(json.loads(pred.stdout)["accuracy"]) >= {"all", "test"}
    missing = submit(cluster, "ingest", "--images", f"file://{tmp_path}/nope", "--output", f"file://{out}/x.parquet", "--quiet")
    # spark-submit's PythonRunner merges the Python driver's stderr into its stdout; the JVM logs on stderr
    errors = [line for line in missing.stdout.splitlines() if ": error: " in line]
    assert missing.returncode == 1 and len(errors) == 1 and "does not exist" in errors[0], missing.stdout[-3000:]
