"""The real `sparkdl` console script in a subprocess: what a user types."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from datagen import make_caltech_tree

pytestmark = pytest.mark.spark

SPARKDL = shutil.which("sparkdl", path=str(Path(sys.executable).parent)) or "sparkdl"


def run(*args, cwd=None, env=None):
    return subprocess.run([SPARKDL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def one_line_error(stderr: str) -> str:
    """The cause is exactly one line, the last one (the JVM may print its start-up notice before it)."""
    lines = stderr.strip().splitlines()
    errors = [ln for ln in lines if ": error: " in ln]
    assert errors == [lines[-1]], stderr
    assert "Traceback" not in stderr
    return lines[-1]


def test_help():
    top = run("--help")
    assert top.returncode == 0
    for cmd in ("demo", "ingest", "featurize", "train", "evaluate", "report", "fs"):
        assert cmd in top.stdout
    ingest = run("ingest", "--help")
    assert ingest.returncode == 0
    for opt in ("--images", "--output", "--split", "--seed", "--max-reject-fraction", "--overwrite"):
        assert opt in ingest.stdout
    feat = run("featurize", "--help")
    for opt in ("--input", "--output", "--backbone", "--weights", "--random-init", "efficientnet_lite0", "vgg16"):
        assert opt in feat.stdout
    put = run("fs", "put", "--help")
    assert put.returncode == 0
    for opt in ("--webhdfs", "--user", "--overwrite", "--threads"):
        assert opt in put.stdout
    bad = run("fs", "ls", "s3a://bucket/x")
    assert bad.returncode == 1 and "not an hdfs:// URI" in one_line_error(bad.stderr)


def test_usage_errors_exit_2():
    bad = run("ingest", "--images", "x", "--output", "y", "--split", "0.5,0.5")
    assert bad.returncode == 2
    assert "three fractions" in bad.stderr


def test_ingest_then_featurize(tmp_path):
    tree = make_caltech_tree(tmp_path / "data", per_class=4)
    out = tmp_path / "out"
    failed = run("ingest", "--images", str(tree["root"]), "--output", str(out / "images.parquet"), "--quiet")
    assert failed.returncode == 1
    cause = one_line_error(failed.stderr)
    assert cause.startswith("sparkdl ingest: error: ingest: 3 of 15 rows rejected")
    assert "raise --max-reject-fraction" in cause

    ok = run("ingest", "--images", str(tree["root"]), "--output", str(out / "images.parquet"),
             "--max-reject-fraction", "0.25", "--split", "0.6,0.2,0.2", "--seed", "7", "--json")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert (summary["rows_in"], summary["rows_out"]) == (15, 12)
    assert summary["rejects"] == {"corrupt_image": 1, "empty_file": 1, "not_an_image": 1}
    assert "ingest: writing 12 rows" in ok.stderr  # progress lines go to stderr

    feat = run("featurize", "--input", str(out / "images.parquet"), "--output", str(out / "features.parquet"),
               "--backbone", "tiny")  # fmt: skip
    assert feat.returncode == 0, feat.stderr
    assert "featurize summary" in feat.stdout
    assert "rows in / out  12 / 12" in feat.stdout
    assert "images/s" in feat.stdout


def test_missing_input_and_missing_weights_are_one_line(tmp_path):
    missing = run("featurize", "--input", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "f.parquet"), "--quiet")
    assert missing.returncode == 1
    assert "does not exist" in one_line_error(missing.stderr)


def test_missing_java_is_explained(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the venv's bin: sparkdl, python, no java
    res = run("ingest", "--images", str(tmp_path), "--output", str(tmp_path / "o.parquet"), "--quiet", env=env)
    assert res.returncode == 1
    assert "Spark needs Java 17" in res.stderr and "openjdk-17-jre-headless" in res.stderr


# the demo end to end: tests/test_wheel.py runs it from the installed wheel, as a user would


def test_train_evaluate_report(spark, tmp_path):
    from datagen import make_features_table

    feats = make_features_table(spark, str(tmp_path / "features.parquet"), n=0, dim=6, n_classes=3, seed=2,
                                split_counts={"train": 64, "valid": 16, "test": 16})["uri"]  # fmt: skip
    model = str(tmp_path / "model")
    tr = run("train", "--features", feats, "--output", model, "--workers", "2", "--epochs", "2",
             "--batch-size-per-worker", "8", "--averaging-frequency", "2", "--head", "mlp:8", "--optimizer", "adam",
             "--lr", "0.05", "--json")  # fmt: skip
    assert tr.returncode == 0, tr.stderr
    summary = json.loads(tr.stdout)
    assert summary["epochs_run"] == 2 and set(summary["metrics"]) == {"train", "valid", "test"}
    assert "train: epoch 2/2 loss" in tr.stderr  # a progress line per epoch
    ev = run("evaluate", "--model", model, "--features", feats, "--split", "test")
    assert ev.returncode == 0, ev.stderr
    assert "evaluate summary" in ev.stdout and "confusion" in ev.stdout
    rep = run("report", "--model", model, "--json")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["files"] == ["confusion.png", "epochs.png", "loss.png", "phases.png", "report.html"]
    again = run("train", "--features", feats, "--output", model, "--quiet")
    assert again.returncode == 1 and "already exists" in one_line_error(again.stderr)
    bad = run("train", "--features", feats, "--output", str(tmp_path / "m2"), "--head", "mlp:x", "--quiet")
    assert bad.returncode == 1 and "hidden sizes must be integers" in one_line_error(bad.stderr)
    aeron = run("train", "--features", feats, "--output", str(tmp_path / "m3"), "--transport", "aeron", "--quiet")
    assert aeron.returncode == 1 and "aeron transport is not available" in one_line_error(aeron.stderr)


# the sharing master from the command line (its flags, metrics and report): tests/cluster/test_multihost.py
