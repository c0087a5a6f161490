#!/usr/bin/env python3
"""A real single-node HDFS (NameNode + DataNode on 127.0.0.1) built from registry packages only.

For tests and laptops: the same Hadoop NameNode/DataNode code a cluster runs, with WebHDFS on, every address bound to
127.0.0.1 and free ports picked at start. Nothing here is a stand-in: Spark talks to it over ``hdfs://`` RPC and the
``hdfs`` package over WebHDFS.

Where the pieces come from (no Apache mirror or Maven needed):
* Hadoop 2.7.3 server jars (``hadoop-hdfs``, ``hadoop-common`` and their dependencies) are inside the PyPI *source*
  distribution of ``pyspark==2.4.8`` (fetched from the package index, SHA-256 checked, only the needed jars kept);
* WebHDFS needs Jersey 1, which that sdist lacks: Debian's ``libjersey1-{core,server,servlet}-java`` and
  ``libjsr311-api-java`` (taken from /usr/share/java when installed, else ``apt-get download`` + ``dpkg-deb -x``).
* a JRE 17 (``java`` on PATH or JAVA_HOME).

    python scripts/local_hdfs.py fetch                      # download + unpack the parts into the cache (once)
    python scripts/local_hdfs.py start --dir /tmp/hdfs      # format, start, wait until writable; prints JSON
    python scripts/local_hdfs.py stop --dir /tmp/hdfs

``start`` prints ``{"fs": "hdfs://127.0.0.1:PORT", "webhdfs": "http://127.0.0.1:PORT", ...}``. The NameNode runs as the
Hadoop user ``--superuser`` (default ``hdfs``), so other users meet real permission checks, as on a cluster.
"""
from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PYSPARK_SDIST = "pyspark-2.4.8.tar.gz"
PYSPARK_SDIST_SHA256 = "3a19b71b8dc8dd91ebc943604a05e1ab01bce052456d42937035632d852d78dc"
DEFAULT_INDEX = "https://pypi.org/simple"
DEBIAN_PACKAGES = ("libjersey1-core-java", "libjersey1-server-java", "libjersey1-servlet-java", "libjsr311-api-java")
JERSEY1_JARS = ("jersey1-core.jar", "jersey1-server.jar", "jersey1-servlet.jar", "jsr311-api.jar")
# What hadoop-hdfs 2.7.3 and hadoop-common 2.7.3 need at run time (their Maven runtime scope, minus Jersey 1, which
# comes from Debian). Everything else in the sdist (Spark, Hive, Scala, Jersey 2 / hk2, ...) stays out: Jersey 2's
# javax.ws.rs 2 API on the classpath breaks the NameNode's Jersey 1 WebHDFS servlet.
HADOOP_JAR_PREFIXES = (
    "hadoop-annotations-", "hadoop-auth-", "hadoop-common-", "hadoop-hdfs-", "guava-", "protobuf-java-",
    "commons-cli-", "commons-codec-", "commons-collections-", "commons-configuration-", "commons-io-", "commons-lang-2",
    "commons-logging-", "commons-math3-", "commons-net-", "commons-httpclient-", "commons-compress-", "commons-beanutils-",
    "commons-digester-", "log4j-1", "slf4j-api-", "slf4j-log4j12-", "jetty-6", "jetty-util-6", "javax.servlet-api-",
    "jsp-api-", "jackson-core-asl-", "jackson-mapper-asl-", "jackson-jaxrs-", "jackson-xc-", "xmlenc-", "netty-3",
    "netty-all-", "xercesImpl-", "htrace-core-", "leveldbjni-all-", "gson-", "zookeeper-", "curator-", "jsr305-",
    "avro-1", "paranamer-", "snappy-java-", "xz-", "httpclient-", "httpcore-", "apacheds-", "api-asn1-api-", "api-util-",
    "jaxb-api-", "activation-", "stax-api-",
)  # fmt: skip
HDFS_USER = "hdfs"


