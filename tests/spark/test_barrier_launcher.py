"""SparkBarrierLauncher on local[2]: gRPC between the two tasks of a real barrier stage, live events, failures."""
import sys

import numpy as np
import pytest
from pyspark import cloudpickle

from sparkdl.errors import ConfigError, WorkerFailedError
from sparkdl.launch.spark import SparkBarrierLauncher
from sparkdl.collective.allreduce import tree_allreduce

pytestmark = pytest.mark.spark
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # executors cannot import this test module


def _sum_and_report(ctx, rows):
    total = tree_allreduce(ctx.mailbox, 0, [np.array([float(sum(rows))])], fanout=8)[0][0]
    for i in range(3):
        ctx.report({"type": "tick", "rank": ctx.rank, "i": i})
    return ctx.rank, float(total), ctx.transport.name


def _fail(ctx, rows):
    if ctx.rank == 1:
        raise ValueError("rank one is broken")
    ctx.barrier()


def test_ranks_talk_over_grpc_and_events_arrive(spark):
    rdd = spark.sparkContext.parallelize(range(10), 2)
    events = []
    out = SparkBarrierLauncher().run(_sum_and_report, rdd, on_event=events.append)
    assert out == [(0, 45.0, "grpc"), (1, 45.0, "grpc")]
    assert [e for e in events if e["type"] == "tick"] == [{"type": "tick", "rank": 0, "i": i} for i in range(3)]  # rank 0's, in order
    # and the launcher's own report of where the ranks run (from the address exchange, concurrent with fn)
    [placement] = [e for e in events if e["type"] == "placement"]
    assert len(placement["addresses"]) == 2 and all(a.startswith("127.0.0.1:") for a in placement["addresses"])


def test_a_failing_task_fails_the_launch_with_its_error(spark):
    rdd = spark.sparkContext.parallelize(range(4), 2)
    with pytest.raises(WorkerFailedError, match="ValueError: rank one is broken"):
        SparkBarrierLauncher().run(_fail, rdd)


def test_more_workers_than_task_slots_is_refused(spark):
    with pytest.raises(ConfigError, match="3 workers need 3 task slots"):
        SparkBarrierLauncher().run(_fail, spark.sparkContext.parallelize(range(3), 3))


def test_aeron_is_refused_before_any_work():
    from sparkdl.config import TransportConfig

    with pytest.raises(ConfigError, match="aeron transport is not available"):
        SparkBarrierLauncher(TransportConfig(name="aeron"))
