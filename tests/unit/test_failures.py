"""How a failed launch or round becomes one error: the rank Spark names, a rank's DataError as itself, the
attributes a re-launch records (and that survive pickling, as process launchers need)."""
import pickle

from sparkdl.errors import DataError, WorkerFailedError
from sparkdl.launch.spark import _stage_error, spark_failure

DIED = """org.apache.spark.SparkException: Job aborted due to stage failure: Could not recover from a failed barrier
ResultStage. Most recent failure reason: Stage failed because barrier task ResultTask(17, 1) finished unsuccessfully.
org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:621)"""

RAISED = """org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 times
  File "/x/sparkdl/data/features.py", line 10, in check
sparkdl.errors.DataError: features.parquet has 3 rows with NaN features
	at org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:1097)"""


def test_a_dead_python_worker_is_named_by_its_rank():
    e = _stage_error(Exception(DIED))
    assert isinstance(e, WorkerFailedError) and e.rank == 1
    assert str(e).startswith("the barrier stage failed: worker rank 1 died (killed, or out of memory?)")
    assert e.cause == "worker rank 1 died (killed, or out of memory?)"


def test_a_lost_executor_is_named_with_its_reason():
    text = DIED.replace("org.apache.spark.SparkException: Python worker exited unexpectedly (crashed)",
                        "ExecutorLostFailure (executor 1 exited caused by one of the running tasks) Reason: Command exited with code 137")
    e = _stage_error(Exception(text))
    assert e.rank == 1 and e.cause == "worker rank 1's executor was lost (Command exited with code 137)"


def test_a_rank_s_data_error_stays_a_data_error_in_either_execution():
    assert type(_stage_error(Exception(RAISED))) is DataError
    e = spark_failure(Exception(RAISED), "round 2 of epoch 1 failed", epoch=0, step=1)
    assert type(e) is DataError and str(e) == "features.parquet has 3 rows with NaN features"
    other = spark_failure(Exception("java.io.IOException: Connection reset by peer"), "round 2 of epoch 1 failed", 0, 1)
    assert isinstance(other, WorkerFailedError) and (other.epoch, other.step) == (0, 1)
    assert str(other) == "round 2 of epoch 1 failed: java.io.IOException: Connection reset by peer"


def test_the_attributes_survive_pickling():
    e = pickle.loads(pickle.dumps(WorkerFailedError("worker rank 2 failed", rank=2, epoch=3, step=4, cause="boom")))
    assert (str(e), e.rank, e.epoch, e.step, e.cause) == ("worker rank 2 failed", 2, 3, 4, "boom")
