"""spark-submit entry point: model bundle + images (a folder or an images table) -> predictions table; or, with --stream, a streaming
query over a folder that receives new images.

    spark-submit --master spark://HOST:7077 "$(python -m sparkdl.jobs --path predict)" --help
    python -m sparkdl.jobs.predict --help

The options and the code path are those of `sparkdl predict` (sparkdl.cli); see sparkdl/jobs/__init__.py.
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("predict"))
