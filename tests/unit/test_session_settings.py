"""What the user set before sparkdl launches Spark (spark-defaults.conf, PYSPARK_SUBMIT_ARGS), and the preflight's
one-line verdicts (fast lane; the real sessions are in tests/spark/test_session_join.py and test_preflight.py)."""
from sparkdl.preflight import ExecutorReport, explain_failure, find_problem
from sparkdl.session import user_spark_settings


def test_spark_defaults_then_submit_args_as_spark_submit_ranks_them(tmp_path):
    (tmp_path / "spark-defaults.conf").write_text(
        "# comment\n! also a comment\nspark.master  yarn\nspark.driver.memory=8g\nspark.app.name: nightly\n"
        "spark.executor.cores 4\nnot.spark.key 1\n"
    )
    env = {"SPARK_CONF_DIR": str(tmp_path)}
    assert user_spark_settings(env) == {"spark.master": "yarn", "spark.driver.memory": "8g", "spark.app.name": "nightly",
                                        "spark.executor.cores": "4"}  # fmt: skip
    env["PYSPARK_SUBMIT_ARGS"] = "--conf spark.master=local[3] --conf=spark.executor.cores=2 --driver-memory=1g pyspark-shell"
    got = user_spark_settings(env)
    assert got["spark.master"] == "local[3]" and got["spark.executor.cores"] == "2" and got["spark.driver.memory"] == "1g"
    env["PYSPARK_SUBMIT_ARGS"] = "--master local[2] --conf spark.master=local[3] pyspark-shell"
    assert user_spark_settings(env)["spark.master"] == "local[2]"  # the flag beats --conf, as in spark-submit


def test_properties_file_flag_and_spark_home_fallback(tmp_path):
    (tmp_path / "mine.conf").write_text("spark.master spark://m:7077\n")
    assert user_spark_settings({"PYSPARK_SUBMIT_ARGS": f"--properties-file {tmp_path}/mine.conf pyspark-shell"}) == {
        "spark.master": "spark://m:7077"}  # fmt: skip
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "spark-defaults.conf").write_text("spark.master local[1]\n")
    assert user_spark_settings({"SPARK_HOME": str(tmp_path)}) == {"spark.master": "local[1]"}
    assert user_spark_settings({}) == {} and user_spark_settings({"SPARK_CONF_DIR": str(tmp_path / "none")}) == {}


def _report(**kw) -> ExecutorReport:
    base = dict(address="10.1.0.3", python="3.11.7", executable="/opt/env/bin/python", sparkdl="0.1.0", torch="2.13.0",
                error=None)  # fmt: skip
    return ExecutorReport(**{**base, **kw})


def test_preflight_verdicts_name_the_executor_and_the_fix():
    assert find_problem((_report(), _report(address="10.1.0.4")), "0.1.0", "3.11") is None
    missing = find_problem((_report(), _report(sparkdl=None, error="ModuleNotFoundError: No module named 'sparkdl'")), "0.1.0", "3.11")
    assert missing.startswith("the executor at 10.1.0.3 (/opt/env/bin/python, Python 3.11.7) cannot import sparkdl")
    assert "spark.pyspark.python" in missing and "--archives" in missing and "\n" not in missing
    assert "runs sparkdl 0.0.9, the driver sparkdl 0.1.0" in find_problem((_report(sparkdl="0.0.9"),), "0.1.0", "3.11")
    assert "not its dependencies (ImportError: torch)" in find_problem((_report(error="ImportError: torch"),), "0.1.0", "3.11")
    assert "runs Python 3.12.1, the driver Python 3.11" in find_problem((_report(python="3.12.1"),), "0.1.0", "3.11")


def test_a_probe_that_never_started_is_explained_from_sparks_message():
    msg = ("Job aborted due to stage failure: Task 0 in stage 0.0 failed 4 times, most recent failure: Lost task 0.3 in "
           "stage 0.0 (TID 3) (10.1.0.3 executor 1): org.apache.spark.api.python.PythonException: ... "
           "[PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.12 than that in driver: 3.11, ...")  # fmt: skip
    line = explain_failure(msg, "0.1.0")
    assert line.startswith("the executor at 10.1.0.3 (executor 1) runs Python 3.12, the driver Python 3.11"), line
    other = explain_failure("java.io.IOException: Cannot run program \"/nope/python\"\n\tat ...", "0.1.0")
    assert other.startswith("an executor could not run sparkdl's preflight task (java.io.IOException: Cannot run program")


def test_no_probe_where_local_workers_run_this_very_interpreter():
    import sys
    from types import SimpleNamespace

    from sparkdl.preflight import _same_interpreter

    assert _same_interpreter(SimpleNamespace(master="local[2]", pythonExec=sys.executable))
    assert not _same_interpreter(SimpleNamespace(master="local[2]", pythonExec="python3"))  # PATH's python: probe it
    assert not _same_interpreter(SimpleNamespace(master="spark://m:7077", pythonExec=sys.executable))  # other hosts
