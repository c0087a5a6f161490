"""Real services for the cluster tests, each started on 127.0.0.1 and stopped at the end of the run:

* the multi-host standalone cluster is made per test module (``spark_hosts.multihost_cluster``);
* ``hdfs``: a NameNode + DataNode from ``scripts/local_hdfs.py`` (Hadoop 2.7.3 jars from the pyspark 2.4.8 sdist,
  Jersey 1 from Debian). If those parts cannot be had here the HDFS tests are skipped with the reason, unless
  ``SPARKDL_REQUIRE_HDFS=1`` (set by ``.ci/run``), which turns that into a failure.
"""
from __future__ import annotations

import os
import sys

import pytest

from cluster_services import local_hdfs_module, make_fit_features


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory):
    """A running single-node HDFS with permissions on, its NameNode running as Hadoop user ``hdfs`` (so the tests'
    own user is an ordinary user, as on a cluster): ``/user/<me>`` belongs to the tests, ``/locked`` (mode 700)
    does not."""
    local_hdfs = local_hdfs_module()
    try:
        local_hdfs.fetch(say=lambda m: print(f"local_hdfs: {m}", file=sys.stderr))
    except local_hdfs.PartsUnavailable as exc:
        reason = f"no HDFS on this machine: {exc}"
        if os.environ.get("SPARKDL_REQUIRE_HDFS") == "1":
            pytest.fail(reason + " (SPARKDL_REQUIRE_HDFS=1)")
        print(reason, file=sys.stderr)
        pytest.skip(reason)
    from sparkdl.data.webhdfs import WebHdfs, hadoop_user

    server = local_hdfs.LocalHdfs(tmp_path_factory.mktemp("hdfs"), superuser="hdfs", permissions=True).start()
    try:
        me = hadoop_user()
        admin = WebHdfs(server.webhdfs, "hdfs")
        admin._client.makedirs(f"/user/{me}")
        admin._client.set_owner(f"/user/{me}", owner=me)
        admin._client.makedirs("/locked/data")
        admin._client.set_permission("/locked", "700")
        yield {"fs": server.fs, "webhdfs": server.webhdfs, "conf_dir": str(server.workdir / "conf"), "user": me,
               "home": f"{server.fs}/user/{me}", "admin": admin}  # fmt: skip
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fit_features(spark, tmp_path_factory) -> str:
    """The features table of the fault-tolerance tests (``cluster_services.make_fit_features``)."""
    return make_fit_features(spark, str(tmp_path_factory.mktemp("fit-features") / "features.parquet"))
