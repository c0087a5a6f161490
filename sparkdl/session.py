"""Build or join the SparkSession with the settings sparkdl relies on.

* Arrow on (``mapInArrow`` / pandas conversions), Python worker reuse on (one model per Python worker).
* Local masters: the driver, block manager and UI bind to 127.0.0.1, and executors' Python is this interpreter.
* Under ``spark-submit`` the master and confs given there win; we only add what is missing.
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sparkdl.config import SessionConfig
from sparkdl.errors import ConfigError
from sparkdl.progress import JOB_GROUP_PREFIX

JAVA_HELP = (
    "Spark needs Java 17 (or 21), and none was found: install a JDK/JRE, e.g. "
    "`apt-get install -y openjdk-17-jre-headless` (Debian/Ubuntu) or `brew install openjdk@17` (macOS), "
    "then put `java` on PATH or set JAVA_HOME"
)


def find_java(environ: dict[str, str] | None = None) -> str:
    """Return the java executable Spark will use, or raise ConfigError saying how to install one."""
    env = os.environ if environ is None else environ
    java_home = env.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        raise ConfigError(f"JAVA_HOME={java_home} has no executable bin/java. {JAVA_HELP}")
    found = shutil.which("java", path=env.get("PATH", ""))
    if found is None:
        raise ConfigError(JAVA_HELP)
    return found


def is_local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[") or master.startswith("local-cluster[")


def build_session(config: SessionConfig | None = None):
    """Return a SparkSession configured for sparkdl (creating it if none is active)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    config = config or SessionConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        _apply_runtime_conf(active, config)
        return active

    conf = SparkConf()  # under spark-submit this already holds the submitted master and confs
    if config.master is not None:
        conf.setMaster(config.master)
    elif not conf.contains("spark.master"):
        conf.setMaster("local[*]")
    master = conf.get("spark.master")
    launched_here = os.environ.get("PYSPARK_GATEWAY_PORT") is None
    if launched_here:
        find_java()

    defaults: dict[str, str] = {
        "spark.app.name": config.app_name,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.arrow_max_records_per_batch),
        "spark.python.worker.reuse": "true",
        "spark.ui.enabled": "true" if config.ui_enabled else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
    }
    if is_local_master(master):
        # Everything this process starts listens on loopback; the launcher reads SPARK_LOCAL_IP at JVM start.
        # PySpark takes the executors' Python from PYSPARK_PYTHON (not from the conf) when not under spark-submit:
        # without it a virtualenv's packages (torch, Pillow) are missing in the workers.
        if launched_here:
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        defaults.update(
            {
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.memory": config.driver_memory,
                "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable,
            }
        )
        if launched_here:
            log_conf = Path(__file__).parent / "conf" / "log4j2.properties"
            defaults["spark.driver.extraJavaOptions"] = f"-Dlog4j.configurationFile={log_conf.as_uri()}"
    for key, value in defaults.items():
        if not conf.contains(key):
            conf.set(key, value)
    for key, value in config.extra_conf:
        conf.set(key, value)

    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel(config.log_level.upper())
    return spark


def _apply_runtime_conf(spark, config: SessionConfig) -> None:
    """Settings that may change on a live session (SQL confs only)."""
    spark.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.arrow_max_records_per_batch))
    for key, value in config.extra_conf:
        if key.startswith("spark.sql."):
            spark.conf.set(key, value)


def is_connect(obj) -> bool:
    """True for a Spark Connect SparkSession or DataFrame (no SparkContext, no RDDs, no Hadoop client here)."""
    return type(obj).__module__.startswith("pyspark.sql.connect")


@contextmanager
def job_description(spark, stage: str, text: str) -> Iterator[None]:
    """Every Spark job this thread starts inside the block shows ``sparkdl <stage>: <text>`` in the Spark UI and
    belongs to the job group ``sparkdl-<stage>`` (``statusTracker().getJobIdsForGroup``); the thread's previous
    group and description come back afterwards. A Spark Connect session has no SparkContext: nothing is set."""
    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect: jobs are described by the server
        yield
        return
    keys = ("spark.jobGroup.id", "spark.job.description")
    before = {k: sc.getLocalProperty(k) for k in keys}
    sc.setLocalProperty("spark.jobGroup.id", JOB_GROUP_PREFIX + stage)
    sc.setLocalProperty("spark.job.description", f"sparkdl {stage}: {text}")
    try:
        yield
    finally:
        for key, value in before.items():
            sc.setLocalProperty(key, value)  # None removes the property