class PartsUnavailable(RuntimeError):
    """A piece (Java, the sdist, the Debian jars) cannot be had on this machine; the message says which and why."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparkdl-tools" / "hdfs"


# ---------------------------------------------------------------------------------------------------- fetching parts


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def _sdist_url(index: str) -> str:
    page_url = f"{index.rstrip('/')}/pyspark/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as resp:
            page = resp.read().decode()
    except OSError as exc:
        raise PartsUnavailable(f"cannot read the package index page {page_url}: {exc}") from None
    links = _Links()
    links.feed(page)
    for href in links.hrefs:
        if urllib.parse.urlsplit(href).path.endswith("/" + PYSPARK_SDIST):
            return urllib.parse.urljoin(page_url, href)
    raise PartsUnavailable(f"{page_url} does not list {PYSPARK_SDIST}")


def _download(url: str, dest: Path, sha256: str) -> None:
    tmp = dest.with_suffix(".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PartsUnavailable(f"cannot download {url}: {exc}") from None
    if digest.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise PartsUnavailable(f"{url}: SHA-256 {digest.hexdigest()} is not the expected {sha256}")
    tmp.replace(dest)


def _hadoop_jars(cache: Path, index: str, say) -> Path:
    lib = cache / "hadoop-2.7.3" / "lib"
    if (lib / ".complete").exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    sdist = cache / PYSPARK_SDIST
    if not sdist.exists():
        url = _sdist_url(index)
        say(f"downloading {url} (210 MB, once)")
        _download(url, sdist, PYSPARK_SDIST_SHA256)
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    kept = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and "/deps/jars/" in member.name and name.startswith(HADOOP_JAR_PREFIXES):
                src = tar.extractfile(member)
                assert src is not None
                with src, open(lib / name, "wb") as out:
                    shutil.copyfileobj(src, out)
                kept += 1
    if not (lib / "hadoop-hdfs-2.7.3.jar").exists():
        raise PartsUnavailable(f"{sdist} holds no hadoop-hdfs-2.7.3.jar")
    (lib / ".complete").write_text(f"{kept} jars\n")
    sdist.unlink()  # only the ~60 MB of jars are kept
    return lib


def _jersey1_jars(cache: Path, say) -> Path:
    lib = cache / "jersey1"
    if (lib / ".complete").exists():
        return lib
    lib.mkdir(parents=True, exist_ok=True)
    system = Path("/usr/share/java")
    if all((system / j).exists() for j in JERSEY1_JARS):
        for j in JERSEY1_JARS:
            shutil.copy(system / j, lib / j)
    else:
        if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            raise PartsUnavailable(
                "WebHDFS needs the Jersey 1 jars: install the Debian packages " + " ".join(DEBIAN_PACKAGES)
                + " (no apt-get/dpkg-deb here to fetch them)"
            )
        debs = cache / "debs"
        debs.mkdir(exist_ok=True)
        say("fetching Jersey 1 from Debian: " + " ".join(DEBIAN_PACKAGES))
        got = subprocess.run(["apt-get", "download", *DEBIAN_PACKAGES], cwd=debs, capture_output=True, text=True)
        if got.returncode != 0:
            raise PartsUnavailable(f"apt-get download {' '.join(DEBIAN_PACKAGES)} failed: {got.stderr.strip()[-400:]}")
        root = cache / "debroot"
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        for j in JERSEY1_JARS:
            src = root / "usr" / "share" / "java" / j
            if not src.exists():
                raise PartsUnavailable(f"the Debian packages did not contain {j}")
            shutil.copy(src.resolve(), lib / j)
        shutil.rmtree(root)
        shutil.rmtree(debs)
    (lib / ".complete").write_text("ok\n")
    return lib


def _webapps(cache: Path) -> Path:
    """The NameNode/DataNode HTTP servers look up ``webapps/<name>`` on the classpath; empty web.xml files do."""
    root = cache / "webapps-root"
    for app in ("hdfs", "datanode", "static", "journal", "secondary"):
        d = root / "webapps" / app / "WEB-INF"
        d.mkdir(parents=True, exist_ok=True)
        xml = d / "web.xml"
        if not xml.exists():
            xml.write_text('<?xml version="1.0"?>\n<web-app version="2.5" xmlns="http://java.sun.com/xml/ns/javaee"/>\n')
    return root


def java_binary() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise PartsUnavailable("no java found (set JAVA_HOME or put a JRE 17 on PATH)")
    return java


def fetch(cache: Path | None = None, index: str = DEFAULT_INDEX, say=lambda _m: None) -> list[Path]:
    """Make sure every part is in ``cache``; returns the classpath entries (may raise PartsUnavailable)."""
    cache = Path(cache or default_cache())
    java_binary()
    hadoop = _hadoop_jars(cache, index, say)
    jersey = _jersey1_jars(cache, say)
    return [_webapps(cache), *sorted(hadoop.glob("*.jar")), *sorted(jersey.glob("*.jar"))]


# ---------------------------------------------------------------------------------------------------- running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _site_xml(props: dict[str, object]) -> str:
    body = "".join(f"  <property><name>{k}</name><value>{v}</value></property>\n" for k, v in props.items())
    return f'<?xml version="1.0"?>\n<configuration>\n{body}</configuration>\n'


@dataclass
class LocalHdfs:
    """A NameNode + DataNode under ``workdir``; ``start()`` returns once it is out of safe mode with a live DataNode."""

    workdir: Path
    cache: Path | None = None
    superuser: str = HDFS_USER
    permissions: bool = True
    heap: str = "256m"
    extra_conf: dict = field(default_factory=dict)  # more hdfs-site properties
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def fs(self) -> str:
        return f"hdfs://127.0.0.1:{self.ports['rpc']}"

    @property
    def webhdfs(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def _write_conf(self) -> Path:
        conf = self.workdir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        self.ports = {k: _free_port() for k in ("rpc", "http", "dn_data", "dn_http", "dn_ipc")}
        core = {"fs.defaultFS": self.fs, "hadoop.tmp.dir": self.workdir / "tmp"}
        data = self.workdir / "data"
        site = {
            "dfs.namenode.name.dir": data / "name", "dfs.datanode.data.dir": data / "data",
            "dfs.namenode.rpc-address": f"127.0.0.1:{self.ports['rpc']}",
            "dfs.namenode.http-address": f"127.0.0.1:{self.ports['http']}",
            "dfs.namenode.rpc-bind-host": "127.0.0.1", "dfs.namenode.http-bind-host": "127.0.0.1",
            "dfs.namenode.servicerpc-bind-host": "127.0.0.1",
            "dfs.namenode.secondary.http-address": "127.0.0.1:0",
            "dfs.datanode.address": f"127.0.0.1:{self.ports['dn_data']}",
            "dfs.datanode.http.address": f"127.0.0.1:{self.ports['dn_http']}",
            "dfs.datanode.ipc.address": f"127.0.0.1:{self.ports['dn_ipc']}",
            "dfs.datanode.hostname": "127.0.0.1", "dfs.namenode.datanode.registration.ip-hostname-check": "false",
            "dfs.replication": 1, "dfs.permissions.enabled": str(self.permissions).lower(),
            "dfs.namenode.safemode.extension": 0, "dfs.webhdfs.enabled": "true",
            "dfs.datanode.du.reserved": 0, "dfs.namenode.resource.du.reserved": 0,
            "dfs.heartbeat.interval": 1, "dfs.namenode.heartbeat.recheck-interval": 5000,
            **self.extra_conf,
        }  # fmt: skip
        (conf / "core-site.xml").write_text(_site_xml(core))
        (conf / "hdfs-site.xml").write_text(_site_xml(site))
        (conf / "log4j.properties").write_text(
            "log4j.rootLogger=INFO,console\nlog4j.appender.console=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n\n"
        )
        return conf

    def _java(self, conf: Path, classpath: list[Path], main: str, *args: str) -> list[str]:
        cp = os.pathsep.join([str(conf), *map(str, classpath)])
        return [java_binary(), f"-Xmx{self.heap}", "-Djava.net.preferIPv4Stack=true",
                f"-Dhadoop.log.dir={self.workdir / 'logs'}", "-cp", cp, main, *args]  # fmt: skip

    def start(self, timeout_s: float = 90, say=lambda _m: None) -> "LocalHdfs":
        classpath = fetch(self.cache, say=say)
        self.workdir = Path(self.workdir).resolve()
        if (self.workdir / "state.json").exists():
            raise RuntimeError(f"{self.workdir} already holds a running HDFS (state.json); stop it first")
        conf = self._write_conf()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "HADOOP_USER_NAME": self.superuser}
        env.pop("HADOOP_CONF_DIR", None)
        fmt = subprocess.run(
            self._java(conf, classpath, "org.apache.hadoop.hdfs.server.namenode.NameNode", "-format", "-nonInteractive", "-force"),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        (logs / "format.log").write_text(fmt.stdout + fmt.stderr)
        if fmt.returncode != 0:
            raise RuntimeError(f"formatting the NameNode failed; see {logs / 'format.log'}")
        for name, main in (("namenode", "org.apache.hadoop.hdfs.server.namenode.NameNode"),
                           ("datanode", "org.apache.hadoop.hdfs.server.datanode.DataNode")):  # fmt: skip
            with open(logs / f"{name}.log", "w") as log:
                proc = subprocess.Popen(self._java(conf, classpath, main), env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            self.pids[name] = proc.pid
        self._save()
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _jmx(self, query: str) -> dict:
        url = f"{self.webhdfs}/jmx?qry={query}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            beans = json.load(resp)["beans"]
        return beans[0] if beans else {}

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            for name, pid in self.pids.items():
                if not _alive(pid):
                    raise RuntimeError(f"the {name} exited during start; see {self.workdir / 'logs' / (name + '.log')}")
            try:
                state = self._jmx("Hadoop:service=NameNode,name=FSNamesystemState")
                info = self._jmx("Hadoop:service=NameNode,name=NameNodeInfo")
                live = int(state.get("NumLiveDataNodes", 0))
                safemode = info.get("Safemode", "?")
                if live >= 1 and safemode == "":
                    return
                last = f"{live} live DataNodes, safe mode: {safemode or 'off'}"
            except (OSError, ValueError, KeyError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"HDFS did not become ready in {timeout_s:.0f} s ({last}); logs in {self.workdir / 'logs'}")

    def _save(self) -> None:
        (self.workdir / "state.json").write_text(json.dumps(self.describe(), indent=2))

    def describe(self) -> dict:
        return {"fs": self.fs, "webhdfs": self.webhdfs, "superuser": self.superuser, "permissions": self.permissions,
                "ports": self.ports, "pids": self.pids, "workdir": str(self.workdir),
                "hadoop_conf_dir": str(self.workdir / "conf")}  # fmt: skip

    @classmethod
    def attach(cls, workdir: Path) -> "LocalHdfs":
        state = json.loads((Path(workdir) / "state.json").read_text())
        return cls(workdir=Path(workdir), superuser=state["superuser"], permissions=state["permissions"],
                   ports=state["ports"], pids=state["pids"])  # fmt: skip

    def stop(self, timeout_s: float = 20) -> None:
        for pid in self.pids.values():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for pid in self.pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                _signal(pid, signal.SIGKILL)
        for pid in self.pids.values():
            _reap(pid)
        self.pids = {}
        (self.workdir / "state.json").unlink(missing_ok=True)

    def __enter__(self) -> "LocalHdfs":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # started with start_new_session: the group is the JVM
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0)
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local_hdfs.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None, help=f"where the parts are kept (default {default_cache()})")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download and unpack the parts, print the classpath")
    start = sub.add_parser("start", help="format and start a NameNode + DataNode under --dir; prints JSON")
    start.add_argument("--dir", type=Path, required=True)
    start.add_argument("--superuser", default=HDFS_USER, help="Hadoop user the NameNode runs as (default %(default)s)")
    start.add_argument("--no-permissions", action="store_true", help="turn HDFS permission checks off")
    stop = sub.add_parser("stop", help="stop the HDFS started under --dir")
    stop.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)

    def say(msg: str) -> None:
        print(f"local_hdfs: {msg}", file=sys.stderr)

    try:
        if args.cmd == "fetch":
            print(os.pathsep.join(map(str, fetch(args.cache, say=say))))
        elif args.cmd == "start":
            hdfs = LocalHdfs(args.dir, cache=args.cache, superuser=args.superuser, permissions=not args.no_permissions)
            print(json.dumps(hdfs.start(say=say).describe(), indent=2))
        else:
            if not (args.dir / "state.json").exists():
                say(f"nothing running under {args.dir}")
                return 0
            LocalHdfs.attach(args.dir).stop()
    except PartsUnavailable as exc:
        say(f"cannot assemble HDFS here: {exc}")
        return 3
    except RuntimeError as exc:
        say(str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
