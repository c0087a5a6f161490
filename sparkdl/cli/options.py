"""What every command group shares: progress lines, argument types, the common options, the training options and
their config, the Spark session, the MLflow tracking options, the summary printer.

Names used by more than one module are public here; argv and the environment are read only in ``sparkdl.cli`` (and
``sparkdl.jobs``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from sparkdl.config import EXECUTIONS, LOCAL_DRIVER_MEMORY, MASTERS, OPTIMIZERS, SPARK_TRANSPORTS, SessionConfig, TrainConfig, training_defaults
from sparkdl.errors import ConfigError
from sparkdl.progress import DEFAULT_INTERVAL_S, Reporter, spark_ui_url


class Progress(Reporter):
    """The commands' progress: ``[   12.3s] message`` lines on stderr, and the live progress of long stages (a
    ``rich`` bar when stderr is a terminal, else a line every ``interval_s``); ``quiet``: none of it."""

    def __init__(self, quiet: bool = False, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        super().__init__(quiet=quiet, interval_s=interval_s)
        self.start = time.perf_counter()

    def format(self, message: str) -> str:
        return f"[{time.perf_counter() - self.start:7.1f}s] {message}"


class QuietFailure(Exception):
    """Exit code 1 with no error line (``sparkdl fs exists`` on a missing path)."""


# -- argument types ------------------------------------------------------------------------------------------------


def split_arg(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split takes three comma-separated fractions like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split takes three fractions (train,valid,test), got {len(parts)}")
    return parts  # type: ignore[return-value]


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value}")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value}")
    return value


# -- options -------------------------------------------------------------------------------------------------------


def common_parser() -> argparse.ArgumentParser:
    """The parent parser of every Spark command: ``--spark-master``, ``--driver-memory``, ``--json``, ``--quiet``,
    ``--progress-every``, ``--debug`` (``args.quiet`` and ``args.debug`` are read by ``main``: a command without this
    parent must define them too; ``--progress-every`` falls back to its default)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--spark-master",
        default=None,
        help="Spark master URL when sparkdl launches Spark itself (default: spark-defaults.conf's or "
        "PYSPARK_SUBMIT_ARGS', else local[*]); under spark-submit the master is spark-submit's own --master",
    )
    common.add_argument("--driver-memory", default=None,
                        help="driver JVM heap when sparkdl launches Spark itself (default: spark-defaults.conf's, else "
                        f"{LOCAL_DRIVER_MEMORY} for local masters; under spark-submit pass its own --driver-memory)")
    common.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common.add_argument("--progress-every", type=positive_seconds, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                        help="seconds between progress reports of long stages on stderr when it is not a terminal "
                        f"(a terminal gets a live bar) (default {DEFAULT_INTERVAL_S:g})")  # fmt: skip
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return common


def add_mlflow_args(p: argparse.ArgumentParser) -> None:
    """``--mlflow``, ``--mlflow-uri``, ``--mlflow-experiment``, ``--mlflow-run-name`` (read by ``tracking_config``)."""
    g = p.add_argument_group("MLflow tracking (pip install 'sparkdl-torch[mlflow]')")
    g.add_argument("--mlflow", action="store_true",
                   help="log this run to MLflow (tracking URI: --mlflow-uri, else MLFLOW_TRACKING_URI)")  # fmt: skip
    g.add_argument("--mlflow-uri", default=None, metavar="URI",
                   help="MLflow tracking URI, e.g. http://mlflow:5000, databricks or sqlite:///mlflow.db (implies --mlflow)")
    g.add_argument("--mlflow-experiment", default=None, metavar="NAME",
                   help="experiment (created when missing; default MLFLOW_EXPERIMENT_NAME, else sparkdl)")  # fmt: skip
    g.add_argument("--mlflow-run-name", default=None, metavar="NAME", help="the run's name (default: MLflow's)")


