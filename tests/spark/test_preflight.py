"""Executor preflight: a session whose executors cannot run sparkdl fails before any work with one line naming the
executor and the fix. The executors' Python is set the way users set it (``spark.pyspark.python`` in their own
``spark-defaults.conf``) to a bare virtualenv (no sparkdl), a virtualenv whose sparkdl is another version, and a
Python of another minor version."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparkdl import __version__

pytestmark = [pytest.mark.spark]

SPARKDL = str(Path(sys.executable).parent / "sparkdl")


def test_executors_that_run_sparkdl_pass_once_per_application(spark):
    from sparkdl.preflight import check_executors

    result = check_executors(spark, force=True)
    assert result.app_id == spark.sparkContext.applicationId and len(result.reports) == 1  # local mode: one executor
    assert {r.sparkdl for r in result.reports} == {__version__} and all(r.error is None for r in result.reports)
    assert check_executors(spark) is result  # cached: no second job


def _bare_venv(where: Path, python: str = sys.executable) -> Path:
    subprocess.run([python, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    return where / "bin" / "python"


def _ingest_with_executor_python(python: Path, tmp_path: Path, caltech) -> subprocess.CompletedProcess:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "spark-defaults.conf").write_text(f"spark.pyspark.python {python}\nspark.ui.enabled false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_")}
    return subprocess.run([SPARKDL, "ingest", "--images", str(caltech["root"]), "--output", str(tmp_path / "out.parquet"),
                           "--spark-master", "local[1]", "--max-reject-fraction", "0.5", "--quiet"],
                          env={**env, "SPARK_CONF_DIR": str(conf)}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip (cwd: not the repo, whose sparkdl/ the workers would import)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    """sparkdl's one line; beside it only the JVM's start-up notice and Spark's own log lines (a failed probe task is
    logged by Spark's scheduler: ``yy/MM/dd HH:mm:ss ERROR TaskSetManager: ...``)."""
    assert done.returncode == 1, done.stderr[-3000:]
    spark_log = re.compile(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d (ERROR|WARN) ")
    lines = [ln for ln in done.stderr.strip().splitlines()
             if not ln.startswith("WARNING: Using incubator modules") and not spark_log.match(ln)]  # fmt: skip
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


def test_executors_without_sparkdl_are_one_line_naming_the_executor_and_the_fix(tmp_path, caltech):
    bare = _bare_venv(tmp_path / "bare")
    line = _one_error_line(_ingest_with_executor_python(bare, tmp_path, caltech))
    assert line.startswith("sparkdl ingest: error: the executor at 127.0.0.1 (") and str(bare) in line, line
    assert "cannot import sparkdl (ModuleNotFoundError: No module named 'sparkdl')" in line and "spark.pyspark.python" in line
    assert not (tmp_path / "out.parquet").exists()


def test_executors_with_another_sparkdl_version_are_refused(tmp_path, caltech):
    other = _bare_venv(tmp_path / "other")
    site = next((tmp_path / "other" / "lib").glob("python3.*/site-packages"))
    (site / "sparkdl").mkdir()
    (site / "sparkdl" / "__init__.py").write_text('__version__ = "0.0.9"\n')
    line = _one_error_line(_ingest_with_executor_python(other, tmp_path, caltech))
    assert f"runs sparkdl 0.0.9, the driver sparkdl {__version__}" in line, line


def test_executors_on_another_python_minor_version_are_refused(tmp_path, caltech):
    minor = 12 if sys.version_info[:2] != (3, 12) else 11
    found = Path("/root/.pyenv/versions").glob(f"3.{minor}.*/bin/python3")
    python = next(iter(sorted(found)), None)
    if python is None:
        pytest.skip(f"no Python 3.{minor} on this machine to run executors on")
    line = _one_error_line(_ingest_with_executor_python(_bare_venv(tmp_path / "py", str(python)), tmp_path, caltech))
    assert f"runs Python 3.{minor}" in line and f"the driver Python {sys.version_info[0]}.{sys.version_info[1]}" in line, line
