"""spark-submit entry point of the repository: `sparkdl train` as a job (the same file ships in the package as
sparkdl/jobs/train.py: `spark-submit "$(python -m sparkdl.jobs --path train)"` where only the wheel is installed).

    spark-submit --master spark://HOST:7077 jobs/train.py --help
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("train"))