def tracking_config(args, environ=None):
    """The command's ``TrackingConfig``, or None when neither ``--mlflow`` nor ``--mlflow-uri`` was given."""
    from sparkdl.tracking import TrackingConfig

    env = os.environ if environ is None else environ
    if not getattr(args, "mlflow", False) and not getattr(args, "mlflow_uri", None):
        return None
    uri = args.mlflow_uri or env.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("--mlflow needs a tracking URI: --mlflow-uri URI or MLFLOW_TRACKING_URI "
                          "(e.g. http://mlflow:5000, or sqlite:///mlflow.db for a local store)")  # fmt: skip
    experiment = args.mlflow_experiment or env.get("MLFLOW_EXPERIMENT_NAME") or "sparkdl"
    return TrackingConfig(uri=uri, experiment=experiment, run_name=args.mlflow_run_name)


# the options that steer the command line itself, not the stage: not logged as a run's params
NOT_PARAMS = {"command", "json", "quiet", "debug", "progress_every", "mlflow", "mlflow_uri", "mlflow_experiment",
              "mlflow_run_name", "mlflow_run"}  # fmt: skip


def cli_params(args) -> dict:
    """The options a command ran with, as a tracking run's params."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_PARAMS}


DEPRECATED_MASTER_WARNING = "--master is deprecated, use --training-master (it will be removed in 0.3)"


def _command_name(prog: str) -> str:
    """The command a sub-parser's prog names: ``sparkdl train`` -> ``train``; a job's (``sparkdl.cli._build(job=True)``)
    ``spark-submit sparkdl/jobs/train.py`` -> ``train``."""
    return os.path.splitext(os.path.basename(prog.split()[-1]))[0]


class _TrainingMasterAction(argparse.Action):
    """``--training-master`` and its deprecated alias ``--master`` (until 0.3; renamed because spark-submit's own
    ``--master`` sits on the same command line). Both store ``training_master``. The alias warns once a parse on
    stderr, named like the commands' errors (``sparkdl <command>: warning: ...``, jobs too); the two given with
    different values are a usage error: one line (after the alias's warning), exit code 2."""

    def __init__(self, option_strings, dest, given: dict, command: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.given, self.command = given, command

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if self.given.get("namespace") is not namespace:  # a new parse (argparse gives each parse its own namespace)
            self.given.clear()
            self.given["namespace"] = namespace
        flag, other = ("--master", "--training-master") if "--master" in self.option_strings else ("--training-master", "--master")
        if flag == "--master" and flag not in self.given:
            print(f"sparkdl {self.command}: warning: {DEPRECATED_MASTER_WARNING}", file=sys.stderr)
        self.given[flag] = values
        if self.given.get(other, values) != values:
            parser.exit(2, f"sparkdl {self.command}: error: --training-master {self.given['--training-master']} and "
                        f"--master {self.given['--master']} disagree (--master is the deprecated name of "
                        "--training-master): give only --training-master\n")  # fmt: skip
        setattr(namespace, self.dest, values)


def add_train_args(p: argparse.ArgumentParser, epochs: int | None = None) -> None:
    """The training options (one per ``HasTrainingParams`` Param of ``sparkdl.ml.train_params``, same defaults: both take
    them from ``config.training_defaults()``, i.e. the config dataclasses). ``epochs`` overrides that default for
    commands that want another one."""
    d = training_defaults()
    epochs = d["epochs"] if epochs is None else epochs
    given: dict = {}  # shared by --training-master and its deprecated alias --master (see _TrainingMasterAction)
    command = _command_name(p.prog)  # for the deprecated --master's warning
    # the alias first: the same dest, hidden from --help (the new flag's help names it)
    p.add_argument("--master", dest="training_master", default=argparse.SUPPRESS, choices=list(MASTERS),
                   action=_TrainingMasterAction, given=given, command=command, help=argparse.SUPPRESS)  # fmt: skip
    p.add_argument(
        "--training-master",
        dest="training_master",
        default=d["master"],
        choices=list(MASTERS),
        action=_TrainingMasterAction,
        given=given,
        command=command,
        help="averaging: parameter averaging (DL4J ParameterAveragingTrainingMaster); sharing: threshold-quantized "
        f"gradient sharing over a tree of workers (Strom 2015, DL4J SharedTrainingMaster) (default {d['master']}; "
        "formerly --master: deprecated, removed in 0.3)",
    )
    p.add_argument("--workers", type=positive_int, default=d["workers"], help=f"data-parallel workers (default {d['workers']})")
    p.add_argument("--epochs", type=positive_int, default=epochs, help=f"epochs (default {epochs})")
    p.add_argument("--batch-size-per-worker", type=positive_int, default=d["batchSizePerWorker"],
                   help=f"minibatch per worker (default {d['batchSizePerWorker']})")  # fmt: skip
    p.add_argument("--averaging-frequency", type=positive_int, default=d["averagingFrequency"],
                   help=f"minibatches between averagings (default {d['averagingFrequency']})")  # fmt: skip
    p.add_argument(
        "--execution",
        default=d["execution"],
        choices=list(EXECUTIONS),
        help="barrier: the whole fit in one Spark barrier stage, workers averaging among themselves over --transport "
        f"(fast); rounds: one Spark job per averaging round, a lost task retried alone (default {d['execution']})",
    )
    p.add_argument("--aggregation-depth", type=positive_int, default=d["aggregationDepth"],
                   help=f"treeAggregate depth, --execution rounds (default {d['aggregationDepth']})")  # fmt: skip
    p.add_argument("--tree-fanout", type=positive_int, default=d["treeFanout"],
                   help=f"children per worker in the tree workers sum over (default {d['treeFanout']})")  # fmt: skip
    p.add_argument(
        "--transport",
        default=d["transport"],
        choices=list(SPARK_TRANSPORTS),
        help=f"how barrier workers talk (default {d['transport']}); aeron is refused with the reason "
        "(no binding on Python 3.11)",
    )
    p.add_argument(
        "--threshold",
        default=d["threshold"],
        help="sharing: adaptive[:T0] (keep 1e-4..2e-3 of the entries sent, at least 128 allowed; no message above "
        "the top: the largest go first), fixed:T or target-sparsity:S (at most 2 S a message) "
        f"(default {d['threshold']})",
    )
    p.add_argument("--residual-clip", default=d["residualClip"],
                   help=f"sharing: clip the residual to +-k x tau every n steps, k:n (default {d['residualClip']}; k:0 never)")  # fmt: skip
    p.add_argument("--staleness", type=int, default=d["staleness"],
                   help=f"sharing: 0 synchronous and deterministic; k > 0 up to k steps ahead (default {d['staleness']})")  # fmt: skip
    p.add_argument("--head", default=d["head"], help=f"softmax or mlp:H1,H2,... (default {d['head']})")
    p.add_argument("--dropout", type=fraction, default=d["dropout"],
                   help=f"dropout after each hidden layer of an mlp head (default {d['dropout']})")  # fmt: skip
    p.add_argument("--optimizer", default=d["optimizer"], choices=list(OPTIMIZERS), help=f"default {d['optimizer']}")
    p.add_argument("--lr", type=float, default=d["lr"], help=f"learning rate (default {d['lr']})")
    p.add_argument("--momentum", type=fraction, default=d["momentum"], help=f"momentum for sgd/nesterov (default {d['momentum']})")
    p.add_argument(
        "--average-updater-state",
        action=argparse.BooleanOptionalAction,
        default=d["averageUpdaterState"],
        help="average the optimizer state (momentum, Adam moments) with the parameters "
        f"(default {'on' if d['averageUpdaterState'] else 'off'})",
    )
    patience = d["earlyStoppingPatience"] or None  # the Param's 0 ("off") is the option's None
    p.add_argument("--early-stopping-patience", type=positive_int, default=patience,
                   help="stop after N epochs without a better valid accuracy "
                   f"(default {patience if patience else 'off'})")  # fmt: skip
    p.add_argument("--seed", type=int, default=d["seed"], help=f"head init, shuffling and dropout seed (default {d['seed']})")
    p.add_argument("--score-every", type=int, default=d["scoreEvery"],
                   help="print the training loss every N averaging rounds "
                   f"(default: {d['scoreEvery'] if d['scoreEvery'] else 'per epoch only'})")  # fmt: skip
    p.add_argument("--checkpoint-dir", default=d["checkpointDir"] or None,
                   help="where checkpoints go, any Hadoop URI (default: <output>.checkpoints)")  # fmt: skip
    p.add_argument("--checkpoint-every", type=non_negative_int, default=d["checkpointEvery"],
                   help=f"epochs between checkpoints, 0: none (default {d['checkpointEvery']})")  # fmt: skip
    p.add_argument("--keep-checkpoints", type=positive_int, default=d["keepCheckpoints"],
                   help=f"how many of the newest checkpoints to keep (default {d['keepCheckpoints']})")  # fmt: skip
    p.add_argument("--max-attempts", type=positive_int, default=d["maxAttempts"],
                   help="launch a failed barrier stage (a lost executor, a killed worker) again from the latest "
                   f"checkpoint, up to this many attempts in all (default {d['maxAttempts']})")  # fmt: skip
    p.add_argument("--min-workers", type=positive_int, default=d["minWorkers"] or None,
                   help="elastic: when task slots are lost, go on with as few as this many workers (the shards dealt "
                   "again; sharing drops the lost ranks' residuals) (default off: a fit needs all --workers)")  # fmt: skip
    p.add_argument("--slot-wait", type=float, default=d["slotWait"], metavar="SECONDS",
                   help="after a failure, how long to wait for lost task slots to come back before going on with fewer "
                   f"(--min-workers) or failing (default {d['slotWait']})")  # fmt: skip
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=d["resume"],
                   help="continue from the latest checkpoint in --checkpoint-dir (none there yet: start); settings "
                   "that change the math must match the checkpoint's (default off)")  # fmt: skip


# -- configs from the options ----------------------------------------------------------------------------------------


def train_config(args) -> TrainConfig:
    """The TrainConfig the training options describe (``TrainConfig.from_options``, as the Spark ML Params do)."""
    options = {}
    for name in training_defaults():
        dest = "training_master" if name == "master" else re.sub(r"([A-Z])", r"_\1", name).lower()
        if hasattr(args, dest):
            options[name] = getattr(args, dest)
    return TrainConfig.from_options(options)


def session(args, say=None):
    """The command's SparkSession; ``say`` gets the Spark UI's URL once (when the UI is on)."""
    from sparkdl.session import build_session

    spark = build_session(SessionConfig(master=args.spark_master, driver_memory=args.driver_memory))
    url = spark_ui_url(spark) if say is not None else None
    if url:
        say(f"Spark UI: {url}")
    return spark


# -- summaries -------------------------------------------------------------------------------------------------------


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "none"


def print_summary(title: str, rows: list[tuple[str, object]], payload: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return
    print(title)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def stage_rows(result) -> list[tuple[str, object]]:
    """The summary lines every table-writing stage shares (a ``StageResult``)."""
    return [
        ("output", result.output_uri),
        ("rows in / out", f"{result.rows_in} / {result.rows_out}"),
        ("rejected", f"{result.rows_in - result.rows_out} ({fmt_counts(result.rejects)}) -> {result.rejects_uri}"),
        ("splits", fmt_counts(result.split_counts)),
    ]


def metrics_rows(metrics: dict) -> list[tuple[str, object]]:
    return [
        (split, f"accuracy {m['accuracy']:.4f}  top-5 {m['top5']:.4f}  macro P/R/F1 "
                f"{m['macro_precision']:.4f}/{m['macro_recall']:.4f}/{m['macro_f1']:.4f}  (n={m['n']})")
        for split, m in metrics.items()
    ]  # fmt: skip
