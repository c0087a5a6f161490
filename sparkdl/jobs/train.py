"""spark-submit entry point: features table -> model bundle (--training-master averaging | sharing).

    spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path train)" --help
    python -m sparkdl.jobs.train --help

The options and the code path are those of `sparkdl train` (sparkdl.cli); see sparkdl/jobs/__init__.py.
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("train"))
