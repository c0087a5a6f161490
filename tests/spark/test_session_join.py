"""Join, never override: under spark-submit (and beside a SparkContext of the caller's) the submitted master and
confs win; ``--spark-master`` applies only when sparkdl launches Spark itself, and there the user's own
``spark-defaults.conf`` ranks above sparkdl's defaults. Each case runs a real spark-submit / Python process and reads
the master back from the running SparkContext (on main before this fix, the first printed ``local[*]``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark]

PROBE = textwrap.dedent("""
    import json, sys
    from sparkdl.config import SessionConfig
    from sparkdl.errors import ConfigError
    from sparkdl.session import build_session
    master = sys.argv[1] if len(sys.argv) > 1 else None
    try:
        spark = build_session(SessionConfig(master=master))
    except ConfigError as e:
        print(json.dumps({"error": str(e)}))
        sys.exit(0)
    sc = spark.sparkContext
    print(json.dumps({"master": sc.master, "app": sc.appName, "ui": sc.getConf().get("spark.ui.enabled"),
                      "batch": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"),
                      "tz": spark.conf.get("spark.sql.session.timeZone")}))
    spark.stop()
""")


def _spark_submit() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-submit")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_CONF_DIR"))}
    return {**env, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1", **extra}


def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "probe.py"
    path.write_text(PROBE)
    return path


def test_spark_submit_master_and_confs_win(probe):
    done = subprocess.run(
        [_spark_submit(), "--master", "local[1]", "--name", "user-job", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.execution.arrow.maxRecordsPerBatch=77", str(probe)],
        env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = _last_json(done.stdout)
    # the submitted master, name and confs; sparkdl's default only where nothing was given
    assert seen == {"master": "local[1]", "app": "user-job", "ui": "false", "batch": "77", "tz": "UTC"}, seen


def test_spark_master_flag_that_contradicts_spark_submit_is_one_clear_error(probe):
    done = subprocess.run([_spark_submit(), "--master", "local[1]", "--conf", "spark.ui.enabled=false", str(probe), "local[2]"],
                          env=_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    error = _last_json(done.stdout)["error"]
    assert "--spark-master local[2] cannot apply" in error and "master local[1] (spark-submit)" in error, error


def test_launched_here_the_users_spark_defaults_win_over_sparkdls(probe, tmp_path):
    (tmp_path / "spark-defaults.conf").write_text("# the user's own\nspark.master   local[1]\nspark.app.name=from-defaults\n"
                                                  "spark.ui.enabled false\n")  # fmt: skip
    done = subprocess.run([sys.executable, str(probe)], env=_env(SPARK_CONF_DIR=str(tmp_path)), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    seen = _last_json(done.stdout)
    assert seen["master"] == "local[1]" and seen["app"] == "from-defaults" and seen["ui"] == "false", seen
    # an explicit --spark-master / SessionConfig.master beats the file
    done = subprocess.run([sys.executable, str(probe), "local[2]"], env=_env(SPARK_CONF_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert _last_json(done.stdout)["master"] == "local[2]", done.stderr[-3000:]


def test_joining_a_running_session_keeps_its_master(spark):
    from sparkdl.config import SessionConfig
    from sparkdl.errors import ConfigError
    from sparkdl.session import build_session

    assert build_session(SessionConfig()) is not None and spark.sparkContext.master == "local[2]"
    assert build_session(SessionConfig(master="local[2]")).sparkContext is spark.sparkContext
    with pytest.raises(ConfigError, match=r"--spark-master local\[3\] cannot apply: .* master local\[2\]"):
        build_session(SessionConfig(master="local[3]"))
