"""spark-submit entry point: model bundle + features table -> metrics (accuracy, top-5, per class).

    spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path evaluate)" --help
    python -m sparkdl.jobs.evaluate --help

The options and the code path are those of `sparkdl evaluate` (sparkdl.cli); see sparkdl/jobs/__init__.py.
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("evaluate"))
