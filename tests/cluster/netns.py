"""Separate hosts on one machine: Linux network namespaces, each with its own address on a private subnet.

``Hosts`` makes one namespace per host (``<tag>-<role>``), a veth pair each into one bridge, and an address per host
on a /24 that exists only inside them: the bridge has no address, so nothing in a namespace can reach the machine's
own network or anything beyond it, and nothing outside can reach them. Loopback is up in each namespace (Spark's JVM
and its Python workers talk over it). Processes run in a namespace with ``ip netns exec``; ``partition`` takes a
host's link down (its processes live on, unreachable: a network partition, not a clean kill); ``kill`` kills every
process in a host's namespace (the host is lost). ``close`` kills what is left in each namespace and deletes every
namespace and the bridge it made, by name; it runs after a failed test too (a context manager), and a run that was
killed before it could clean up is cleaned by the next run (names carry the creator's PID: only dead creators' leftovers
are removed).

The hosts share this machine's file system (like hosts that mount one NFS / HDFS): a ``file:`` path means the same
file on every host. Needs root (``ip netns add``); ``unavailable()`` says why not, in one line.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

PREFIX = "sdl"  # every namespace / link this module makes starts with it (then the creator's PID)


@dataclass(frozen=True)
class Host:
    role: str
    ns: str  # the namespace's name
    ip: str
    veth: str  # the bridge-side end of its link (``partition`` takes it down)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """None when namespaces can be made here; else the reason, one line."""
    name = f"{PREFIX}{os.getpid()}-probe"
    try:
        done = _ip("netns", "add", name, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run `ip netns` ({e}): install iproute2 and run as root"
    if done.returncode != 0:
        return f"cannot make a network namespace ({done.stderr.strip()}): run as root (or with CAP_SYS_ADMIN)"
    _ip("netns", "del", name, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers() -> None:
    """Delete namespaces and bridges of earlier runs of this module whose creating process is gone."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = name[len(PREFIX):].split("-")[0]
        if name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner)):
            _kill_all(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        owner = name[len(PREFIX):-2]
        if name.startswith(PREFIX) and name.endswith("br") and owner.isdigit() and not _alive(int(owner)):
            _ip("link", "del", name, check=False)


def _pids(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def _kill_all(ns: str) -> None:
    for _ in range(3):
        pids = _pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)


@dataclass
class Hosts:
    """Namespaced hosts on ``10.<a>.<b>.0/24`` (``a.b`` from the PID: two runs at once do not collide)."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.subnet = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.bridge = f"{self.tag}br"
        clean_leftovers()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")

    def add(self, role: str) -> Host:
        index = len(self.hosts) + 2
        ns, veth, peer = f"{self.tag}-{role}", f"{self.tag}v{index}", f"{self.tag}p{index}"
        host = Host(role, ns, f"{self.subnet}.{index}", veth)
        _ip("netns", "add", ns)
        self.hosts[role] = host
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{host.ip}/24", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return host

    def command(self, host: Host, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host.ns, *cmd]

    def popen(self, host: Host, cmd: list[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(host, cmd), **kwargs)

    def run(self, host: Host, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, cmd), **kwargs)

    def get_json(self, host: Host, url: str, timeout: float = 5.0):
        """GET ``url`` from inside ``host`` (the test's own process is outside every namespace) and parse it."""
        code = (f"import json,sys,urllib.request;"
                f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())")  # fmt: skip
        done = self.run(host, [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout + 10)
        if done.returncode != 0:
            raise OSError(f"GET {url} from {host.role}: {done.stderr.strip().splitlines()[-1:]}")
        return json.loads(done.stdout)

    def partition(self, host: Host) -> None:
        """Cut ``host`` off the network (its processes keep running)."""
        _ip("link", "set", host.veth, "down")

    def heal(self, host: Host) -> None:
        _ip("link", "set", host.veth, "up")

    def kill(self, host: Host) -> list[int]:
        """Lose ``host``: SIGKILL every process in its namespace; returns their PIDs."""
        pids = _pids(host.ns)
        _kill_all(host.ns)
        return pids

    def close(self) -> None:
        for host in self.hosts.values():
            _kill_all(host.ns)
            _ip("netns", "del", host.ns, check=False)
        self.hosts.clear()
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
