"""Every output a stage writes, on any Hadoop URI: checked before any work, and swapped in only when complete.

Three rules, the same for tables (+ their sidecars) and model bundles, local or remote:

* **Never onto an input.** Before any work, :func:`check_disjoint` refuses an output that equals, contains or lies
  inside any input (table, sidecars, image folder, weights), after qualifying both (relative path, ``file://``, the
  default file system and, on the driver's disk, symlinks all name one place the same way).
* **Only over an earlier output.** ``--overwrite`` replaces a table (a directory of Parquet part files) or a model
  bundle (a directory with ``config.json``); anything else there — a file, a home directory — is refused up front.
* **The previous result stays readable until the new one is complete.** :class:`TableOutput` writes the table, its
  rejects and its meta under ``<table>.partial/`` and swaps them in at the end; each carries the same run id (a
  ``_sparkdl_run.json`` marker in the table and rejects directories — Spark's readers skip ``_`` files — and
  ``run_id`` in the meta), so a reader refuses a set torn apart by a crash in the swap
  (:func:`sparkdl.data.tables.check_same_run`). Bundles are staged the same way (``<dir>.partial``, then swapped).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from sparkdl.data import hadoopfs, tables
from sparkdl.errors import DataError

STAGING_SUFFIX = ".partial"
REPLACED_DIR = "replaced"  # inside the staging directory: the previous result, while the swap runs


@dataclass(frozen=True)
class Place:
    """A path a stage reads or writes, and what it is (for the error message)."""

    what: str
    uri: str


def table_places(what: str, uri: str) -> list[Place]:
    """A table and its sidecars."""
    return [Place(what, uri), Place(f"{what}'s rejects", tables.rejects_uri(uri)), Place(f"{what}'s meta", tables.meta_uri(uri))]


def _relation(out: str, inp: str) -> str | None:
    if out == inp:
        return "is the same path as"
    if inp.startswith(out.rstrip("/") + "/"):
        return "contains"
    if out.startswith(inp.rstrip("/") + "/"):
        return "lies inside"
    return None


def check_disjoint(spark, stage: str, inputs: list[Place], outputs: list[Place]) -> None:
    """Refuse, before any work, an output that equals, contains or lies inside an input (one line naming both)."""
    reads = [(p, hadoopfs.real_uri(spark, p.uri)) for p in inputs if p.uri]
    for out in outputs:
        out_real = hadoopfs.real_uri(spark, out.uri)
        for inp, in_real in reads:
            relation = _relation(out_real, in_real)
            if relation:
                also = "" if (out.uri, inp.uri) == (out_real, in_real) else f" ({out_real} vs {in_real})"
                raise DataError(
                    f"{stage}: the output {out.what} {out.uri} {relation} the input {inp.what} {inp.uri}{also}; "
                    f"writing it would destroy the input: choose an output outside it"
                )


def _describe(entries: list[tuple[str, bool]]) -> str:
    shown = ", ".join(repr(n + ("/" if d else "")) for n, d in entries[:3])
    return f"{len(entries)} entries such as {shown}" if entries else "nothing"


def _is_table_dir(entries: list[tuple[str, bool]]) -> bool:
    """What Spark leaves in a Parquet output directory: part files, ``_``/``.`` files (``_SUCCESS``, markers, crc)."""
    for name, is_dir in entries:
        if name.startswith(("_", ".")):
            continue
        if is_dir or not (name.startswith("part-") or name.endswith(".parquet")):
            return False
    return True


def _is_bundle_dir(entries: list[tuple[str, bool]]) -> bool:
    return not entries or ("config.json", False) in entries


NOUNS = {"table": "a table (a directory of Parquet part files)", "bundle": "a model bundle (a directory with config.json)"}


def replaceable_problem(uri: str, kind: str, what: str, not_a_directory: str | None,
                        entries: list[tuple[str, bool]]) -> str | None:  # fmt: skip
    """Why ``--overwrite`` may not replace ``uri`` (None: it is an earlier output of this ``kind``, "table" or
    "bundle"). ``not_a_directory``: what ``uri`` is instead of a directory ("a file", "a symlink"), else None;
    ``entries``: (name, is_directory) of a directory. The one rule for Hadoop URIs and the driver's own disk."""
    if not_a_directory:
        return (f"{what} {uri} is {not_a_directory}, not {NOUNS[kind]}: --overwrite replaces only an earlier output; "
                "remove it yourself or choose another path")  # fmt: skip
    if not (_is_table_dir(entries) if kind == "table" else _is_bundle_dir(entries)):
        return (f"{what} {uri} is not {NOUNS[kind]} (it holds {_describe(entries)}): --overwrite replaces only an "
                "earlier output; remove it yourself or choose another path")  # fmt: skip
    return None


def check_replaceable(spark, uri: str, kind: str, what: str) -> None:
    """``uri`` exists and ``--overwrite`` was given: it must be an earlier output of this ``kind`` ("table" or
    "bundle"), never a file or a directory of something else."""
    is_file = hadoopfs.is_file(spark, uri)
    problem = replaceable_problem(uri, kind, what, "a file" if is_file else None, [] if is_file else hadoopfs.list_dir(spark, uri))
    if problem:
        raise DataError(problem)


