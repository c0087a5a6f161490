"""The column types Spark ML users have, taken in and given back by Spark's conventions.

In: features as ``Vector`` or ``array<float|double>`` (``sparkdl.data.features.float_features``); labels as integer
indices (``StringIndexer``'s doubles with their names in the column's ML attributes, or plain ints) or strings
(indexed here, names kept). Out: ``prediction`` double carrying the class names as nominal ML attributes (so
``IndexToString`` needs no labels), ``probability`` / ``rawPrediction`` as ``DenseVector``.

DataFrame functions only (no SparkContext): what runs here runs on Spark Connect too. A column of a type a stage
cannot take is refused when ``fit`` / ``transform`` is called, naming the type, never row by row.
"""
from __future__ import annotations

from dataclasses import dataclass

from sparkdl.errors import DataError

INDEX_TYPES = ("tinyint", "smallint", "int", "bigint", "float", "double")


def column_type(df, name: str, role: str) -> str:
    if name not in df.columns:
        raise DataError(f"{role} column {name!r} not found (columns: {', '.join(df.columns)})")
    return df.schema[name].dataType.simpleString()


@dataclass(frozen=True)
class Labels:
    """How a label column becomes class indices, and the class names."""

    names: list[str] | None  # None: indices only, names "0".."K-1" once K is known
    source: str  # "string" (indexed here), "ml_attr" (a StringIndexer's names), "index"

    def describe(self) -> str:
        return {"string": "string labels, indexed by sparkdl in sorted order",
                "ml_attr": "label indices with names from the column's ML attributes (StringIndexer)",
                "index": "label indices; names are the indices"}[self.source]  # fmt: skip


def nominal_names(df, name: str) -> list[str] | None:
    """The class names a ``StringIndexer`` put in the column's metadata (``ml_attr`` of type nominal), if any."""
    attr = (df.schema[name].metadata or {}).get("ml_attr") or {}
    vals = attr.get("vals") if attr.get("type") == "nominal" else None
    return [str(v) for v in vals] if vals else None


def label_type(df, name: str, shown: str | None = None) -> str:
    """The label column's type, refused (naming it, as ``shown`` when given) unless a string or a numeric index."""
    kind = column_type(df, name, "label")
    if kind != "string" and kind not in INDEX_TYPES:
        raise DataError(f"label column {shown or name!r} has type {kind}; sparkdl takes label indices (int or double, e.g. "
                        "StringIndexer's output) or string labels")  # fmt: skip
    return kind


def index_labels(df, name: str, shown: str | None = None):
    """(Column of int label indices, :class:`Labels`). String labels are indexed in sorted order (distinct values
    collected once: pass a pinned DataFrame; nulls stay null); numeric ones must be whole numbers (checked by the
    caller's validation). ``shown``: the user's name of the column, for messages."""
    from pyspark.sql import functions as F

    kind = label_type(df, name, shown)
    if kind == "string":
        names = sorted(r[0] for r in df.select(name).distinct().collect() if r[0] is not None)
        if not names:
            raise DataError(f"label column {shown or name!r} has no non-null values")
        mapping = F.create_map(*[x for i, n in enumerate(names) for x in (F.lit(n), F.lit(i))])
        return mapping[F.col(name)].cast("int"), Labels(names, "string")
    col = F.col(name)
    if kind in ("float", "double"):  # 1.5 must not become class 1
        col = F.when(col == F.floor(col), col.cast("int")).otherwise(F.lit(-1))
    names = nominal_names(df, name)
    return col.cast("int"), Labels(names, "ml_attr" if names else "index")


def nominal_metadata(column: str, labels: list[str]) -> dict:
    """The metadata Spark ML reads class names from (``IndexToString`` with no ``labels``)."""
    return {"ml_attr": {"type": "nominal", "name": column, "vals": list(labels)}}


def rebuild_vectors(df):
    """Spark Connect 4.3 fails ("UNSUPPORTED_DATATYPE UDT") on an Arrow UDF over a plan that carries a Vector column
    read from Parquet; the same Vectors rebuilt by ``array_to_vector`` pass. Rebuilds every Vector column (values
    kept; a sparse vector comes back dense). Only for Connect DataFrames: classic ones need nothing."""
    from pyspark.ml.functions import array_to_vector, vector_to_array
    from pyspark.sql import functions as F

    for field in df.schema.fields:
        if field.dataType.simpleString() == "vector":
            df = df.withColumn(field.name, array_to_vector(vector_to_array(F.col(f"`{field.name}`"))))
    return df
