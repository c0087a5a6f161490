"""``sparkdl fs``: HDFS outside Spark over WebHDFS (put | get | ls | exists | mkdir); no JVM, no Spark."""
from __future__ import annotations

import argparse
import json
import time

from sparkdl.cli.options import QuietFailure, positive_int, print_summary


def register(sub, common: argparse.ArgumentParser) -> dict:
    """Add ``fs`` and its actions to ``sub``; return its runner. ``common`` (the Spark options) does not apply:
    the actions take ``--webhdfs``/``--user`` and accept ``--json``/``--quiet``/``--debug`` unlisted."""
    fs_common = argparse.ArgumentParser(add_help=False)
    fs_common.add_argument("--webhdfs", default=None, metavar="URL",
                           help="NameNode HTTP endpoint, e.g. http://nn:9870 (default: dfs.namenode.http-address "
                                "from $HADOOP_CONF_DIR/hdfs-site.xml, else the URI's host on port 9870)")  # fmt: skip
    fs_common.add_argument("--user", default=None, help="Hadoop user (default $HADOOP_USER_NAME, else the OS user)")
    for flag in ("--json", "--quiet", "--debug"):
        fs_common.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    fs = sub.add_parser(
        "fs",
        help="HDFS outside Spark over WebHDFS: put, get, ls, exists, mkdir",
        description="Copy a local dataset or weights file to HDFS before a job, list, fetch results, check a path; "
        "over WebHDFS (no JVM, no Spark). URIs are hdfs://NAMENODE:PORT/path. Uploads appear complete or not at all.",
    )
    fs_sub = fs.add_subparsers(dest="fs_command", required=True, metavar="ACTION")
    put = fs_sub.add_parser("put", parents=[fs_common], help="upload a local file or directory tree")
    put.add_argument("local")
    put.add_argument("uri")
    put.add_argument("--overwrite", action="store_true")
    put.add_argument("--threads", type=positive_int, default=16,
                     help="files in flight at once (many small files are latency-bound; default %(default)s)")
    get = fs_sub.add_parser("get", parents=[fs_common], help="download a file or directory tree")
    get.add_argument("uri")
    get.add_argument("local")
    get.add_argument("--overwrite", action="store_true")
    ls = fs_sub.add_parser("ls", parents=[fs_common], help="list a directory")
    ls.add_argument("uri")
    ex = fs_sub.add_parser("exists", parents=[fs_common], help="exit 0 if the path exists, 1 if not")
    ex.add_argument("uri")
    mk = fs_sub.add_parser("mkdir", parents=[fs_common], help="create a directory and its parents")
    mk.add_argument("uri")
    return {"fs": run_fs}


def run_fs(args, say) -> dict:
    from sparkdl.data.webhdfs import WebHdfs, WebHdfsConfig

    client, path = WebHdfs.for_uri(args.uri, WebHdfsConfig(url=args.webhdfs, user=args.user))
    action = args.fs_command
    if action == "put":
        say(f"fs: uploading {args.local} to {args.uri} as {client.user} via {client.url}")
        t0 = time.perf_counter()
        sent = client.upload(args.local, path, overwrite=args.overwrite, threads=args.threads)
        payload = {"uri": args.uri, "bytes": sent, "seconds": round(time.perf_counter() - t0, 3)}
        rows = [("uploaded", f"{args.local} -> {args.uri}"), ("bytes", sent), ("time", f"{payload['seconds']:.1f} s")]
    elif action == "get":
        local = client.download(path, args.local, overwrite=args.overwrite)
        payload = {"uri": args.uri, "local": str(local)}
        rows = [("downloaded", f"{args.uri} -> {local}")]
    elif action == "ls":
        entries = client.list(path)
        payload = {"uri": args.uri, "entries": entries}
        if args.json:
            print(json.dumps(payload, indent=2, sort_keys=True))
        else:
            for e in entries:
                kind = "d" if e["type"] == "DIRECTORY" else "-"
                print(f"{kind}{e['permission']:>4} {e['owner']:<10} {e['length']:>12} {e['name']}")
        return payload
    elif action == "exists":
        found = client.exists(path)
        payload = {"uri": args.uri, "exists": found}
        if args.json:
            print(json.dumps(payload))
        if not found:
            raise QuietFailure()
        return payload
    else:
        client.makedirs(path)
        payload = {"uri": args.uri}
        rows = [("created", args.uri)]
    print_summary(f"fs {action}", rows, payload, args.json)
    return payload
