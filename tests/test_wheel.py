"""The wheel as a user installs it: built from the repo, installed with pip into a fresh virtual environment with
the oldest pyspark the requirements allow (3.5), then run from outside the repository — the demo end to end,
`python -m sparkdl`, the spark-submit jobs it carries (`python -m sparkdl.jobs --path`), run by spark-submit. Plus
what the other declared ranges promise: the dependencies resolve on Python 3.10 (at their lower bounds) and 3.12.

The fresh venv gets pyspark 3.5 from the package index and sees the test venv's other installed dependencies through
a .pth line (a folder of links that leaves out sparkdl's editable install and pyspark 4), so pip resolves the wheel's
requirements against them offline (--no-index: a missing or out-of-range dependency fails the install) without
downloading torch again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SITE = Path(sysconfig.get_paths()["purelib"])
OLDEST_PYSPARK = ["pyspark==3.5.*", "py4j==0.10.9.7"]  # the lower bound of `pyspark>=3.5` and its py4j
LEFT_OUT = ("sparkdl", "__editable__", "_sparkdl", "__pycache__", "pyspark", "py4j")


def _clean_env(**extra) -> dict:
    """The environment without what points at the test venv's Python or Spark (the session fixture sets some)."""
    drop = ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "PYTHONPATH", "SPARK_HOME", "VIRTUAL_ENV", "SPARKDL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(REPO)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    (path,) = out.glob("sparkdl_torch-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fresh")
    deps = root / "deps"
    deps.mkdir()
    for entry in SITE.iterdir():  # every installed distribution but sparkdl itself and pyspark 4
        if not entry.name.lower().startswith(LEFT_OUT) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    env_dir = root / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    (site / "installed-deps.pth").write_text(f"{deps}\n")
    # this venv's pip drives the fresh one's Python (--python): the fresh venv gets no pip or setuptools of its own
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet"]
    res = subprocess.run([*pip, "--no-deps", *OLDEST_PYSPARK], capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([*pip, "--no-index", f"{wheel}[report]"], capture_output=True, text=True, env=_clean_env())
    assert res.returncode == 0, res.stdout + res.stderr
    return env_dir


def _run(venv: Path, *args, cwd: Path, env=None, timeout=600) -> subprocess.CompletedProcess:
    exe = args[0] if Path(args[0]).is_absolute() else str(venv / "bin" / args[0])
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, cwd=cwd, env=env or _clean_env(), timeout=timeout)


