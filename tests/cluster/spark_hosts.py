"""A Spark standalone cluster on separate hosts (``netns.Hosts``): the master in one namespace, one Worker per
namespace, the driver (spark-submit) in another; each binds its own address only (``--host``, ``SPARK_LOCAL_IP``),
so nothing listens outside the namespaces. Every application submitted here writes its event log (``where.AppRun``),
so a test can assert where its tasks ran.

``multihost_cluster(tmp, worker_cores)`` yields a ``HostCluster`` once every Worker is registered, and stops
everything (processes by namespace, namespaces, bridge) afterwards, also after a failure. If namespaces cannot be
made the test is skipped with the reason, or fails under ``SPARKDL_REQUIRE_NETNS=1`` (set by ``.ci/run``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import netns
from cluster_services import REPO, spark_bin
from where import AppRun, app_logs, registered_apps, submit_conf

MASTER_PORT, MASTER_UI = 7077, 8080

# How fast a driver gives up on an executor whose heartbeats stopped (a partitioned host): spark.network.timeout
# (Spark's default 120 s; lowered for the tests, documented in README "Tested on a multi-host cluster"). The
# master's spark.worker.timeout stays at its default (60 s): 10 s dropped live Workers on this loaded 2-core machine.
NETWORK_TIMEOUT_S = 60


def require_netns() -> None:
    reason = netns.unavailable()
    if reason is None:
        return
    if os.environ.get("SPARKDL_REQUIRE_NETNS") == "1":
        pytest.fail(f"no network namespaces here: {reason} (SPARKDL_REQUIRE_NETNS=1)")
    pytest.skip(f"no network namespaces here: {reason}")


@dataclass
class HostCluster:
    hosts: netns.Hosts
    master: netns.Host
    workers: list[netns.Host]
    driver: netns.Host
    logs: Path
    worker_cores: list[int]
    worker_memory: str
    events: Path = field(init=False)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = self.logs / "events"
        self.events.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"spark://{self.master.ip}:{MASTER_PORT}"

    def env(self, host: netns.Host) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
        env.pop("HADOOP_CONF_DIR", None)
        return {**env, "SPARK_LOCAL_IP": host.ip, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "PYTHONUNBUFFERED": "1"}  # fmt: skip

    # -- daemons -------------------------------------------------------------------------------------------------
    def start_master(self) -> None:
        env = self.env(self.master)
        self.procs["master"] = self.hosts.popen(
            self.master, [spark_bin("spark-class"), "org.apache.spark.deploy.master.Master", "--host", self.master.ip,
                          "--port", str(MASTER_PORT), "--webui-port", str(MASTER_UI)],
            env=env, stdout=open(self.logs / "master.log", "a"), stderr=subprocess.STDOUT)  # fmt: skip

    def start_worker(self, i: int) -> None:
        host = self.workers[i]
        work = self.logs / f"work-{host.role}"
        self.procs[host.role] = self.hosts.popen(
            host, [spark_bin("spark-class"), "org.apache.spark.deploy.worker.Worker", "--host", host.ip,
                   "--cores", str(self.worker_cores[i]), "--memory", self.worker_memory, "--webui-port", "8081",
                   "--work-dir", str(work), self.url],
            env=self.env(host), stdout=open(self.logs / f"{host.role}.log", "a"), stderr=subprocess.STDOUT)  # fmt: skip

    def master_state(self) -> dict:
        return self.hosts.get_json(self.driver, f"http://{self.master.ip}:{MASTER_UI}/json/")

    def wait_for_workers(self, n: int, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.master_state()
                alive = [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]
                if len(alive) == n:
                    return state
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} workers did not register with the master in {timeout:g} s; logs in {self.logs}")
            time.sleep(1)

    # -- applications --------------------------------------------------------------------------------------------
    def submit_command(self, script: str, *args: str, conf: dict[str, str] | None = None) -> list[str]:
        confs = {"spark.driver.host": self.driver.ip, "spark.executor.memory": "1g", "spark.ui.enabled": "false",
                 "spark.network.timeout": f"{NETWORK_TIMEOUT_S}s", "spark.network.timeoutInterval": "5s",
                 "spark.executor.heartbeatInterval": "3s",
                 **(conf or {})}  # fmt: skip
        flat = [a for k, v in confs.items() for a in ("--conf", f"{k}={v}")]
        return self.hosts.command(self.driver, [spark_bin("spark-submit"), "--master", self.url, *flat,
                                                *submit_conf(self.events), script, *args])  # fmt: skip

    def submit(self, script: str, *args: str, conf: dict[str, str] | None = None, timeout: float = 600):
        """spark-submit ``script`` from the driver's host; returns (CompletedProcess, AppRun of its application)."""
        before = set(app_logs(self.events))
        done = subprocess.run(self.submit_command(script, *args, conf=conf), env=self.env(self.driver),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        return done, self.app_of(before)

    def app_of(self, before: set[Path]) -> AppRun | None:
        """The application started since ``before`` (``app_logs`` then): call it after its driver exited."""
        seen = {p.name.removesuffix(".inprogress") for p in before}
        new = [p for p in app_logs(self.events) if p.name.removesuffix(".inprogress") not in seen]
        return AppRun.read(new[-1]) if new else None

    def job(self, stage: str) -> str:
        return str(REPO / "sparkdl" / "jobs" / f"{stage}.py")

    def assert_ran_on_workers(self, app: AppRun | None, group: str = "sparkdl-", min_hosts: int = 1) -> None:
        """The master registered ``app``, and its ``group`` tasks ran on executors on worker hosts (never on the
        driver's), on at least ``min_hosts`` of them."""
        assert app is not None, f"no event log: the application never started (logs in {self.logs})"
        assert app.app_id in registered_apps(self.master_state()), f"{app.app_id} is not registered with the master"
        assert app.driver_host == self.driver.ip, app.driver_host
        workers = {w.ip for w in self.workers}
        assert app.executors and set(app.executors.values()) <= workers, app.executors
        hosts = app.task_hosts(group)
        assert hosts and set(hosts) <= workers and self.driver.ip not in hosts, hosts
        assert len(hosts) >= min_hosts, f"{group} tasks ran on {dict(hosts)}, wanted {min_hosts}+ hosts"

    # -- faults --------------------------------------------------------------------------------------------------
    def kill(self, host: netns.Host) -> list[int]:
        """Lose ``host``: every process in its namespace killed (Worker, executor JVM, Python workers)."""
        return self.hosts.kill(host)

    def partition(self, host: netns.Host) -> None:
        """Take ``host``'s link down: its processes live on, unreachable."""
        self.hosts.partition(host)

    def heal(self, host: netns.Host) -> None:
        self.hosts.heal(host)

    def stop(self) -> None:
        self.hosts.close()  # kills every process in every namespace, then deletes them


@contextmanager
def multihost_cluster(tmp: Path, worker_cores: list[int], worker_memory: str = "2g"):
    require_netns()
    hosts = netns.Hosts()
    try:
        master = hosts.add("master")
        driver = hosts.add("driver")
        workers = [hosts.add(f"worker{i + 1}") for i in range(len(worker_cores))]
        cluster = HostCluster(hosts, master, workers, driver, Path(tmp), worker_cores, worker_memory)
        cluster.start_master()
        for i in range(len(workers)):
            cluster.start_worker(i)
        cluster.wait_for_workers(len(workers))
        yield cluster
    finally:
        hosts.close()
