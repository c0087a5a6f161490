"""spark-submit entry point of the repository: `sparkdl predict` as a job (the same file ships in the package as
sparkdl/jobs/predict.py: `spark-submit "$(python -m sparkdl.jobs --path predict)"` where only the wheel is installed).

    spark-submit --master spark://HOST:7077 jobs/predict.py --help
"""
import sys

from sparkdl.jobs import run

if __name__ == "__main__":
    sys.exit(run("predict"))
