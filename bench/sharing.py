"""Benchmark: gradient sharing (issue 4). Prints JSON.

1. Codec: threshold encode + decode + apply of a 10M-entry fp32 gradient, one core (numpy), at densities
   1e-4 ... 1e-1; GB of fp32 gradient per second (goal >= 1).
2. On a features table (the demo's), one run per seed, same head / optimizer / epochs / workers on Spark local[2]:
   (a) dense synchronous SGD (the averaging master with averaging frequency 1: one step on every worker's minibatch,
   averaged), (b) the averaging master at --averaging-frequency 5, (c) the sharing master (adaptive threshold).
   Test accuracy (mean over seeds), wall seconds (median), bytes: what (a) would send as dense fp32 gradients
   (steps x workers x parameters x 4), what each master's transport actually sent, and (c)'s encoded updates.
   Goal: (c) >= 100x fewer bytes than dense fp32 gradients, test accuracy within 1 point of (a).

    python bench/sharing.py --features sparkdl-work/demo/features.parquet
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np


def codec_throughput(length: int, densities: list[float], repeats: int) -> list[dict]:
    from sparkdl.train.exchange.sharing import codec

    rng = np.random.default_rng(0)
    grad = rng.standard_normal(length).astype(np.float32)
    out = []
    for density in densities:
        tau = float(np.quantile(np.abs(grad), 1 - density))
        enc, dec = [], []
        for _ in range(repeats):
            residual = grad.copy()
            total = np.zeros(length, np.float32)
            t0 = time.perf_counter()
            message, sent = codec.encode(residual, tau)
            t1 = time.perf_counter()
            codec.decode(message).add_into(total)
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        best = min(e + d for e, d in zip(enc, dec))
        out.append({"density": density, "entries_sent": sent, "format": codec.FORMATS[codec.decode(message).fmt],
                    "message_bytes": len(message), "compression": round(4 * length / len(message), 1),
                    "encode_ms": round(min(enc) * 1e3, 2), "decode_apply_ms": round(min(dec) * 1e3, 2),
                    "gb_per_s": round(4 * length / best / 1e9, 3)})  # fmt: skip
    return out


def train_run(spark, path, n_classes, dim, args, seed, master, frequency=1) -> dict:
    from pyspark.sql import functions as F

    from sparkdl.config import AveragingConfig, OptimizerConfig, RunConfig, SharingConfig, ThresholdConfig, TrainConfig
    from sparkdl.evaluate import evaluate_head
    from sparkdl.model import HeadSpec, build_head
    from sparkdl.train.driver import build_master

    algorithm = (AveragingConfig(frequency=frequency) if master == "averaging"
                 else SharingConfig(threshold=ThresholdConfig.parse(args.threshold)))  # fmt: skip
    cfg = TrainConfig(algorithm=algorithm, run=RunConfig(workers=args.workers), epochs=args.epochs,
                      batch_size_per_worker=args.batch_size_per_worker, seed=seed,
                      optimizer=OptimizerConfig(name="nesterov", lr=args.lr, momentum=args.momentum))  # fmt: skip
    df = spark.read.parquet(path)
    start = time.perf_counter()
    result = build_master(cfg).fit(df, build_head(cfg.head, dim, n_classes, seed=seed), n_classes)
    wall = time.perf_counter() - start
    spec = HeadSpec.from_module(cfg.head, dim, n_classes, result.head)
    acc = evaluate_head(df.filter(F.col("split") == "test"), spec, n_classes).accuracy
    params = sum(v.size for v in result.final_params.values())
    steps = len(result.history) * math.ceil(math.ceil(result.history[0].examples / args.workers) / args.batch_size_per_worker)
    return {"seed": seed, "seconds": round(wall, 3), "test_accuracy": round(acc, 4), "parameters": int(params),
            "steps": steps, "dense_gradient_bytes": steps * args.workers * params * 4,
            "transport_bytes": result.stats.get("bytes_between_workers"),
            "update_bytes": result.stats.get("update_bytes"), "sent_fraction": result.stats.get("sent_fraction")}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="sparkdl-work/demo/features.parquet")
    ap.add_argument("--codec-length", type=int, default=10_000_000)
    ap.add_argument("--codec-repeats", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size-per-worker", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--threshold", default="adaptive")
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[42, 43, 44, 45, 46])
    ap.add_argument("--skip-training", action="store_true", help="codec throughput only")
    args = ap.parse_args(argv)

    report = {"benchmark": "sharing",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "codec": {"length": args.codec_length, "results": codec_throughput(args.codec_length, [1e-4, 1e-3, 1e-2, 1e-1], args.codec_repeats)}}  # fmt: skip
    if not args.skip_training:
        from sparkdl.config import SessionConfig
        from sparkdl.session import build_session

        path = args.features
        if not os.path.exists(path):
            ap.error(f"{path} not found: run `sparkdl demo` first, or pass --features")
        meta = json.load(open(path[: -len(".parquet")] + ".meta.json"))
        n_classes, dim = len(meta["labels"]), int(meta["feature_dim"])
        spark = build_session(SessionConfig(master="local[2]", ui_enabled=False, app_name="bench-sharing"))
        spark.range(4).repartition(2).mapInArrow(lambda it: it, "id long").collect()
        setups = {"dense": ("averaging", 1), "averaging": ("averaging", 5), "sharing": ("sharing", 1)}
        runs: dict[str, list[dict]] = {k: [] for k in setups}
        for seed in args.seeds:
            for name, (master, freq) in setups.items():
                runs[name].append(train_run(spark, path, n_classes, dim, args, seed, master, freq))
            print(json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr)
        spark.stop()
        summary = {name: {"mean_test_accuracy": round(float(np.mean([r["test_accuracy"] for r in rs])), 4),
                          "median_seconds": round(float(np.median([r["seconds"] for r in rs])), 3),
                          "transport_bytes": int(np.median([r["transport_bytes"] or 0 for r in rs])),
                          "dense_gradient_bytes": int(np.median([r["dense_gradient_bytes"] for r in rs]))}
                   for name, rs in runs.items()}  # fmt: skip
        share = runs["sharing"]
        summary["sharing"]["update_bytes"] = int(np.median([r["update_bytes"] for r in share]))
        summary["sharing"]["sent_fraction"] = float(np.median([r["sent_fraction"] for r in share]))
        report["training"] = {
            "features": path, "config": {k: v for k, v in vars(args).items() if k not in ("features",)},
            "summary": summary, "runs": runs,
            "bytes_ratio_dense_over_sharing_updates": round(summary["dense"]["dense_gradient_bytes"] / max(1, summary["sharing"]["update_bytes"]), 1),
            "bytes_ratio_dense_over_sharing_wire": round(summary["dense"]["dense_gradient_bytes"] / max(1, summary["sharing"]["transport_bytes"]), 1),
            "accuracy_gap_sharing_minus_dense": round(summary["sharing"]["mean_test_accuracy"] - summary["dense"]["mean_test_accuracy"], 4),
        }  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
