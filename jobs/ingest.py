"""spark-submit entry point of the repository: `sparkdl ingest` as a job (the same file ships in the package as
sparkdl/jobs/ingest.py: `spark-submit "$(python -m sparkdl.jobs --path ingest)"` where only the wheel is installed).

    spark-submit --master spark://HOST:7077 jobs/ingest.py --help
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("ingest"))