def test_the_installed_wheel_runs_the_demo_outside_the_repo(venv, tmp_path):
    where = _run(venv, "python", "-c", "import sparkdl, pyspark; print(sparkdl.__file__, pyspark.__file__, pyspark.__version__)",
                 cwd=tmp_path)  # fmt: skip
    mine, spark, version = where.stdout.split()
    assert mine.startswith(str(venv)) and spark.startswith(str(venv)), where.stdout  # the wheel's copy, not the repo's
    assert version.startswith("3.5."), version
    res = _run(venv, "sparkdl", "demo", "--workdir", str(tmp_path / "demo"), "--max-per-class", "3", "--epochs", "2",
               "--json", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["ingest"]["rows_out"] == 30
    assert summary["ingest"]["labels"] == [str(d) for d in range(10)]
    assert summary["featurize"]["rows_out"] == 30
    assert summary["featurize"]["backbone"]["name"] == "efficientnet_lite0"
    assert summary["featurize"]["backbone"]["feature_dim"] == 1280
    assert (tmp_path / "demo" / "features.parquet").is_dir()
    assert summary["train"]["epochs_run"] == 2
    assert set(summary["train"]["metrics"]) <= {"train", "valid", "test"}
    assert (tmp_path / "demo" / "model" / "head.safetensors").is_file()
    assert summary["report"].endswith("report.html") and (tmp_path / "demo" / "model" / "report" / "loss.png").is_file()
    # the demo ends by using the model: `sparkdl predict` on a few held-out images, printed
    assert summary["predictions"] and summary["predict"]["rows_out"] == len(summary["predictions"])
    assert all(p["prediction"] in summary["ingest"]["labels"] and p["label"] for p in summary["predictions"])
    again = _run(venv, "python", "-m", "sparkdl", "demo", "--workdir", str(tmp_path / "demo"), "--max-per-class", "1",
                 "--epochs", "1", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0 and "predicted" in again.stdout, again.stderr
    config = json.loads((tmp_path / "demo" / "model" / "config.json").read_text())
    assert config["backbone"]["carried"]["kind"] == "package" and len(config["backbone"]["carried"]["sha256"]) == 64


def test_the_wheel_carries_the_jobs_for_spark_submit(venv, wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"sparkdl/jobs/{s}.py" for s in ("ingest", "featurize", "train", "evaluate", "predict")} <= set(names)
    listed = _run(venv, "python", "-m", "sparkdl.jobs", "--list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    paths = dict(line.split("\t") for line in listed.stdout.splitlines())
    assert list(paths) == ["ingest", "featurize", "train", "evaluate", "predict"]
    assert all(p.startswith(str(venv)) and Path(p).is_file() for p in paths.values())
    one = _run(venv, "python", "-m", "sparkdl.jobs", "--path", "train", cwd=tmp_path)
    assert one.stdout.strip() == paths["train"]
    assert "usage: spark-submit sparkdl/jobs/train.py" in _run(venv, "python", "-m", "sparkdl.jobs.train", "--help", cwd=tmp_path).stdout
    # spark-submit runs the packaged file as a script (its folder first on sys.path): a real local job
    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
    from datagen import jpeg_bytes

    for i in range(4):
        (images / "ab"[i % 2] / f"{i}.jpg").write_bytes(jpeg_bytes(i))
    home = Path(paths["ingest"]).parents[2] / "pyspark"  # the venv's own pyspark (3.5)
    res = _run(venv, str(home / "bin" / "spark-submit"), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
               paths["ingest"], "--images", str(images), "--output", str(tmp_path / "images.parquet"), "--json", "--quiet",
               cwd=tmp_path, env=_clean_env(PYSPARK_PYTHON=str(venv / "bin" / "python"), SPARK_HOME=str(home)))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["rows_out"] == 4, res.stdout + res.stderr[-3000:]


def test_the_declared_ranges_resolve_on_python_3_10_and_3_12(wheel, tmp_path):
    """pip's resolver, for other Pythons (binary wheels only, metadata only): Python 3.10 with the lower bounds of
    torch, numpy, pandas and pyarrow; 3.12 with the newest releases. pyspark is left out here (it is published as a
    source archive only, which pip cannot resolve for another Python; pure Python: py4j is its only dependency); the
    wheel above runs on pyspark 3.5."""
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA")))
    wanted = ("report", "keras", "mlflow", "serve", "connect")  # webhdfs: hdfs needs docopt, a source archive only
    reqs = []
    for line in meta.decode().splitlines():
        if line.startswith("Requires-Dist:"):
            req, _, marker = line.split(":", 1)[1].strip().partition(";")
            extra = marker.split("==")[-1].strip().strip("'\"") if "extra" in marker else None
            if not req.startswith("pyspark") and (extra is None or extra in wanted):
                reqs.append(req.strip())
    cases = {"3.10": ["torch==2.5.*", "numpy==1.26.*", "pandas==2.0.*", "pyarrow==15.*"], "3.12": []}

    def resolve(py: str) -> dict:
        report = tmp_path / f"report-{py}.json"
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--target", str(tmp_path / py),
                              "--only-binary=:all:", "--python-version", py, "--report", str(report), *reqs, *cases[py]],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        assert res.returncode == 0, f"Python {py}: {res.stderr[-2000:]}"
        return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}

    with ThreadPoolExecutor(2) as pool:  # network-bound: both at once
        got = dict(zip(cases, pool.map(resolve, cases)))
    assert got["3.10"]["torch"].startswith("2.5.") and got["3.10"]["numpy"].startswith("1.26.")
    assert {"torch", "onnxruntime", "mlflow-skinny", "matplotlib", "uvicorn"} <= set(got["3.12"])
