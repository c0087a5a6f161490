"""Spark ML persistence for the stages that carry a model bundle: Spark's layout, our bundle as the data.

    <path>/metadata/   Spark's DefaultParamsWriter JSON: class, uid, every Param set and every default
    <path>/data/       the model bundle (``sparkdl.bundle``), in ``sparkdl train``'s format

``Pipeline``, ``PipelineModel`` and ``CrossValidatorModel`` save and load these
stages through ``write()`` / ``read()`` like Spark's own, on a local path or any Hadoop URI. A direct
``model.write().overwrite().save(path)`` replaces only an earlier Spark ML save (a directory with ``metadata/``),
and the earlier one stays whole until the new one is complete (staged beside it, then swapped in).
Needs a classic SparkSession: over Spark Connect the client cannot reach the cluster's file system.
"""
from __future__ import annotations

import posixpath

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from sparkdl.bundle import BUNDLE_FORMAT
from sparkdl.errors import ConfigError, DataError
from sparkdl.session import is_connect

DATA_DIR = "data"
STAGING_SUFFIX = ".partial"


def _join(path: str, name: str) -> str:
    return posixpath.join(str(path).rstrip("/"), name)


def refuse_connect(spark, doing: str) -> None:
    if is_connect(spark):
        raise ConfigError(
            f"{doing} a sparkdl model needs a classic SparkSession (Spark Connect gives the client no access to the "
            "cluster's file system): save/load on a classic session, or use fromBundle(path) with a bundle on this "
            "machine's disk"
        )


class BundleModelWriter(MLWriter):
    """Writes ``instance``'s Params (Spark's metadata) and its bundle (``instance._write_data(uri, spark)``)."""

    def __init__(self, instance) -> None:
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        from sparkdl.data import hadoopfs, outputs

        spark = self.sparkSession
        refuse_connect(spark, "saving")
        path = str(path).rstrip("/")
        if not hadoopfs.exists(spark, path):
            self.saveImpl(path)
            return
        if not self.shouldOverwrite:
            raise DataError(f"{path} already exists: use model.write().overwrite().save(path) or choose another path")
        entries = [] if hadoopfs.is_file(spark, path) else hadoopfs.list_dir(spark, path)
        if ("metadata", True) not in entries:
            raise DataError(f"{path} is not a saved Spark ML stage (no metadata/ in it): overwrite replaces only an "
                            "earlier save; remove it yourself or choose another path")  # fmt: skip
        staging = path + STAGING_SUFFIX
        if hadoopfs.exists(spark, staging):
            hadoopfs.delete(spark, staging)  # a crashed earlier save's leftovers, never a complete model
        self.saveImpl(_join(staging, "model"))
        outputs.swap_in(spark, [(_join(staging, "model"), path)], staging)

    def saveImpl(self, path: str) -> None:
        extra = {"sparkdl": {"format": BUNDLE_FORMAT, "data": DATA_DIR}}
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession, extraMetadata=extra)
        self.instance._write_data(_join(path, DATA_DIR), self.sparkSession)


class BundleModelReader(MLReader):
    """Reads what :class:`BundleModelWriter` wrote: the model from its bundle (``cls._read_data(uri, spark)``),
    then its uid and Params."""

    def __init__(self, cls) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        spark = self.sparkSession
        refuse_connect(spark, "loading")
        path = str(path).rstrip("/")
        metadata = DefaultParamsReader.loadMetadata(path, spark)
        name = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata.get("class") != name:
            raise DataError(f"{path} holds a saved {metadata.get('class')}, not a {name}: load it with that class")
        instance = self.cls._read_data(_join(path, DATA_DIR), spark)
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance


class BundlePersistence(MLWritable, MLReadable):
    """Mixin of the stages that carry a bundle: they define ``_write_data(uri, spark)`` and the classmethod
    ``_read_data(uri, spark)``."""

    def write(self) -> BundleModelWriter:
        return BundleModelWriter(self)

    def save(self, path: str) -> None:
        """``write().save(path)``: refuses an existing path (``write().overwrite().save(path)`` replaces it)."""
        self.write().save(path)

    @classmethod
    def read(cls) -> BundleModelReader:
        return BundleModelReader(cls)


def is_spark_ml_save(spark, path: str) -> bool:
    """``path`` holds Spark ML metadata (else it may be a bare model bundle from ``sparkdl train``)."""
    from sparkdl.data import hadoopfs

    return hadoopfs.exists(spark, _join(path, "metadata"))
