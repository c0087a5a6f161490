"""Live progress of long stages (ingest, featurize, predict, the training layout) while their Spark job runs.

``with stage_progress(spark, "featurize", report, total_rows=n, tasks=p):`` around a stage's long Spark action starts
a daemon driver thread that polls Spark's status tracker every ``interval_s`` (no accumulator, no extra Spark job):
the jobs of the stage's job group (``sparkdl-<stage>``, set by ``session.job_description``) started since the block
began, and of their stages the *work stage* (:class:`WorkStage`). Its completed / total tasks is the fraction done;
rows done = fraction x ``total_rows``, exact when the partitions hold equal rows (featurize and predict repartition
round-robin, ingest slices the listing evenly), an estimate otherwise; without ``total_rows``, tasks are shown.
Spark reports a task when it ends, so rows move a task at a time: with one task per core (one wave) the count stays
at 0 until the tasks end. Rows/s is rows done / time since the block began; the ETA extrapolates it. The thread is
joined when the block exits, on an error too.

Where it goes depends on ``report``: None shows nothing (no thread); any ``Callable[[str], None]`` (the stages'
``progress``) gets one line every ``interval_s`` (default 5 s) and a closing line when the stage ran that long;
a :class:`Reporter` (the command line's) chooses its interval, draws a ``rich`` bar instead of lines when its stream
is a terminal, and shows nothing when ``quiet``.

A low floor: imports ``rich`` only (Spark's status tracker comes with the session), nothing from sparkdl.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

JOB_GROUP_PREFIX = "sparkdl-"  # session.job_description puts a stage's jobs in the group sparkdl-<stage>
DEFAULT_INTERVAL_S = 5.0
BAR_REFRESH_S = 1.0  # a terminal bar is refreshed at least this often (lines: every interval_s)

Report = Callable[[str], None]


# -- the numbers -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Where a stage is: its work stage's tasks done / total (0 total: none seen yet), rows when known."""

    stage: str
    tasks_done: int
    tasks: int
    elapsed_s: float
    total_rows: int | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.tasks_done / self.tasks) if self.tasks else 0.0

    @property
    def rows_done(self) -> int | None:
        return None if self.total_rows is None else int(self.total_rows * self.fraction)

    @property
    def rows_per_s(self) -> float | None:
        if self.rows_done is None:
            return None
        return self.rows_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before anything is done."""
        f = self.fraction
        if f <= 0.0 or self.elapsed_s <= 0:
            return None
        return self.elapsed_s * (1.0 - f) / f

    def finished(self) -> "Snapshot":
        """The same stage, complete (its Spark action returned)."""
        tasks = self.tasks or 1
        return Snapshot(self.stage, tasks, tasks, self.elapsed_s, self.total_rows)


def format_duration(seconds: float | None) -> str:
    """``45s``, ``2m44s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def done_text(snap: Snapshot) -> str:
    """``896/1797 rows`` or, without a row count, ``3/8 tasks``."""
    if snap.total_rows is not None:
        return f"{snap.rows_done}/{snap.total_rows} rows"
    return f"{snap.tasks_done}/{snap.tasks or '?'} tasks"


def rate_text(snap: Snapshot) -> str:
    return "" if snap.rows_per_s is None else f"{snap.rows_per_s:.1f} rows/s"


def tasks_text(snap: Snapshot) -> str:
    """``[tasks 1/2]`` beside rows (what they are estimated from); empty when tasks are shown or none is known."""
    return f"[tasks {snap.tasks_done}/{snap.tasks}]" if snap.total_rows is not None and snap.tasks else ""


def format_line(snap: Snapshot, done: bool = False) -> str:
    """``featurize: 898/1797 rows (50%), 10.9 rows/s, ETA 1m22s [tasks 1/2]`` (``done in 2m44s`` and no tasks when
    ``done``)."""
    parts = [f"{done_text(snap)} ({snap.fraction:.0%})"]
    if snap.rows_per_s is not None:
        parts.append(rate_text(snap))
    parts.append(f"done in {format_duration(snap.elapsed_s)}" if done else f"ETA {format_duration(snap.eta_s)}")
    line = f"{snap.stage}: " + ", ".join(parts)
    tasks = "" if done else tasks_text(snap)
    return f"{line} {tasks}" if tasks else line


# -- Spark's status tracker ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageStatus:
    stage_id: int
    tasks: int
    completed: int
    submitted: bool  # false for a stage still pending, and for good when skipped (its output was already there)

    @property
    def running(self) -> bool:
        return self.submitted and self.completed < self.tasks


