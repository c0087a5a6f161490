"""spark-submit entry point: images table -> features table (frozen pretrained CNN inside the executors).

    spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path featurize)" --help
    python -m sparkdl.jobs.featurize --help

The options and the code path are those of `sparkdl featurize` (sparkdl.cli); see sparkdl/jobs/__init__.py.
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("featurize"))
