"""Benchmark: `sparkdl serve` latency and throughput vs a plain-PyTorch batch loop on the same images.

Serve: a real `sparkdl serve` subprocess on 127.0.0.1 (no access log), one image per POST /v1/predict over
keep-alive HTTP/1.1 connections, at concurrency 1 (sequential) and 16 (16 client threads). Plain: the same model
(`ImageClassifier.predict`: decode, preprocess, backbone + head) called directly on batches of --max-batch images
in this process, no HTTP (the reference of the goals); the same loop with batches of 1 and --max-batch/2 is
reported beside it (smaller batches can be faster per image on a CPU). Both do the same per-image work from the same encoded JPEGs; the clients run on the same
cores as the server (as a sidecar or a co-located caller would). Rounds are interleaved (plain, c1, c16) and
repeated; medians are reported, every round is in the JSON.

    python bench/serve.py                       # efficientnet_lite0, 320 images, 3 rounds: ~2 min on 2 cores

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # datagen: bundles without Spark
sys.path.insert(0, str(REPO / "bench"))  # featurize.make_jpegs: the same photo-sized JPEGs as the featurize bench


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def start_server(model: Path, max_batch: int, max_wait_ms: float, log: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "sparkdl.cli", "serve", "--model", str(model), "--port", "0", "--no-access-log",
           "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]  # fmt: skip
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline:
        if port is None:
            m = re.search(r"on http://127\.0\.0\.1:(\d+) ", log.read_text(errors="replace"))
            port = int(m.group(1)) if m else None
        if port is not None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return proc, port
            except OSError:
                pass
        if proc.poll() is not None:
            raise SystemExit(f"sparkdl serve exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"sparkdl serve did not become ready:\n{log.read_text()}")


def run_clients(port: int, images: list[bytes], concurrency: int) -> dict:
    """Each client thread keeps one connection and posts its share of the images one at a time."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine = []
        barrier.wait()
        for img in share:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/predict", body=img, headers={"Content-Type": "image/jpeg"})
            resp = conn.getresponse()
            body = resp.read()
            mine.append(time.perf_counter() - t0)
            if resp.status != 200:
                with lock:
                    errors.append(f"{resp.status} {body[:200]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(images[i::concurrency],)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {"images": len(latencies), "seconds": round(wall, 3), "images_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(1000 * percentile(latencies, 0.5), 1), "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1)}  # fmt: skip


def run_plain(classifier, images: list[bytes], batch: int) -> dict:
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        out = classifier.predict(images[i : i + batch])
        assert all(hasattr(r, "label") for r in out)
    wall = time.perf_counter() - t0
    return {"images": len(images), "seconds": round(wall, 3), "images_per_s": round(len(images) / wall, 2)}


def batch_sizes(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    values = {k: float(v) for k, _, v in (ln.rpartition(" ") for ln in text.splitlines() if ln and ln[0] != "#")}
    return {"batches": int(values.get("sparkdl_serve_batch_size_count", 0)), "images": int(values.get("sparkdl_serve_batch_size_sum", 0))}


def with_batches(port: int, fn) -> dict:
    """``fn()``'s result plus the server's batches during it (count, mean size)."""
    b0 = batch_sizes(port)
    out = fn()
    b1 = batch_sizes(port)
    n = b1["batches"] - b0["batches"]
    return {**out, "batches": n, "mean_batch": round((b1["images"] - b0["images"]) / max(n, 1), 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=320, help="images per concurrency-16 and plain round (default 320)")
    ap.add_argument("--sequential-images", type=int, default=96, help="images per concurrency-1 round (default 96)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    args = ap.parse_args(argv)

    from datagen import make_bundle
    from featurize import make_jpegs

    from sparkdl.infer.classifier import ImageClassifier

    images = make_jpegs(args.images, seed=1)
    with tempfile.TemporaryDirectory(prefix="sparkdl-bench-serve-") as tmp:
        bundle = make_bundle(Path(tmp) / "model", backbone=args.backbone)
        classifier = ImageClassifier.load(bundle)
        proc, port = start_server(bundle, args.max_batch, args.max_wait_ms, Path(tmp) / "serve.log")
        try:
            run_clients(port, images[:32], 16)  # warm-up: both paths' first batches
            run_clients(port, images[:8], 1)
            run_plain(classifier, images[:64], args.max_batch)
            plain_batches = sorted({1, max(1, args.max_batch // 2), args.max_batch})
            rounds = {"plain": [], **{f"plain_b{b}": [] for b in plain_batches if b != args.max_batch}, "c1": [], "c16": []}
            for _ in range(args.rounds):
                for b in plain_batches:
                    rounds["plain" if b == args.max_batch else f"plain_b{b}"].append(run_plain(classifier, images, b))
                rounds["c1"].append(with_batches(port, lambda: run_clients(port, images[: args.sequential_images], 1)))
                rounds["c16"].append(with_batches(port, lambda: run_clients(port, images, 16)))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)

    def med(key: str, field: str) -> float:
        return round(statistics.median(r[field] for r in rounds[key]), 2)

    plain = med("plain", "images_per_s")
    others = {k: med(k, "images_per_s") for k in rounds if k.startswith("plain_b")}
    summary = {
        "plain_images_per_s": plain,
        "plain_other_batch_sizes_images_per_s": others,
        "c1": {"images_per_s": med("c1", "images_per_s"), "p50_ms": med("c1", "p50_ms"), "p99_ms": med("c1", "p99_ms")},
        "c16": {"images_per_s": med("c16", "images_per_s"), "p50_ms": med("c16", "p50_ms"), "p99_ms": med("c16", "p99_ms"),
                "mean_batch": med("c16", "mean_batch")},
    }
    summary["ratios"] = {
        "c16_throughput_vs_plain": round(summary["c16"]["images_per_s"] / plain, 3),
        "c1_throughput_vs_plain": round(summary["c1"]["images_per_s"] / plain, 3),
        "c16_throughput_vs_best_plain": round(summary["c16"]["images_per_s"] / max([plain, *others.values()]), 3),
        "c16_p99_over_p50": round(summary["c16"]["p99_ms"] / summary["c16"]["p50_ms"], 2),
        "c1_p99_over_p50": round(summary["c1"]["p99_ms"] / summary["c1"]["p50_ms"], 2),
    }
    summary["goals"] = {"c16_throughput_ge_0.8x_plain": summary["ratios"]["c16_throughput_vs_plain"] >= 0.8,
                        "c16_p99_le_3x_p50": summary["ratios"]["c16_p99_over_p50"] <= 3.0}  # fmt: skip
    import torch

    print(json.dumps({
        "benchmark": "serve", "backbone": args.backbone, "image_size": [300, 400],
        "config": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "rounds": args.rounds,
                   "images": args.images, "sequential_images": args.sequential_images},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        "summary": summary,
        "server_exit_code": code, "rounds": rounds,
    }, indent=2))  # fmt: skip
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
