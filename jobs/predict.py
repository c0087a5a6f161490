"""spark-submit entry point: model bundle + images (a folder or an images table) -> predictions table; or, with
--stream, a streaming query over a folder that receives new images.

    spark-submit --master spark://HOST:7077 jobs/predict.py --help

Thin on purpose: the options and the code path are those of `sparkdl predict` (sparkdl.cli); the master, executors
and confs come from spark-submit. sparkdl must be importable on the driver and the executors (README: "Run on a
cluster").
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]], job=True))