class SparkStatus:
    """The status tracker calls progress needs, through Spark's public Java ``JavaSparkStatusTracker`` (pyspark's
    ``StatusTracker`` drops a stage's submission time, which tells a stage that runs from one that is skipped).
    A stage is final once its job has ended: it is read once then."""

    def __init__(self, jtracker) -> None:
        self._j = jtracker
        self._final: dict[int, StageStatus] = {}
        self._ended: dict[int, list[int]] = {}  # job id -> its stage ids, for jobs that have ended

    def job_ids(self, group: str) -> list[int]:
        return [int(i) for i in self._j.getJobIdsForGroup(group)]

    def stages(self, job_id: int) -> list[StageStatus]:
        if job_id in self._ended:
            return [self._final[i] for i in self._ended[job_id] if i in self._final]
        job = self._j.getJobInfo(job_id)
        if job is None:
            return []
        ended = str(job.status().toString()) in ("SUCCEEDED", "FAILED")
        ids = [int(i) for i in job.stageIds()]
        found = [s for s in map(self._stage, ids) if s is not None]
        if ended:
            self._final.update((s.stage_id, s) for s in found)
            self._ended[job_id] = ids
        return found

    def _stage(self, stage_id: int) -> StageStatus | None:
        if stage_id in self._final:
            return self._final[stage_id]
        info = self._j.getStageInfo(stage_id)
        if info is None:
            return None
        submitted = int(info.submissionTime()) > 0
        return StageStatus(stage_id, int(info.numTasks()), int(info.numCompletedTasks()), submitted)


def spark_status(spark) -> SparkStatus | None:
    """The session's status tracker; None for a Spark Connect session (no SparkContext here)."""
    try:
        return SparkStatus(spark.sparkContext._jsc.statusTracker())
    except Exception:  # noqa: BLE001 - Spark Connect raises on sparkContext
        return None


def spark_ui_url(spark) -> str | None:
    """The Spark UI's URL; None when the UI is off or the session has no SparkContext (Spark Connect)."""
    try:
        return spark.sparkContext.uiWebUrl or None
    except Exception:  # noqa: BLE001
        return None


class WorkStage:
    """Which of the block's stages is the work, asked again at every poll. Of the stages the jobs of ``group`` (not
    in ``ignore``) have submitted (skipped ones never are), those with ``tasks`` tasks (none such yet: those with
    more; ``tasks`` None: all); of these one that runs and has run across polls, else the one polls saw running the
    longest, else the newest (``tasks`` None: the most tasks first). Featurize reads its input, runs the backbone and
    reads the cached result in three stages of ``tasks`` tasks each: the long one is the backbone's, and a short pass
    caught by one poll does not take its place. ``poll()`` -> (completed, total) tasks; (0, ``tasks`` or 0) before
    any. Spark's store may show a task start late (up to an executor heartbeat), a stage's submission at once."""

    def __init__(self, status: SparkStatus, group: str, ignore: set[int], tasks: int | None,
                 clock: Callable[[], float]) -> None:  # fmt: skip
        self.status, self.group, self.ignore, self.tasks, self.clock = status, group, set(ignore), tasks, clock
        self.first_seen: dict[int, float] = {}  # stage id -> when a poll first saw it submitted
        self.last_running: dict[int, float] = {}  # stage id -> when a poll last saw it unfinished

    def poll(self) -> tuple[int, int]:
        now = self.clock()
        submitted = [s for j in self.status.job_ids(self.group) if j not in self.ignore
                     for s in self.status.stages(j) if s.submitted and s.tasks > 0]  # fmt: skip
        for s in submitted:
            self.first_seen.setdefault(s.stage_id, now)
            if s.running:
                self.last_running[s.stage_id] = now
        if self.tasks is None:
            candidates = submitted
        else:
            sized = [s for s in submitted if s.tasks == self.tasks]
            candidates = sized or [s for s in submitted if s.tasks > self.tasks]
        if not candidates:
            return 0, self.tasks or 0

        def key(s: StageStatus) -> tuple:
            seen = self.last_running.get(s.stage_id, self.first_seen[s.stage_id]) - self.first_seen[s.stage_id]
            return (s.tasks if self.tasks is None else 0, s.running and seen > 0, seen, s.stage_id)

        chosen = max(candidates, key=key)
        return min(chosen.completed, chosen.tasks), chosen.tasks


# -- where it goes ---------------------------------------------------------------------------------------------------


