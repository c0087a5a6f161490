"""scripts/caltech256_demo.sh end to end on a generated Caltech-shaped tree packed as the original tar (tiny
backbone): every line of the script runs, through the real spark-submit (on ``local[2]``: the jobs on a cluster are
``test_multihost.py``'s and ``test_hdfs.py``'s), the data on HDFS.
(One run covers the tar and --fs: the pipeline is the same four spark-submits either way.)"""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from datagen import make_caltech_tree

pytestmark = [pytest.mark.slow, pytest.mark.spark]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "caltech256_demo.sh"


def _run(*args, cwd, env=None):
    env = {**os.environ, "PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}  # fmt: skip
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_the_script_explains_what_is_missing(tmp_path):
    res = _run("--data", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "--weights is required" in res.stderr
    res = _run("--data", str(tmp_path), "--weights", str(tmp_path / "vgg16.pth"), cwd=tmp_path)
    assert res.returncode == 1 and "not found" in res.stderr


def test_the_script_runs_on_a_caltech_tar_keeping_the_data_on_hdfs(hdfs, tmp_path):
    """The original tar is unpacked; --fs: the tree and weights go up over WebHDFS, the stages run on the
    master it is given (spark-submit --master local[2]) on hdfs://; the Deeplearning4j demo's training settings."""
    import torch

    from sparkdl.featurize.backbones import load_backbone

    tree = make_caltech_tree(tmp_path / "src", per_class=6, bad_files=False)
    tar = tmp_path / "256_ObjectCategories.tar"
    with tarfile.open(tar, "w") as t:
        t.add(tree["root"], arcname="256_ObjectCategories")
    weights = tmp_path / "tiny.pth"
    torch.save(load_backbone("tiny").module.state_dict(), weights)
    work = tmp_path / "work"
    res = _run("--data", str(tar), "--weights", str(weights), "--backbone", "tiny", "--master-url", "local[2]",
               "--fs", hdfs["home"], "--webhdfs", hdfs["webhdfs"], "--workdir", str(work), "--epochs", "1", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "caltech256_demo: test accuracy" in res.stdout
    out = f"{hdfs['home']}/sparkdl/caltech256"
    assert f"unpacking {tar}" in res.stderr
    assert f"uploading {work / 'data' / '256_ObjectCategories'} to {out}/256_ObjectCategories" in res.stderr
    ingest = json.loads((work / "ingest.json").read_text())
    assert ingest["output_uri"] == f"{out}/images.parquet" and ingest["rows_out"] == 18 and len(ingest["labels"]) == 3
    featurize = json.loads((work / "featurize.json").read_text())
    assert featurize["backbone"]["weights"] == f"{out}/weights/tiny.pth"
    assert (work / "model" / "report" / "report.html").exists()
    training = json.loads((work / "model" / "config.json").read_text())["training"]
    assert training["optimizer"] == {**training["optimizer"], "name": "nesterov", "momentum": 0.8, "lr": 0.01}
    assert training["batch_size_per_worker"] == 32 and training["algorithm"]["frequency"] == 5
