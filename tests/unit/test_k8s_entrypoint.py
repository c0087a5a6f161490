"""docker/entrypoint.sh as Spark's Kubernetes scheduler runs it: a fake java / spark-submit on PATH record argv."""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"


@pytest.fixture()
def fake_spark(tmp_path):
    record = tmp_path / "argv"
    home = tmp_path / "spark"
    (home / "bin").mkdir(parents=True)
    (home / "jars").mkdir()
    fake = f'#!/bin/sh\nfor a in "$0" "$@"; do printf "%s\\n" "$a"; done > {record}\n'
    for path in (home / "bin" / "spark-submit", tmp_path / "jdk" / "bin" / "java"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(fake)
        path.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SPARK_HOME": str(home), "JAVA_HOME": str(tmp_path / "jdk")}
    return env, record, home


def _run(env, *args):
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=30)


def test_executor_runs_the_kubernetes_backend_with_spark_variables(fake_spark):
    env, record, home = fake_spark
    env.update(SPARK_EXECUTOR_MEMORY="2g", SPARK_DRIVER_URL="spark://CoarseGrainedScheduler@driver-svc:7078",
               SPARK_EXECUTOR_ID="3", SPARK_EXECUTOR_CORES="2", SPARK_APPLICATION_ID="spark-app-1",
               SPARK_EXECUTOR_POD_IP="10.0.0.7", SPARK_RESOURCE_PROFILE_ID="0", SPARK_EXECUTOR_POD_NAME="exec-3",
               SPARK_JAVA_OPT_10="-Dten", SPARK_JAVA_OPT_2="-Dtwo", SPARK_CLASSPATH="/opt/extra.jar")
    done = _run(env, "executor")
    assert done.returncode == 0, done.stderr
    argv = record.read_text().splitlines()
    assert argv[0].endswith("/jdk/bin/java")
    assert argv[1:5] == ["-Dtwo", "-Dten", "-Xms2g", "-Xmx2g"]  # SPARK_JAVA_OPT_n in numeric order
    assert argv[5:7] == ["-cp", f"/opt/extra.jar:{home}/jars/*"]
    assert argv[7:] == ["org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend",
                        "--driver-url", "spark://CoarseGrainedScheduler@driver-svc:7078", "--executor-id", "3",
                        "--cores", "2", "--app-id", "spark-app-1", "--hostname", "10.0.0.7",
                        "--resourceProfileId", "0", "--podName", "exec-3"]  # fmt: skip


def test_driver_runs_spark_submit_in_client_mode(fake_spark):
    env, record, home = fake_spark
    env["SPARK_DRIVER_BIND_ADDRESS"] = "10.0.0.5"
    done = _run(env, "driver", "--properties-file", "/opt/spark/conf/spark.properties", "--class",
                "org.apache.spark.deploy.PythonRunner", "local:///home/spark/jobs/train.py", "--epochs", "3")
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == [
        f"{home}/bin/spark-submit", "--conf", "spark.driver.bindAddress=10.0.0.5",
        "--conf", "spark.executorEnv.SPARK_DRIVER_POD_IP=10.0.0.5", "--deploy-mode", "client",
        "--properties-file", "/opt/spark/conf/spark.properties", "--class", "org.apache.spark.deploy.PythonRunner",
        "local:///home/spark/jobs/train.py", "--epochs", "3"]  # fmt: skip


def test_anything_else_is_passed_through(fake_spark, tmp_path):
    env, _, _ = fake_spark
    done = _run(env, "sh", "-c", "echo $PYSPARK_PYTHON; echo hello")
    assert done.returncode == 0 and done.stdout.split() == ["python", "hello"]


@pytest.mark.parametrize("args, missing", [(["executor"], "SPARK_EXECUTOR_MEMORY"), (["driver"], "SPARK_DRIVER_BIND_ADDRESS")])
def test_a_missing_spark_variable_is_one_clear_line(fake_spark, args, missing):
    env, record, _ = fake_spark
    done = _run(env, *args)
    assert done.returncode == 64 and not record.exists()
    assert done.stderr.strip().count("\n") == 0 and missing in done.stderr


def test_nothing_to_run(fake_spark):
    done = _run(fake_spark[0])
    assert done.returncode == 64 and "nothing to run" in done.stderr
