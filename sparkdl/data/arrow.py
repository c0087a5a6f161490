"""Arrow list columns <-> 2-D numpy matrices, without Python loops (executor-side helpers, no Spark imports)."""
from __future__ import annotations

import numpy as np

from sparkdl.errors import DataError


def features_matrix(column) -> np.ndarray:
    """An Arrow ``list<float>`` (or ``list<double>``) column of equal-length rows -> (rows, dim) float32 matrix (no
    Python loop). A Spark ML Vector arrives as a struct: normalise it first (``features.as_float_arrays``)."""
    import pyarrow as pa

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_list(arr.type):
        raise DataError(f"features must be an array of numbers, got Arrow type {arr.type} (convert a Vector column "
                        "with pyspark.ml.functions.vector_to_array)")  # fmt: skip
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    if arr.null_count:
        raise DataError(f"features are null in {arr.null_count} of {n} rows of one batch")
    offsets = arr.offsets.to_numpy()
    lengths = np.diff(offsets)
    if lengths.min() != lengths.max():
        raise DataError(f"features of mixed lengths in one batch ({lengths.min()}..{lengths.max()})")
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(n, int(lengths[0]))


def list_column(matrix: np.ndarray, valid: np.ndarray | None = None):
    """A (rows, dim) matrix -> an Arrow ``list<float>`` column; rows where ``valid`` is False become nulls."""
    import pyarrow as pa

    n, dim = matrix.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim)
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    if valid is None:
        return pa.ListArray.from_arrays(offsets, values)
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~valid))