def check_output(spark, stage: str, uri: str, overwrite: bool, kind: str, what: str, inputs: list[Place]) -> None:
    """Every check an output gets before any work: not onto an input, writable, replaceable."""
    staging = uri.rstrip("/") + STAGING_SUFFIX
    written = table_places(what, uri) if kind == "table" else [Place(what, uri), Place(what, uri.rstrip("/") + ".replaced")]
    check_disjoint(spark, stage, inputs, [*written, Place(f"{what}'s staging directory", staging)])
    hadoopfs.check_writable(spark, uri, what, overwrite)
    if overwrite and hadoopfs.exists(spark, uri):
        check_replaceable(spark, uri, kind, what)


def swap_in(spark, staged: list[tuple[str, str]], staging_dir: str) -> None:
    """Move each staged path onto its final path; a previous result is moved aside first, then deleted once every
    new path is in place. ``staged``: (staged uri, final uri) in swap order."""
    replaced = f"{staging_dir.rstrip('/')}/{REPLACED_DIR}"
    for i, (src, dst) in enumerate(staged):
        if hadoopfs.exists(spark, dst):
            hadoopfs.mkdirs(spark, replaced)
            hadoopfs.rename(spark, dst, f"{replaced}/{i}")
        hadoopfs.rename(spark, src, dst)
    hadoopfs.delete(spark, staging_dir)


@dataclass
class TableOutput:
    """A table, its rejects and its meta, written under ``<uri>.partial/`` and swapped in by :meth:`commit`.

    ``open()`` first; after an error ``abandon()`` removes what was staged (except a failed run's rejects, kept
    where :meth:`enforce_rejects` said they are); ``finish(meta)`` writes the meta and swaps."""

    spark: object
    uri: str
    stage: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    committed: bool = False
    _keep_staging: bool = False

    @property
    def staging(self) -> str:
        return self.uri.rstrip("/") + STAGING_SUFFIX

    @property
    def staged_table(self) -> str:
        return f"{self.staging}/{self.uri.rstrip('/').rsplit('/', 1)[-1]}"

    @property
    def rejects_uri(self) -> str:
        return tables.rejects_uri(self.uri)

    @property
    def meta_uri(self) -> str:
        return tables.meta_uri(self.uri)

    def open(self) -> "TableOutput":
        hadoopfs.delete(self.spark, self.staging)  # what a crashed run left
        return self

    def abandon(self) -> None:
        """After an error: remove what was staged (best effort, never hiding the error)."""
        if self.committed or self._keep_staging:
            return
        try:
            hadoopfs.delete(self.spark, self.staging)
        except Exception:  # noqa: BLE001
            pass

    def _marker(self) -> bytes:
        return (json.dumps({"run_id": self.run_id, "stage": self.stage}) + "\n").encode()

    def write_rejects(self, df) -> str:
        """Stage the rejects; returns where they will be once committed."""
        staged = tables.write_rejects(df, self.staged_table, stage=self.stage)
        hadoopfs.write_bytes(self.spark, f"{staged}/{tables.RUN_MARKER}", self._marker())
        return self.rejects_uri

    def enforce_rejects(self, counts: tables.RejectCounts, max_fraction: float) -> None:
        """Above ``max_fraction``: keep the rejects where the user can look, leave any previous result as it was,
        and fail. With no previous result they go to the usual ``<name>.rejects.parquet``; else they stay staged."""
        if not (counts.rows_in and counts.fraction > max_fraction):
            return
        staged = tables.rejects_uri(self.staged_table)
        previous = [u for u in (self.uri, self.rejects_uri, self.meta_uri) if hadoopfs.exists(self.spark, u)]
        if previous:
            self._keep_staging = True
            where = staged
        else:
            hadoopfs.rename(self.spark, staged, self.rejects_uri)
            where = self.rejects_uri
        tables.enforce_reject_fraction(counts, max_fraction, self.stage, where)

    def write_table(self, df) -> None:
        df.write.mode("errorifexists").parquet(self.staged_table)
        hadoopfs.write_bytes(self.spark, f"{self.staged_table}/{tables.RUN_MARKER}", self._marker())

    def write_meta(self, meta: dict) -> None:
        tables.write_meta(self.spark, self.staged_table, {**meta, "run_id": self.run_id})

    def finish(self, meta: dict) -> str:
        """Write the meta and swap the set in; returns the meta's URI."""
        try:
            self.write_meta(meta)
            self.commit()
        except BaseException:
            self.abandon()
            raise
        return self.meta_uri

    def commit(self) -> None:
        """Swap the staged set in: rejects, table, then meta (a reader checks the three carry one run id)."""
        staged_rejects, staged_meta = tables.rejects_uri(self.staged_table), tables.meta_uri(self.staged_table)
        pairs = [(staged_rejects, self.rejects_uri), (self.staged_table, self.uri), (staged_meta, self.meta_uri)]
        missing = [src for src, _ in pairs if not hadoopfs.exists(self.spark, src)]
        if missing:
            raise DataError(f"{self.stage}: internal error, nothing was replaced: {', '.join(missing)} not written")
        swap_in(self.spark, pairs, self.staging)
        self.committed = True
