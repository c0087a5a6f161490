"""spark-submit entry point: model bundle + features table -> metrics.

    spark-submit --master spark://HOST:7077 jobs/evaluate.py --help

Thin on purpose: the options and the code path are those of `sparkdl evaluate` (sparkdl.cli); the master, executors
and confs come from spark-submit. sparkdl must be importable on the driver and the executors (README: "Run on a
cluster").
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], job=True))
