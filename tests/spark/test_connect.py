"""Spark Connect: a real server (the ``connect_server`` fixture), clients in child processes (``run_connect_client``)."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import sparkdl
from connect_server import run_connect_client

pytestmark = pytest.mark.spark

SMOKE_CLIENT = """
import json, sys
from pyspark.sql import SparkSession
from pyspark.sql.utils import is_remote
from sparkdl.session import job_description

spark = SparkSession.builder.getOrCreate()  # SPARK_REMOTE: the test's server
n = int(sys.argv[1])

def row_sums(batches):
    import sys
    import numpy as np
    import pyarrow as pa
    import torch
    import sparkdl
    from sparkdl.data.arrow import features_matrix

    for batch in batches:
        x = torch.from_numpy(features_matrix(batch.column("features")))
        k = batch.num_rows
        yield pa.RecordBatch.from_pydict({
            "id": batch.column("id"), "total": pa.array(x.sum(dim=1).double().numpy()),
            "torch": [torch.__version__] * k, "sparkdl": [sparkdl.__file__] * k, "python": [sys.executable] * k,
            "numpy": [np.__version__] * k,
        })

df = spark.createDataFrame([(i, [float(i), 2.0 * i, 0.5]) for i in range(n)], "id long, features array<float>")
schema = "id long, total double, torch string, sparkdl string, python string, numpy string"
with job_description(spark, "test", "a Connect session has no SparkContext"):  # must be a no-op, not an error
    rows = df.repartition(2).mapInArrow(row_sums, schema).orderBy("id").collect()
print(json.dumps({"session": type(spark).__module__, "remote": is_remote(), "rows": [r.asDict() for r in rows]}))
"""


def test_connect_client_runs_sparkdl_code_on_the_server(connect_server):
    done = run_connect_client(connect_server, SMOKE_CLIENT, ["40"])
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["session"] == "pyspark.sql.connect.session" and out["remote"] is True
    rows = out["rows"]
    assert [r["id"] for r in rows] == list(range(40))
    assert [r["total"] for r in rows] == [3.0 * i + 0.5 for i in range(40)]
    # the server's Python workers run this interpreter and import this checkout of sparkdl
    assert {r["python"] for r in rows} == {sys.executable}
    assert {r["sparkdl"] for r in rows} == {sparkdl.__file__}
    assert {r["torch"] for r in rows} == {torch.__version__}
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ and "SPARK_REMOTE" not in os.environ  # pytest stays classic


def test_connect_server_answers_more_clients_from_files(connect_server, tmp_path):
    """A client script given as a file, with arguments; the session-scoped server serves every client."""
    script = tmp_path / "client.py"
    script.write_text("import sys\nfrom pyspark.sql import SparkSession\n"
                      "print(SparkSession.builder.getOrCreate().range(int(sys.argv[1])).count())\n")  # fmt: skip
    assert run_connect_client(connect_server, Path(script), ["7"]).stdout.split()[-1] == "7"


def test_a_connect_client_cannot_join_the_classic_pytest_process(spark):
    """Why clients run in child processes: pyspark refuses a remote session next to a classic one."""
    from pyspark.errors import PySparkRuntimeError
    from pyspark.sql import SparkSession

    with pytest.raises(PySparkRuntimeError, match="SESSION_ALREADY_EXIST"):
        SparkSession.builder.remote("sc://127.0.0.1:1").getOrCreate()
    assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ
    assert spark.range(3).count() == 3
