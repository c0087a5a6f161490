"""spark-submit entry point: features table -> model bundle (--master averaging | sharing).

    spark-submit --master spark://HOST:7077 jobs/train.py --help

Thin on purpose: the options and the code path are those of `sparkdl train` (sparkdl.cli); the master, executors
and confs come from spark-submit. sparkdl must be importable on the driver and the executors (README: "Run on a
cluster").
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], job=True))
