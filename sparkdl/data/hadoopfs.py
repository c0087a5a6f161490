"""Small files beside tables, on any Hadoop URI (file://, hdfs://, s3a://, plain paths), through Spark's JVM.

Only driver-side metadata goes through here (JSON sidecars, existence checks); tables go through Spark's
DataFrame writers and their output committers.
"""
from __future__ import annotations

from sparkdl.errors import DataError


def _fs_path(spark, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def qualify(spark, uri: str) -> str:
    """The fully qualified form Spark itself reports (e.g. ``/data/x`` -> ``file:/data/x``)."""
    fs, path = _fs_path(spark, uri)
    return str(fs.makeQualified(path).toString())


def exists(spark, uri: str) -> bool:
    fs, path = _fs_path(spark, uri)
    return bool(fs.exists(path))


def is_dir(spark, uri: str) -> bool:
    fs, path = _fs_path(spark, uri)
    return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())


def delete(spark, uri: str) -> None:
    fs, path = _fs_path(spark, uri)
    if fs.exists(path):
        fs.delete(path, True)


def write_bytes(spark, uri: str, data: bytes) -> None:
    fs, path = _fs_path(spark, uri)
    out = fs.create(path, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(spark, uri: str) -> bytes:
    fs, path = _fs_path(spark, uri)
    if not fs.exists(path):
        raise DataError(f"{uri} does not exist")
    stream = fs.open(path)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def sidecar_uri(table_uri: str, suffix: str) -> str:
    """``.../images.parquet`` + ``meta.json`` -> ``.../images.meta.json`` (the file lives beside the table)."""
    base = table_uri.rstrip("/")
    if base.endswith(".parquet"):
        base = base[: -len(".parquet")]
    return f"{base}.{suffix}"
