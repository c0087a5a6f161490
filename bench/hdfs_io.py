"""Benchmark: HDFS (issue 5). Starts a real single-node HDFS (scripts/local_hdfs.py), prints JSON.

1. Start-up: format + NameNode + DataNode until writable (seconds).
2. WebHDFS uploads with `sparkdl fs put`'s code (sparkdl.data.webhdfs): a Caltech-shaped tree of small JPEGs (files/s,
   MB/s) and one large file shaped like VGG16 weights (MB/s).
3. `sparkdl ingest` of that tree on Spark local[2]: from file:// and from hdfs:// (seconds, files/s), each written to
   the same file system it was read from.

    python bench/hdfs_io.py [--files 2000] [--big-mb 512] [--out bench/results/hdfs-io-DATE.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _local_hdfs():
    spec = importlib.util.spec_from_file_location("local_hdfs", REPO / "scripts" / "local_hdfs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_hdfs"] = module
    spec.loader.exec_module(module)
    return module


def make_tree(root: Path, files: int, classes: int = 20) -> int:
    """``root/<NNN.class>/<i>.jpg``: real JPEGs (Caltech-256 averages ~40 KB; these are 300x200 noise + gradient)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    total = 0
    for i in range(files):
        folder = root / f"{i % classes + 1:03d}.class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.linspace(0, 255, 300, dtype=np.float32)[None, :, None]
        img = np.clip(base + rng.normal(0, 40, (200, 300, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=85)
        (folder / f"{i:05d}.jpg").write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--big-mb", type=int, default=512)
    parser.add_argument("--threads", type=int, default=16, help="upload threads (sparkdl fs put --threads)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from sparkdl.config import IngestConfig, SessionConfig
    from sparkdl.data.images import ingest_images
    from sparkdl.data.webhdfs import WebHdfs
    from sparkdl.session import build_session

    work = Path(tempfile.mkdtemp(prefix="sparkdl-bench-hdfs-"))
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "files": args.files, "threads": args.threads}
    t0 = time.perf_counter()
    server = _local_hdfs().LocalHdfs(work / "hdfs", permissions=False).start()
    result["hdfs_start_seconds"] = round(time.perf_counter() - t0, 2)
    try:
        tree = work / "tree"
        tree_bytes = make_tree(tree, args.files)
        big = work / "big.pth"
        with open(big, "wb") as f:
            f.write(np.random.default_rng(1).bytes(args.big_mb << 20))
        client = WebHdfs(server.webhdfs, "hdfs")
        t0 = time.perf_counter()
        client.upload(tree, "/data/tree", threads=args.threads)
        s = time.perf_counter() - t0
        result["webhdfs_tree_upload"] = {"seconds": round(s, 2), "files_per_second": round(args.files / s, 1),
                                         "mb_per_second": round(tree_bytes / s / 1e6, 1), "mb": round(tree_bytes / 1e6, 1)}  # fmt: skip
        t0 = time.perf_counter()
        client.upload(big, "/models/big.pth")
        s = time.perf_counter() - t0
        result["webhdfs_big_file_upload"] = {"mb": args.big_mb, "seconds": round(s, 2), "mb_per_second": round((args.big_mb << 20) / s / 1e6, 1)}

        spark = build_session(SessionConfig(master="local[2]", ui_enabled=False))
        ingest_images(spark, IngestConfig(images_uri=f"file://{tree}", output_uri=f"file://{work}/warm.parquet"))  # JIT/imports
        for name, images, out in (("file", f"file://{tree}", f"file://{work}/images.parquet"),
                                  ("hdfs", f"{server.fs}/data/tree", f"{server.fs}/out/images.parquet")):  # fmt: skip
            t0 = time.perf_counter()
            r = ingest_images(spark, IngestConfig(images_uri=images, output_uri=out))
            s = time.perf_counter() - t0
            result[f"ingest_from_{name}"] = {"seconds": round(s, 2), "files_per_second": round(r.rows_out / s, 1)}
        spark.stop()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
