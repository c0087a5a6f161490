"""spark-submit entry points inside the package, so a wheel user has files to give spark-submit.

    spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path train)" --features ... --output ...
    spark-submit --master k8s://https://API:6443 ... local:///<site-packages>/sparkdl/jobs/train.py ...
    python -m sparkdl.jobs.train --features ...      # the same job on the driver's own Python (local Spark)

Each ``<stage>.py`` is thin on purpose: the options and the code path are those of ``sparkdl <stage>``
(``sparkdl.cli``); the master, executors and confs come from spark-submit. sparkdl must be importable on the driver
and the executors (README: "Run on a cluster"). The repository's ``jobs/*.py`` call :func:`run` the same way.
"""
from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["STAGES", "path", "run"]

STAGES = ("ingest", "featurize", "train", "evaluate", "predict")
_HERE = Path(__file__).resolve().parent


def path(stage: str) -> Path:
    """The file of a stage's spark-submit entry point."""
    if stage not in STAGES:
        raise ValueError(f"unknown job {stage!r}: choose one of {', '.join(STAGES)}")
    return _HERE / f"{stage}.py"


def run(stage: str, argv: list[str] | None = None) -> int:
    """Run ``sparkdl <stage> argv`` (default ``sys.argv[1:]``) as a job: usage lines name the job file."""
    # spark-submit runs a job file as a script, which puts this folder first on sys.path: its train.py, predict.py ...
    # would shadow any top-level module of the same name imported later (by sparkdl or a dependency).
    sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != _HERE]
    from sparkdl.cli import main

    return main([stage, *(sys.argv[1:] if argv is None else argv)], job=True)

