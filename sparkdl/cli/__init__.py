"""``sparkdl`` command line: demo | ingest | featurize | train | evaluate | report | fs.

The only place (with ``sparkdl.jobs``) that reads argv and the environment. Progress lines go to stderr, the final summary
to stdout (``--json`` for a machine-readable one). Errors: one line on stderr, exit code 1 (2 for usage errors,
130 when interrupted); ``--debug`` shows the traceback instead.

Layout: this module builds the parser, dispatches and handles errors; ``options`` holds what commands share (the
common Spark options, argument types, the training options, the session, summaries); one module per command group
(``stages``: demo ... report; ``fs``).

Adding a command group (e.g. ``infer``: predict, serve, export):

1. write ``sparkdl/cli/<group>.py`` with ::

       def register(sub, common) -> dict[str, Callable[[argparse.Namespace, Progress], dict]]:
           p = sub.add_parser("predict", parents=[common], help=..., description=...)
           p.add_argument(...)
           return {"predict": run_predict}

   ``sub`` is the top-level sub-parsers action (under ``job=True`` its ``add_parser`` names each command
   ``spark-submit sparkdl/jobs/<name>.py``); ``common`` is ``options.common_parser()``, the parent giving ``--spark-master``,
   ``--driver-memory``, ``--json``, ``--quiet``, ``--progress-every``, ``--debug`` (a command without it must still
   define ``--quiet`` and ``--debug``). A runner ``run_x(args, say)`` prints its summary and returns the payload; it
   raises to fail (``SparkDLError`` for a one-line error, ``options.QuietFailure`` for exit 1 with no line). Import
   heavy modules (Spark, torch) inside the runners, not at the top of the module.
2. list the module once in ``GROUPS`` below; its position is where its commands appear in ``sparkdl --help``.

``register`` must return a runner for exactly the commands it added (checked when the parser is built).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from sparkdl.cli import export, fs, predict, serve, stages
from sparkdl.cli.options import Progress, QuietFailure, cli_params, common_parser, tracking_config
from sparkdl.errors import SparkDLError
from sparkdl.progress import DEFAULT_INTERVAL_S

__all__ = ["main", "build_parser", "GROUPS"]

Runner = Callable[[argparse.Namespace, Progress], dict]

# Command groups, in `sparkdl --help` order. Each has `register(sub, common) -> {command: runner}`.
GROUPS = (stages, predict, serve, export, fs)


def _build(job: bool) -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    """The parser and the dispatch table ``{command: runner}`` (COMMANDS), built together from ``GROUPS``."""
    parser = argparse.ArgumentParser(
        prog="sparkdl",
        description="Transfer learning on Apache Spark: ingest image folders, featurize with a frozen CNN, "
        "train a PyTorch head across executors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if job:
        add_parser = sub.add_parser
        sub.add_parser = lambda name, **kw: add_parser(name, prog=f"spark-submit sparkdl/jobs/{name}.py", **kw)  # type: ignore[method-assign]
    common = common_parser()
    commands: dict[str, Runner] = {}
    for group in GROUPS:
        before = set(sub.choices)
        runners = group.register(sub, common)
        added = set(sub.choices) - before
        if added != set(runners):
            raise RuntimeError(f"{group.__name__}.register added commands {sorted(added)} but returned runners for {sorted(runners)}")
        commands.update(runners)
    return parser, commands


def build_parser(job: bool = False) -> argparse.ArgumentParser:
    """The ``sparkdl`` parser; ``job=True`` names each command ``spark-submit sparkdl/jobs/<command>.py`` in its usage."""
    return _build(job)[0]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Errors raised in a Spark worker arrive wrapped with the worker's traceback: the cause is its last line.
    first = lines[-1] if "Traceback (most recent call last)" in text else lines[0]
    return first if isinstance(exc, SparkDLError) else f"{type(exc).__name__}: {first}"


def _run(runner: Runner, args: argparse.Namespace, say: Progress) -> dict:
    """The command, inside an MLflow run when asked (``--mlflow``): its options as params, the summary's numbers as
    metrics (``metrics.<split>.<name>`` as ``<split>.<name>``); the runner finds the run as ``args.mlflow_run``."""
    tracking = tracking_config(args)
    if tracking is None:
        return runner(args, say)
    from sparkdl.tracking import MlflowRun, flatten

    with MlflowRun(tracking, args.command, params=cli_params(args), say=say) as run:
        args.mlflow_run = run
        say(f"{args.command}: MLflow run {run.run_id} in experiment {tracking.experiment!r} at {tracking.uri}")
        payload = runner(args, say)
        run.log_metrics({k.removeprefix("metrics."): v for k, v in flatten(payload).items()})
    return payload


def main(argv: Sequence[str] | None = None, job: bool = False) -> int:
    """``job=True``: called by a ``sparkdl/jobs/<command>.py`` entry point (usage lines name the job)."""
    parser, commands = _build(job)
    args = parser.parse_args(argv)
    say = Progress(quiet=args.quiet, interval_s=getattr(args, "progress_every", DEFAULT_INTERVAL_S))
    try:
        _run(commands[args.command], args, say)
    except QuietFailure:
        return 1
    except KeyboardInterrupt:
        print("sparkdl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users; --debug for the traceback
        if args.debug:
            raise
        print(f"sparkdl {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0
