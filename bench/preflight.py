"""The executor preflight's cost, read from Spark event logs: for every application in the given event-log folders
(e.g. the ones the cluster tests write: ``<pytest tmp>/multihost0/events``, ``<pytest tmp>/cluster-logs0/events``),
the duration of its ``sparkdl-preflight`` job and of the next job. Prints JSON.

    python bench/preflight.py DIR [DIR ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def durations(log: Path) -> dict:
    jobs: dict[int, list] = {}
    for line in log.read_text().splitlines():
        e = json.loads(line)
        if e["Event"] == "SparkListenerJobStart":
            jobs[e["Job ID"]] = [e.get("Properties", {}).get("spark.jobGroup.id"), e["Submission Time"], None]
        elif e["Event"] == "SparkListenerJobEnd" and e["Job ID"] in jobs:
            jobs[e["Job ID"]][2] = e["Completion Time"]
    done = [(g, (end - start) / 1000) for g, start, end in jobs.values() if end is not None]
    pre = [s for g, s in done if g == "sparkdl-preflight"]
    rest = [s for g, s in done if g != "sparkdl-preflight"]
    return {"app": log.name, "preflight_s": pre[0] if pre else None, "next_job_s": rest[0] if rest else None}


def main(argv: list[str]) -> None:
    out = {}
    for folder in argv:
        apps = [durations(p) for p in sorted(Path(folder).glob("app-*")) if not p.name.endswith(".inprogress")]
        pre = [a["preflight_s"] for a in apps if a["preflight_s"] is not None]
        out[folder] = {"apps": apps, "preflight_min_s": min(pre, default=None), "preflight_max_s": max(pre, default=None)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
