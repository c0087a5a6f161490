"""Where a URI points: local vs Hadoop paths, and how `sparkdl fs` finds the NameNode's WebHDFS endpoint."""
from pathlib import Path

import pytest

from sparkdl.data import hadoopfs
from sparkdl.data.webhdfs import WebHdfsConfig, hadoop_user, split_uri
from sparkdl.errors import ConfigError


@pytest.mark.parametrize(
    "uri, local",
    [("/data/x", True), ("rel/x", True), ("file:///data/x", True), ("file:/data/x", True),
     ("hdfs://nn:9000/x", False), ("s3a://bucket/x", False), ("webhdfs://nn:9870/x", False)],
)  # fmt: skip
def test_is_local(uri, local):
    assert hadoopfs.is_local(uri) is local


def test_local_path():
    assert hadoopfs.local_path("file:///data/a%20b/x.pth") == Path("/data/a b/x.pth")
    assert hadoopfs.local_path("file:/data/x") == Path("/data/x")
    assert hadoopfs.local_path("rel/x") == Path("rel/x")


def _conf(tmp_path, core=None, hdfs=None):
    def xml(props):
        body = "".join(f"<property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
        return f"<?xml version='1.0'?><configuration>{body}</configuration>"

    if core:
        (tmp_path / "core-site.xml").write_text(xml(core))
    if hdfs:
        (tmp_path / "hdfs-site.xml").write_text(xml(hdfs))
    return str(tmp_path)


def test_explicit_endpoint_wins(tmp_path):
    conf = _conf(tmp_path, hdfs={"dfs.namenode.http-address": "other:50070"})
    cfg = WebHdfsConfig(url="http://nn:1234/", hadoop_conf_dir=conf)
    assert split_uri("hdfs://nn:9000/a/b/../c", cfg) == ("http://nn:1234", "/a/c")


def test_endpoint_from_hadoop_conf(tmp_path):
    conf = _conf(tmp_path, hdfs={"dfs.namenode.http-address": "0.0.0.0:50070"})
    # a wildcard bind address means "the NameNode's own host"
    assert split_uri("hdfs://nn.example:9000/x", WebHdfsConfig(hadoop_conf_dir=conf)) == ("http://nn.example:50070", "/x")
    (tmp_path / "b").mkdir()
    conf2 = _conf(tmp_path / "b", hdfs={"dfs.namenode.http-address": "web.example:9871"})
    assert split_uri("hdfs://nn:9000/x", WebHdfsConfig(hadoop_conf_dir=conf2)) == ("http://web.example:9871", "/x")


def test_endpoint_default_and_default_fs(tmp_path, monkeypatch):
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    assert split_uri("hdfs://nn:9000/x") == ("http://nn:9870", "/x")
    assert split_uri("webhdfs://nn:50070/x") == ("http://nn:50070", "/x")
    assert split_uri("swebhdfs://nn:9871/x") == ("https://nn:9871", "/x")
    conf = _conf(tmp_path, core={"fs.defaultFS": "hdfs://cluster-nn:8020"})
    assert split_uri("hdfs:///user/a", WebHdfsConfig(hadoop_conf_dir=conf)) == ("http://cluster-nn:9870", "/user/a")
    with pytest.raises(ConfigError, match="names no NameNode"):
        split_uri("hdfs:///user/a")


def test_refuses_what_webhdfs_cannot_serve(tmp_path):
    with pytest.raises(ConfigError, match="not an hdfs:// URI"):
        split_uri("s3a://bucket/x")
    with pytest.raises(ConfigError, match="http"):
        WebHdfsConfig(url="nn:9870")
    (tmp_path / "hdfs-site.xml").write_text("<configuration><property>")
    with pytest.raises(ConfigError, match="not valid XML"):
        split_uri("hdfs://nn:9000/x", WebHdfsConfig(hadoop_conf_dir=str(tmp_path)))


def test_hadoop_user(monkeypatch):
    assert hadoop_user(WebHdfsConfig(user="alice")) == "alice"
    monkeypatch.setenv("HADOOP_USER_NAME", "bob")
    assert hadoop_user() == "bob"
    monkeypatch.delenv("HADOOP_USER_NAME")
    assert hadoop_user()  # the OS user
