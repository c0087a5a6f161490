"""Live stage progress without Spark: the numbers (rows, rows/s, ETA), the work-stage choice on the stages Spark 4
runs for featurize, the polling thread (lines, the closing line, joined on exit and on error), quiet, the Spark UI
line."""
from __future__ import annotations

import argparse
import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest

from sparkdl.cli.options import Progress, session
from sparkdl.progress import (Reporter, Snapshot, StageStatus, WorkStage, format_duration, format_line, spark_ui_url,
                              stage_progress)  # fmt: skip


def stage(stage_id: int, tasks: int, done: int = 0, submitted: bool = True) -> StageStatus:
    return StageStatus(stage_id, tasks, done, submitted)


class FakeStatus:
    """``SparkStatus``'s surface: job ids per group, stages per job (changed by the test between polls)."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}
        self.jobs: dict[int, list[int]] = {}
        self.stage_by_id: dict[int, StageStatus] = {}

    def job_ids(self, group):
        return list(self.groups.get(group, []))

    def stages(self, job_id):
        return [self.stage_by_id[i] for i in self.jobs.get(job_id, []) if i in self.stage_by_id]

    def add_job(self, group: str, job_id: int, *stages: StageStatus) -> None:
        self.groups.setdefault(group, []).append(job_id)
        self.jobs[job_id] = [s.stage_id for s in stages]
        self.set(*stages)

    def set(self, *stages: StageStatus) -> None:
        self.stage_by_id.update((s.stage_id, s) for s in stages)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rows_rate_and_eta():
    snap = Snapshot("featurize", tasks_done=2, tasks=8, elapsed_s=40.0, total_rows=1797)
    assert snap.fraction == 0.25 and snap.rows_done == 449
    assert snap.rows_per_s == pytest.approx(449 / 40)
    assert snap.eta_s == pytest.approx(120.0)  # 40 s for a quarter: 3 more quarters
    assert format_line(snap) == "featurize: 449/1797 rows (25%), 11.2 rows/s, ETA 2m00s [tasks 2/8]"
    assert format_line(snap.finished(), done=True) == "featurize: 1797/1797 rows (100%), 44.9 rows/s, done in 40s"
    nothing_yet = Snapshot("featurize", 0, 8, 3.0, 1797)
    assert nothing_yet.eta_s is None
    assert format_line(nothing_yet) == "featurize: 0/1797 rows (0%), 0.0 rows/s, ETA ? [tasks 0/8]"
    tasks_only = Snapshot("ingest", 3, 4, 9.0)
    assert tasks_only.rows_done is None and format_line(tasks_only) == "ingest: 3/4 tasks (75%), ETA 3s"
    assert format_line(Snapshot("ingest", 0, 0, 1.0)) == "ingest: 0/? tasks (0%), ETA ?"
    assert [format_duration(s) for s in (None, 0.4, 59.6, 164, 3725)] == ["?", "0s", "1m00s", "2m44s", "1h02m"]


def test_the_work_stage_is_the_pass_that_runs_or_ran_longest():
    """What Spark 4 (AQE) runs for featurize's count, seen through the status tracker: job 8 reads the images
    (stage 10), job 9 runs the backbone (12; 11 skipped), job 10 reads the cache (14; 13 skipped), job 11 sums
    (17, one task; 15 and 16 skipped). Skipped stages are never submitted."""
    g, clock, status = "sparkdl-featurize", Clock(), FakeStatus()
    status.add_job(g, 1, stage(0, 2, done=2))  # an earlier run
    work = WorkStage(status, g, {1}, tasks=2, clock=clock)
    assert work.poll() == (0, 2)
    status.add_job(g, 8, stage(10, 2, done=1))
    assert work.poll() == (1, 2)  # reading the images: the only pass so far
    status.set(stage(10, 2, done=2))
    status.add_job(g, 9, stage(11, 2, submitted=False), stage(12, 2))
    for clock.now in (5.0, 10.0, 15.0):
        assert work.poll() == (0, 2)  # the backbone runs: not the finished read, not the skipped stage
    status.set(stage(12, 2, done=1))
    clock.now = 20.0
    assert work.poll() == (1, 2)
    status.set(stage(12, 2, done=2))
    status.add_job(g, 10, stage(13, 2, submitted=False), stage(14, 2))
    clock.now = 21.0
    assert work.poll() == (2, 2)  # reading the cache, caught by one poll: the backbone ran longer
    status.set(stage(14, 2, done=2))
    status.add_job(g, 11, stage(16, 2, submitted=False), stage(17, 1), stage(15, 2, submitted=False))
    clock.now = 25.0
    assert work.poll() == (2, 2)
    # no partition count: the submitted stage with the most tasks
    assert WorkStage(status, g, {1}, tasks=None, clock=clock).poll() == (2, 2)
    # no stage of that size (predict's union adds partitions): a bigger one, never a smaller one
    assert WorkStage(status, g, {1, 8, 9, 10}, tasks=1, clock=clock).poll() == (0, 1)
    assert WorkStage(status, g, {1, 11}, tasks=1, clock=clock).poll()[1] == 2
    assert WorkStage(status, "sparkdl-other", set(), tasks=3, clock=clock).poll() == (0, 3)  # nothing yet


SPARK = SimpleNamespace()  # stage_progress reads the session only through ``status``


def _polled_stage(report, status: FakeStatus | None = None, **kw) -> None:
    """Run a block that starts a job (5) whose work stage advances 0 -> 4 of 4 tasks; job 4 ran before it."""
    status = status or FakeStatus()
    status.add_job("sparkdl-featurize", 4, stage(2, 4, done=4))
    with stage_progress(SPARK, "featurize", report, total_rows=100, tasks=4, interval_s=0.02, status=status, **kw):
        status.add_job("sparkdl-featurize", 5, stage(3, 4))
        for done in range(1, 5):
            time.sleep(0.15)
            status.set(stage(3, 4, done=done))
        time.sleep(0.15)


def _progress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sparkdl-progress-")]


def test_lines_through_a_plain_callable_then_a_closing_line():
    lines: list[str] = []
    _polled_stage(lines.append)
    assert not _progress_threads()  # joined when the block ended
    assert len(lines) >= 5
    assert lines[0].startswith("featurize: 0/100 rows (0%)")
    assert "featurize: 50/100 rows (50%)" in "\n".join(lines)
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done)
    assert lines[-1].startswith("featurize: 100/100 rows (100%)") and "done in" in lines[-1]


def test_an_error_ends_the_thread_without_a_closing_line():
    lines: list[str] = []
    with pytest.raises(RuntimeError, match="boom"):
        with stage_progress(SPARK, "ingest", lines.append, interval_s=0.02, status=FakeStatus()):
            time.sleep(0.1)
            raise RuntimeError("boom")
    assert not _progress_threads()
    assert lines and all(line == "ingest: 0/? tasks (0%), ETA ?" for line in lines)  # no job started


def test_quiet_none_and_short_stages_print_nothing(capsys):
    _polled_stage(None)
    _polled_stage(Reporter(quiet=True, interval_s=0.02))
    lines: list[str] = []
    with stage_progress(SPARK, "featurize", lines.append, total_rows=10, status=FakeStatus()):
        pass  # over before the first report (5 s)
    assert lines == [] and capsys.readouterr().err == "" and not _progress_threads()


def test_the_command_lines_reporter_writes_lines_when_stderr_is_no_terminal(capsys):
    say = Progress(interval_s=0.02)  # the command line's: [  time] prefix, sys.stderr (no terminal under capsys)
    _polled_stage(say)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("[") and "s] featurize: 0/100 rows (0%)" in err[0]
    assert "s] featurize: 100/100 rows (100%)" in err[-1] and "done in" in err[-1]


def test_spark_ui_url_once_through_say():
    said: list[str] = []
    args = argparse.Namespace(spark_master=None, driver_memory="1g")
    with_ui = SimpleNamespace(sparkContext=SimpleNamespace(uiWebUrl="http://127.0.0.1:4040"))
    with mock.patch("sparkdl.session.build_session", return_value=with_ui):
        session(args, said.append)
    no_ui = SimpleNamespace(sparkContext=SimpleNamespace(uiWebUrl=None))
    with mock.patch("sparkdl.session.build_session", return_value=no_ui):
        session(args, said.append)  # the UI off: no line
    assert said == ["Spark UI: http://127.0.0.1:4040"]
    assert spark_ui_url(SimpleNamespace()) is None  # Spark Connect: no SparkContext
