"""The averaging master's data layout, executor side: rows dealt to worker shards, packed, and visited per epoch.

No torch here: the layout stage should not pay torch's import in every Python worker (the barrier stage does, while
it waits for its address exchange).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sparkdl.data.arrow import features_matrix

PACK_SCHEMA = "worker int, part string, chunk long, n int, dim int, x binary, y binary"


def identity(key: int) -> int:
    return key


def epoch_order(seed: int, epoch: int, worker: int, n: int) -> np.ndarray:
    """The order in which ``worker`` visits the ``n`` rows of its shard in ``epoch`` (a seeded permutation)."""
    return np.random.default_rng([seed % 2**32, epoch, worker]).permutation(n)


def round_rows(order: np.ndarray, round_index: int, rows_per_round: int) -> np.ndarray:
    return order[round_index * rows_per_round : (round_index + 1) * rows_per_round]


def round_seed(seed: int, epoch: int, round_index: int, worker: int) -> int:
    """Torch seed of one worker's round (dropout): the same in both executions."""
    return (seed * 1_000_003 + epoch * 10_007 + round_index * 101 + worker) % 2**63


def _deal(batch, part: str, start: int, workers: int):
    """The rows of ``part`` in one Arrow batch, their global positions from ``start``, and where they go:
    ``(rows, worker, local)`` with ``worker = pos mod W`` and ``local = pos div W``."""
    import pyarrow.compute as pc

    rows = batch.filter(pc.equal(batch.column("split"), part))
    pos = start + np.arange(rows.num_rows, dtype=np.int64)
    return rows, (pos % workers).astype(np.int32), pos // workers


def partition_starts(per_partition: list[dict], parts: Sequence[str]) -> list[dict[str, int]]:
    """Global position of each input partition's first row of every part (rows are dealt in scan order)."""
    starts, running = [], dict.fromkeys(parts, 0)
    for counts in per_partition:
        starts.append(dict(running))
        for part in parts:
            running[part] += counts[part]
    return starts


def pack_partition(batches, starts: list[dict[str, int]], workers: int, parts: tuple[str, ...]):
    """Executor side: deal this input partition's rows to the workers; one packed row per (batch, part, worker)
    holding its rows in shard order as raw float32 / int32 buffers (``chunk`` = the shard index of the first)."""
    import pyarrow as pa
    from pyspark import TaskContext

    next_pos = dict(starts[TaskContext.get().partitionId()])
    schema = pa.schema([("worker", pa.int32()), ("part", pa.string()), ("chunk", pa.int64()), ("n", pa.int32()),
                        ("dim", pa.int32()), ("x", pa.binary()), ("y", pa.binary())])  # fmt: skip
    for batch in batches:
        for part in parts:
            rows, worker, local = _deal(batch, part, next_pos[part], workers)
            next_pos[part] += rows.num_rows
            if not rows.num_rows:
                continue
            x = features_matrix(rows.column("features"))
            y = rows.column("label_index").to_numpy(zero_copy_only=False).astype(np.int32)
            out = {name: [] for name in schema.names}
            for w in np.unique(worker):
                sel = worker == w
                for name, value in (("worker", int(w)), ("part", part), ("chunk", int(local[sel][0])),
                                    ("n", int(sel.sum())), ("dim", x.shape[1]), ("x", x[sel].tobytes()),
                                    ("y", y[sel].tobytes())):  # fmt: skip
                    out[name].append(value)
            yield pa.RecordBatch.from_pydict(out, schema=schema)


def plan_partition(batches, starts: list[dict[str, int]], workers: int, part: str):
    """Executor side: ``path, worker, local`` of this partition's rows of ``part`` (the same dealing as packing)."""
    import pyarrow as pa
    from pyspark import TaskContext

    next_pos = starts[TaskContext.get().partitionId()][part]
    for batch in batches:
        rows, worker, local = _deal(batch, part, next_pos, workers)
        next_pos += rows.num_rows
        yield pa.RecordBatch.from_arrays([rows.column("path"), pa.array(worker), pa.array(local)],
                                         names=["path", "worker", "local"])  # fmt: skip


def load_shard(elements, dim: int = 0, parts: Sequence[str] = ()) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A worker's packs -> ``{part: (x, y)}`` in shard order; each of ``parts`` it has no rows of is empty
    (``(0, dim)`` features)."""
    packs: dict[str, list] = {}
    for _worker, (part, chunk, n, dim, xb, yb) in elements:
        packs.setdefault(part, []).append((chunk, n, dim, xb, yb))
    out = {}
    for part, chunks in packs.items():
        chunks.sort(key=lambda c: c[0])
        x = np.concatenate([np.frombuffer(xb, dtype=np.float32).reshape(n, dim) for _, n, dim, xb, _ in chunks])
        y = np.concatenate([np.frombuffer(yb, dtype=np.int32) for *_, yb in chunks])
        out[part] = (x, y)
    for part in parts:
        out.setdefault(part, (np.zeros((0, dim), np.float32), np.zeros(0, np.int32)))
    return out


def keyed_pack(row) -> tuple:
    """A packed row -> ``(worker, (part, chunk, n, dim, x bytes, y bytes))`` for ``partitionBy(workers)``."""
    return row["worker"], (row["part"], row["chunk"], row["n"], row["dim"], bytes(row["x"]), bytes(row["y"]))


def build_shards(features, per_partition: list[dict], parts: tuple[str, ...], workers: int):
    """The packed shards: an RDD whose partition ``w`` holds worker ``w``'s ``(worker, (part, chunk, n, dim, x, y))``
    elements of every split in ``parts``; persisted. One pass over the features, one shuffle. ``per_partition``:
    ``validate_features(features, ...)['per_partition']``."""
    import functools

    from pyspark import StorageLevel

    starts = partition_starts(per_partition, ("train", "valid"))
    fn = functools.partial(pack_partition, starts=starts, workers=workers, parts=parts)
    packed = features.select("split", "label_index", "features").mapInArrow(fn, PACK_SCHEMA)
    shards = packed.rdd.map(keyed_pack).partitionBy(workers, identity).persist(StorageLevel.MEMORY_AND_DISK)
    shards.count()
    return shards