class Reporter:
    """A progress callable (``Callable[[str], None]``: one message -> one line on ``stream``, default ``sys.stderr``
    at the time of writing) that also shows live stage progress: a ``rich`` bar when the stream is a terminal
    (``terminal`` None: ask the stream), else a line every ``interval_s``. ``quiet``: nothing at all. Messages written
    while a bar is shown appear above it."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False, interval_s: float = DEFAULT_INTERVAL_S,
                 terminal: bool | None = None) -> None:  # fmt: skip
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self._stream = stream
        self.quiet = quiet
        self.interval_s = interval_s
        self._terminal = terminal
        self._lock = threading.Lock()
        self._bar = None  # the rich Progress while a stage shows a bar

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def terminal(self) -> bool:
        if self._terminal is not None:
            return self._terminal
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):  # a closed or exotic stream
            return False

    def format(self, message: str) -> str:
        """The line a message becomes (the command line adds the time since start)."""
        return message

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        line = self.format(message)
        bar = self._bar
        if bar is not None:
            bar.console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
            return
        with self._lock:
            stream = self.stream
            stream.write(line + "\n")
            stream.flush()

    def view(self, stage: str) -> "_View":
        return _BarView(self, stage) if self.terminal else _LineView(self, self.interval_s)


class _LineView:
    """One line per update through ``report``; a closing line when at least one was written."""

    def __init__(self, report: Report, interval_s: float) -> None:
        self.report = report
        self.interval_s = interval_s
        self.written = 0

    def update(self, snap: Snapshot) -> None:
        self.report(format_line(snap))
        self.written += 1

    def close(self, snap: Snapshot, ok: bool) -> None:
        if ok and self.written:
            self.report(format_line(snap, done=True))


class _BarView:
    """A ``rich`` bar on the reporter's stream (a terminal): stage, bar, rows (or tasks) done / total, rows/s, ETA.
    Stays on screen when the stage ends."""

    def __init__(self, reporter: Reporter, stage: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.reporter = reporter
        self.interval_s = min(reporter.interval_s, BAR_REFRESH_S)
        console = Console(file=reporter.stream, force_terminal=True, highlight=False)
        self.bar = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(),  # "[tasks 1/2]" is text, not markup
            *(TextColumn(f"{{task.fields[{name}]}}", markup=False) for name in ("done", "rate", "eta", "tasks")),
            console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False,
        )  # fmt: skip
        self.task = self.bar.add_task(stage, total=None, done="", rate="", eta="", tasks="")
        self.bar.start()
        reporter._bar = self.bar

    def update(self, snap: Snapshot, eta: str | None = None) -> None:
        total = snap.total_rows if snap.total_rows is not None else (snap.tasks or None)
        done = snap.rows_done if snap.total_rows is not None else snap.tasks_done
        self.bar.update(self.task, total=total, completed=done, done=done_text(snap), rate=rate_text(snap),
                        eta=eta if eta is not None else f"ETA {format_duration(snap.eta_s)}",
                        tasks="" if eta is not None else tasks_text(snap))  # fmt: skip
        self.bar.refresh()

    def close(self, snap: Snapshot, ok: bool) -> None:
        try:
            if ok:
                self.update(snap, eta=f"done in {format_duration(snap.elapsed_s)}")
        finally:
            self.reporter._bar = None
            self.bar.stop()


_View = _LineView | _BarView


# -- the block -------------------------------------------------------------------------------------------------------


@contextmanager
def stage_progress(spark, stage: str, report: Report | None = None, *, total_rows: int | None = None,
                   tasks: int | None = None, interval_s: float | None = None, status: SparkStatus | None = None,
                   clock: Callable[[], float] = time.monotonic) -> Iterator[None]:  # fmt: skip
    """Show the progress of the Spark jobs ``stage`` (its job group ``sparkdl-<stage>``) starts inside the block, on
    ``report`` (see the module's doc): ``total_rows`` the rows the work stage processes, ``tasks`` its partitions.
    ``interval_s`` overrides the reporter's; ``status`` the session's status tracker. Nothing happens for ``report``
    None, a quiet :class:`Reporter` or a Spark Connect session."""
    if report is None or (isinstance(report, Reporter) and report.quiet):
        yield
        return
    status = status or spark_status(spark)
    if status is None:
        yield
        return
    group = JOB_GROUP_PREFIX + stage
    work = WorkStage(status, group, set(status.job_ids(group)), tasks, clock)  # ignoring the stage's earlier runs
    start = clock()
    view = report.view(stage) if isinstance(report, Reporter) else _LineView(report, DEFAULT_INTERVAL_S)
    view.interval_s = interval_s or view.interval_s

    def snapshot() -> Snapshot:
        done, total = work.poll()
        return Snapshot(stage, done, total, clock() - start, total_rows)

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(view.interval_s):
            try:
                snap = snapshot()
                if not stop.is_set():
                    view.update(snap)
            except Exception:  # noqa: BLE001 - a session going away, a closed stream: not worth failing the stage
                return

    thread = threading.Thread(target=poll, name=f"sparkdl-progress-{stage}", daemon=True)
    thread.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        thread.join()
        last = Snapshot(stage, 0, tasks or 0, clock() - start, total_rows)
        if ok:
            try:
                last = snapshot()
            except Exception:  # noqa: BLE001
                pass
            last = last.finished()  # the action returned: every row is done
        try:
            view.close(last, ok)
        except Exception:  # noqa: BLE001 - never instead of the stage's own result or error
            pass
