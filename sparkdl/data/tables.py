"""Writing a table together with its rejects and its JSON sidecar, the same way for every stage.

Layout for an output ``<dir>/images.parquet``:
    <dir>/images.parquet          the good rows (Spark Parquet directory, written through Spark's committer)
    <dir>/images.rejects.parquet  one row per rejected input: path, stage, reason, detail (always written)
    <dir>/images.meta.json        label mapping, counts, rejects by reason, stage settings
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from sparkdl.data import hadoopfs
from sparkdl.errors import DataError

REASON_COL = "reject_reason"
DETAIL_COL = "reject_detail"
RUN_MARKER = "_sparkdl_run.json"  # in a table's (and its rejects') directory: the run that wrote it


@dataclass(frozen=True)
class RejectCounts:
    rows_in: int
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rejected(self) -> int:
        return sum(self.by_reason.values())

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.rejected

    @property
    def fraction(self) -> float:
        return self.rejected / self.rows_in if self.rows_in else 0.0


@dataclass(frozen=True)
class StageResult:
    """What every table-writing stage reports."""

    output_uri: str
    rejects_uri: str
    meta_uri: str
    rows_in: int
    rows_out: int
    rejects: dict[str, int]
    split_counts: dict[str, int]
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0


def rejects_uri(table_uri: str) -> str:
    return hadoopfs.sidecar_uri(table_uri, "rejects.parquet")


def meta_uri(table_uri: str) -> str:
    return hadoopfs.sidecar_uri(table_uri, "meta.json")


def check_input(spark, input_uri: str, what: str) -> None:
    """Before any work starts: ``input_uri`` exists and may be read."""
    hadoopfs.check_readable(spark, input_uri, what)


def count_rejects(df, group_cols: tuple[str, ...] = ()) -> tuple[RejectCounts, list[tuple[str | None, tuple, int]]]:
    """One aggregation pass: counts per reject reason (None = kept), plus (reason, group key, n) per ``group_cols``."""
    rows = df.groupBy(REASON_COL, *group_cols).count().collect()
    by_reason: dict[str, int] = {}
    groups: list[tuple[str | None, tuple, int]] = []
    total = 0
    for row in rows:
        n = int(row["count"])
        total += n
        reason = row[REASON_COL]
        groups.append((reason, tuple(row[c] for c in group_cols), n))
        if reason is not None:
            by_reason[reason] = by_reason.get(reason, 0) + n
    return RejectCounts(rows_in=total, by_reason=dict(sorted(by_reason.items()))), groups


def kept_counts(groups: list[tuple[str | None, tuple, int]], index: int) -> dict:
    """Kept rows per value of the ``index``-th group column."""
    out: dict = {}
    for reason, key, n in groups:
        if reason is None:
            out[key[index]] = out.get(key[index], 0) + n
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))


def write_rejects(df, table_uri: str, stage: str) -> str:
    """Write every rejected row (never its payload) beside the table; returns the rejects URI."""
    from pyspark.sql import functions as F

    uri = rejects_uri(table_uri)
    (
        df.filter(F.col(REASON_COL).isNotNull())
        .select(
            F.col("path"),
            F.lit(stage).alias("stage"),
            F.col(REASON_COL).alias("reason"),
            F.col(DETAIL_COL).alias("detail"),
        )
        .coalesce(1)
        .write.mode("overwrite")
        .parquet(uri)
    )
    return uri


def enforce_reject_fraction(counts: RejectCounts, max_fraction: float, stage: str, rejects_at: str) -> None:
    if counts.rows_in and counts.fraction > max_fraction:
        reasons = ", ".join(f"{k}={v}" for k, v in counts.by_reason.items())
        raise DataError(
            f"{stage}: {counts.rejected} of {counts.rows_in} rows rejected ({counts.fraction:.2%}) > "
            f"max-reject-fraction {max_fraction:.2%} ({reasons}); nothing was written. "
            f"The rejected rows are listed in {rejects_at}; fix them or raise --max-reject-fraction"
        )


def write_meta(spark, table_uri: str, meta: dict) -> str:
    uri = meta_uri(table_uri)
    hadoopfs.write_bytes(spark, uri, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return uri


def read_meta(spark, table_uri: str, required: bool = True) -> dict | None:
    """The table's ``<name>.meta.json``; ``required=False``: None when there is none (a table sparkdl did not write)."""
    uri = meta_uri(table_uri)
    if not hadoopfs.exists(spark, uri):
        run = _run_of(spark, table_uri)
        if run is not None:
            raise DataError(f"{uri} is missing though `sparkdl {run.get('stage', '...')}` wrote {table_uri} (an "
                            f"interrupted run?): re-run `sparkdl {run.get('stage', '...')}` to write the table again")  # fmt: skip
        if not required:
            return None
        raise DataError(f"{uri} is missing: {table_uri} was not written by sparkdl (its label mapping is kept there)")
    try:
        meta = json.loads(hadoopfs.read_bytes(spark, uri))
    except json.JSONDecodeError as exc:
        raise DataError(f"{uri} is not valid JSON ({exc}); re-run the stage that wrote {table_uri}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{uri} is not a JSON object; re-run the stage that wrote {table_uri}")
    check_same_run(spark, table_uri, meta)
    return meta


def _run_of(spark, directory: str) -> dict | None:
    """The run marker in a table's directory (None: no marker, e.g. a table sparkdl did not write)."""
    marker = f"{directory.rstrip('/')}/{RUN_MARKER}"
    if not hadoopfs.exists(spark, marker):
        return None
    try:
        run = json.loads(hadoopfs.read_bytes(spark, marker))
    except json.JSONDecodeError:
        run = None
    return run if isinstance(run, dict) else {"run_id": "<unreadable>"}


def check_same_run(spark, table_uri: str, meta: dict) -> None:
    """Table, meta and rejects must come from one run: a crash while a stage swapped in its new outputs would
    otherwise pair a new table with the old label mapping. Tables written before run ids (no marker, no
    ``run_id``) pass."""
    meta_run = meta.get("run_id")
    stage = meta.get("stage", "the stage that wrote it")
    parts = [("table", table_uri, _run_of(spark, table_uri))]
    if hadoopfs.exists(spark, rejects_uri(table_uri)):
        parts.append(("rejects", rejects_uri(table_uri), _run_of(spark, rejects_uri(table_uri))))
    for what, uri, run in parts:
        if meta_run is None and run is None:
            continue
        if run is None or run.get("run_id") != meta_run:
            stage = (run or {}).get("stage", stage)
            raise DataError(
                f"{uri} and {meta_uri(table_uri)} come from different runs (a `sparkdl {stage}` was interrupted while "
                f"replacing them): re-run `sparkdl {stage}` to write the {what} and its meta again"
            )


def check_columns(df, required: dict[str, tuple[str, ...]], what: str, uri: str) -> None:
    """Each required column exists with one of the accepted Spark type names (``DataType.simpleString()``)."""
    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    problems = []
    for name, accepted in required.items():
        if name not in actual:
            problems.append(f"column {name!r} is missing")
        elif actual[name] not in accepted:
            problems.append(f"column {name!r} is {actual[name]}, expected {' or '.join(accepted)}")
    if problems:
        raise DataError(f"{uri} is not a valid {what}: " + "; ".join(problems) + f" (columns found: {sorted(actual)})")
