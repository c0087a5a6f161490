"""spark-submit entry point: image-folder tree -> images table (train/valid/test split, rejects counted).

    spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path ingest)" --help
    python -m sparkdl.jobs.ingest --help

The options and the code path are those of `sparkdl ingest` (sparkdl.cli); see sparkdl/jobs/__init__.py.
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("ingest"))
