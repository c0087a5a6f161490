"""Where did the work run? Read from Spark's own records, not from the job's outputs.

* ``AppRun.read(event_log)``: an application's Spark event log (``spark.eventLog.enabled``, uncompressed, not
  rolled): its id and name, the driver's host, every executor (id -> host) and every task's executor and host, with
  the job group and description each task's job carried (sparkdl names its jobs ``sparkdl-<stage>``).
* ``registered_apps(master_json)``: the application ids a standalone master's ``/json/`` lists (active + completed).

``submit_conf(dir)`` is the spark-submit ``--conf`` list that makes an application write such a log into ``dir``.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


def submit_conf(event_dir: Path) -> list[str]:
    confs = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": Path(event_dir).as_uri(),
             "spark.eventLog.compress": "false", "spark.eventLog.rolling.enabled": "false"}  # fmt: skip
    return [arg for key, value in confs.items() for arg in ("--conf", f"{key}={value}")]


@dataclass(frozen=True)
class Task:
    executor: str
    host: str
    group: str | None
    description: str | None


@dataclass(frozen=True)
class Job:
    job_id: int
    group: str | None
    submitted_ms: int
    completed_ms: int | None
    succeeded: bool | None


@dataclass
class AppRun:
    app_id: str
    name: str
    driver_host: str | None
    executors: dict[str, str] = field(default_factory=dict)  # executor id -> host
    tasks: list[Task] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "AppRun":
        run = cls("", "", None)
        stage_job: dict[int, tuple[str | None, str | None]] = {}
        started: dict[int, tuple[str | None, int]] = {}
        for line in Path(path).read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the last line of a log its application could not finish
                break
            kind = event.get("Event")
            if kind == "SparkListenerApplicationStart":
                run.app_id, run.name = event.get("App ID", ""), event.get("App Name", "")
            elif kind == "SparkListenerEnvironmentUpdate":
                run.driver_host = event.get("Spark Properties", {}).get("spark.driver.host")
            elif kind == "SparkListenerExecutorAdded":
                run.executors[event["Executor ID"]] = event["Executor Info"]["Host"]
            elif kind == "SparkListenerJobStart":
                props = event.get("Properties", {})
                for stage in event.get("Stage IDs", []):
                    stage_job[stage] = (props.get("spark.jobGroup.id"), props.get("spark.job.description"))
                started[event["Job ID"]] = (props.get("spark.jobGroup.id"), event.get("Submission Time", 0))
            elif kind == "SparkListenerJobEnd":
                group, submitted = started.pop(event["Job ID"], (None, 0))
                ok = event.get("Job Result", {}).get("Result") == "JobSucceeded"
                run.jobs.append(Job(event["Job ID"], group, submitted, event.get("Completion Time"), ok))
            elif kind == "SparkListenerTaskEnd":
                info = event["Task Info"]
                group, description = stage_job.get(event["Stage ID"], (None, None))
                run.tasks.append(Task(info["Executor ID"], info["Host"], group, description))
        return run

    def failed_jobs(self, group_prefix: str = "") -> list[Job]:
        return [j for j in self.jobs if j.succeeded is False and (j.group or "").startswith(group_prefix)]

    def task_hosts(self, group_prefix: str = "") -> Counter:
        """Tasks per host, of jobs whose group starts with ``group_prefix`` (e.g. ``sparkdl-train``)."""
        return Counter(t.host for t in self.tasks if (t.group or "").startswith(group_prefix))


def app_logs(event_dir: Path) -> list[Path]:
    """The applications' event logs in ``event_dir``, oldest first, by application id: the finished log where there is
    one, else the ``.inprogress`` one (an application whose driver exited without finishing it, e.g. while stopping
    with a host partitioned away, keeps that name)."""
    logs: dict[str, Path] = {}
    for p in Path(event_dir).iterdir():
        app = p.name.removesuffix(".inprogress")
        if app not in logs or not p.name.endswith(".inprogress"):
            logs[app] = p
    return sorted(logs.values(), key=lambda p: p.stat().st_mtime)


def registered_apps(master_json: dict) -> set[str]:
    return {a["id"] for key in ("activeapps", "completedapps") for a in master_json.get(key, [])}
