"""Build or join the SparkSession with the settings sparkdl relies on.

* Arrow on (``mapInArrow`` / pandas conversions), Python worker reuse on (one model per Python worker).
* Join, never override: under ``spark-submit`` (or beside a SparkContext of the caller's) the master and every conf
  given there win; sparkdl only fills in what was left unset. ``--spark-master`` applies only when sparkdl launches
  Spark itself, and then the user's own ``spark-defaults.conf`` / ``PYSPARK_SUBMIT_ARGS`` rank above sparkdl's
  defaults.
* Local masters sparkdl launches: the driver, block manager and UI bind to 127.0.0.1, and executors' Python is this
  interpreter.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sparkdl.config import LOCAL_DRIVER_MEMORY, SessionConfig
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
    """Return a SparkSession for sparkdl: the one this process already runs (joined, its settings kept), or one
    sparkdl launches itself (``config.master``, else the user's own settings, else ``local[*]``)."""
    from pyspark import SparkContext

    config = config or SessionConfig()
    if SparkContext._active_spark_context is not None or os.environ.get("PYSPARK_GATEWAY_PORT"):
        spark = _join(config)
    else:
        spark = _launch(config)
    return spark


# sparkdl's own defaults: set only where the application (spark-submit, spark-defaults.conf, the caller) set nothing
def _defaults(config: SessionConfig) -> dict[str, str]:
    return {
        "spark.app.name": config.app_name,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(config.arrow_max_records_per_batch),
        "spark.python.worker.reuse": "true",
        "spark.ui.enabled": "true" if config.ui_enabled else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
    }


_UNSET = "<sparkdl: unset>"


def _join(config: SessionConfig):
    """Join the Spark this process already runs: a SparkSession or SparkContext of the caller's, or the JVM
    ``spark-submit`` started (its master and ``--conf`` live there, not in a Python-side ``SparkConf``). Only keys the
    application left unset get sparkdl's defaults; ``config.master`` must agree with the running master."""
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    sc = SparkContext._active_spark_context
    if sc is None:
        SparkContext._ensure_initialized()  # connects to spark-submit's JVM (PYSPARK_GATEWAY_PORT)
        conf = SparkConf()  # JVM-backed now: what spark-submit was given (its system properties)
    else:
        conf = sc.getConf()
    running = conf.get("spark.master", None)
    if config.master is not None and config.master != running:
        how = "spark-submit" if sc is None else "the SparkContext already running in this process"
        raise ConfigError(
            f"--spark-master {config.master} cannot apply: this process already runs Spark with master {running} "
            f"({how}); drop --spark-master (or pass the master to spark-submit)"
        )
    if sc is None:
        for key, value in config.extra_conf:
            conf.set(key, value)
        for key, value in _defaults(config).items():
            if not conf.contains(key):
                conf.set(key, value)
        spark = _start(SparkSession.builder.config(conf=conf))
    else:
        spark = SparkSession.getActiveSession() or SparkSession(sc)
        for key, value in _defaults(config).items():
            # a live context takes only SQL confs; those the application set itself stay
            if key.startswith("spark.sql.") and spark.conf.get(key, _UNSET) == _UNSET:
                spark.conf.set(key, value)
        for key, value in config.extra_conf:
            if key.startswith("spark.sql."):
                spark.conf.set(key, value)
    if config.log_level is not None:
        spark.sparkContext.setLogLevel(config.log_level.upper())
    return spark


def _launch(config: SessionConfig):
    """Start Spark in this process: ``config.master`` if given, else the user's own (``spark-defaults.conf``,
    ``PYSPARK_SUBMIT_ARGS``), else ``local[*]``; sparkdl's defaults fill only what the user left unset."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    find_java()
    user = user_spark_settings()
    master = config.master or user.get("spark.master") or "local[*]"
    conf = SparkConf(loadDefaults=False).setMaster(master)
    wanted = _defaults(config)
    if is_local_master(master):
        # Everything this process starts listens on loopback; the launcher reads SPARK_LOCAL_IP at JVM start.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        log_conf = Path(__file__).parent / "conf" / "log4j2.properties"
        wanted.update(
            {
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.driver.memory": LOCAL_DRIVER_MEMORY,
                "spark.pyspark.python": sys.executable,
                "spark.pyspark.driver.python": sys.executable,
                "spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile={log_conf.as_uri()}",
            }
        )
    # PySpark starts Python workers with PYSPARK_PYTHON (read when the SparkContext starts), not the conf: as
    # spark-submit does, a spark.pyspark.python the user gave becomes that variable; for local masters an unset one
    # is this interpreter (else a virtualenv's packages are missing in the workers).
    executor_python = dict(config.extra_conf).get("spark.pyspark.python") or user.get("spark.pyspark.python")
    if executor_python:
        os.environ["PYSPARK_PYTHON"] = executor_python
    elif is_local_master(master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    if config.driver_memory is not None:
        conf.set("spark.driver.memory", config.driver_memory)
    for key, value in wanted.items():
        if key not in user and not conf.contains(key):
            conf.set(key, value)
    for key, value in config.extra_conf:
        conf.set(key, value)
    spark = _start(SparkSession.builder.config(conf=conf))
    spark.sparkContext.setLogLevel((config.log_level or "WARN").upper())
    return spark


def _start(builder):
    """``builder.getOrCreate()``; a SparkContext that refuses to start (a bad conf value, a master it cannot reach)
    is one line with the JVM's own reason, not a py4j trace."""
    try:
        return builder.getOrCreate()
    except Exception as e:  # py4j's Py4JJavaError carries the JVM exception
        java = getattr(e, "java_exception", None)
        reason = java.toString() if java is not None else f"{type(e).__name__}: {e}"
        raise ConfigError(f"Spark did not start: {reason.splitlines()[0] if reason else type(e).__name__}") from None


def user_spark_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The Spark settings the user gave this machine before sparkdl launches Spark: the properties file spark-submit
    would read (``--properties-file`` in ``PYSPARK_SUBMIT_ARGS``, else ``$SPARK_CONF_DIR/spark-defaults.conf``, else
    ``$SPARK_HOME/conf/spark-defaults.conf``), overlaid with ``PYSPARK_SUBMIT_ARGS``' ``--master``, ``--name``,
    ``--driver-memory`` and ``--conf k=v`` (as spark-submit ranks them)."""
    env = os.environ if environ is None else environ
    args = shlex.split(env.get("PYSPARK_SUBMIT_ARGS", ""))
    flags = {"--master": "spark.master", "--name": "spark.app.name", "--driver-memory": "spark.driver.memory",
             "--properties-file": "--properties-file"}  # fmt: skip
    given: dict[str, str] = {}
    confs: dict[str, str] = {}
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        if name in flags:
            given[flags[name]] = value
        elif arg == "--conf" or arg == "-c":
            key, _, v = value.partition("=")
            confs[key] = v
        elif arg.startswith("--conf="):
            key, _, v = arg[len("--conf="):].partition("=")
            confs[key] = v
    props = given.pop("--properties-file", None)
    if props is None:
        conf_dir = env.get("SPARK_CONF_DIR") or (str(Path(env["SPARK_HOME"]) / "conf") if env.get("SPARK_HOME") else None)
        props = str(Path(conf_dir) / "spark-defaults.conf") if conf_dir else None
    settings = _read_properties(Path(props)) if props else {}
    settings.update(confs)
    settings.update(given)  # spark-submit's own flags win over --conf and the file
    return settings


def _read_properties(path: Path) -> dict[str, str]:
    """The ``spark.*`` entries of a Java properties file as spark-submit reads spark-defaults.conf (``key value``,
    ``key=value`` or ``key: value``; ``#``/``!`` comments); a missing file is no settings."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        match = re.match(r"([^\s=:]+)\s*[=:\s]\s*(.*)$", line)
        if match and match.group(1).startswith("spark."):
            out[match.group(1)] = match.group(2).strip()
    return out


def is_connect(obj) -> bool:
    """True for a Spark Connect SparkSession or DataFrame (no SparkContext, no RDDs, no Hadoop client here)."""
    return type(obj).__module__.startswith("pyspark.sql.connect")


@contextmanager
def job_description(spark, stage: str, text: str) -> Iterator[None]:
    """Every Spark job this thread starts inside the block shows ``sparkdl <stage>: <text>`` in the Spark UI and
    belongs to the job group ``sparkdl-<stage>`` (``statusTracker().getJobIdsForGroup``); the thread's previous
    group and description come back afterwards. Every stage's Spark work starts here, so this is also where the
    executor preflight runs (``sparkdl.preflight``: once per application, a ``ConfigError`` naming the executor and
    the fix when they cannot run sparkdl). A Spark Connect session has no SparkContext: nothing is set or checked."""
    from sparkdl.preflight import check_executors

    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect: jobs are described by the server
        yield
        return
    check_executors(spark)
    with described_jobs(sc, stage, text):
        yield


@contextmanager
def described_jobs(sc, stage: str, text: str) -> Iterator[None]:
    """``job_description`` without the preflight (the preflight's own job uses it): the job group and description
    of this thread's jobs inside the block, the previous ones restored afterwards."""
    keys = ("spark.jobGroup.id", "spark.job.description")
    before = {k: sc.getLocalProperty(k) for k in keys}
    sc.setLocalProperty("spark.jobGroup.id", JOB_GROUP_PREFIX + stage)
    sc.setLocalProperty("spark.job.description", f"sparkdl {stage}: {text}")
    try:
        yield
    finally:
        for key, value in before.items():
            sc.setLocalProperty(key, value)  # None removes the property
