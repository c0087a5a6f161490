"""spark-submit entry point: images table -> features table (frozen pretrained CNN inside the executors).

    spark-submit --master spark://HOST:7077 jobs/featurize.py --help

Thin on purpose: the options and the code path are those of `sparkdl featurize` (sparkdl.cli); the master, executors
and confs come from spark-submit. sparkdl must be importable on the driver and the executors (README: "Run on a
cluster").
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]], job=True))
