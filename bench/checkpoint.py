"""Benchmark: what a checkpoint per epoch costs a barrier fit on Spark local[2].

Two heads, each fitted with ``--checkpoint-every 1`` and with checkpoints off, alternately (``--repeats`` pairs):

* ``demo``: the demo's head (softmax on 1280-d EfficientNet-Lite0 features, 10 classes, 12,810 parameters) on a
  table of the demo's shape (``--features`` takes the demo's own ``features.parquet``; default: synthetic rows of
  the same shape, 1,257 train / 270 valid — the cost depends on the shapes, not the values);
* ``1m``: an MLP head of about one million parameters (1024-d features, ``mlp:960``, 10 classes).

Both with the averaging master (parameters + momentum in the checkpoint) and with sharing (adds each rank's
residual). Reported per case: the median epoch seconds without checkpoints; the seconds per checkpoint the ranks'
training threads spend on it (the gather, rank 0's snapshot: what blocks training; rank 0 encodes and sends on a
thread), the driver's write seconds (its own thread), the checkpoint size; and the goal's number, the extra wall time
per epoch with checkpoints (``(with - without) / epochs``, medians of alternating runs), as a fraction of an epoch:
it also counts the CPU the encoding, sending and writing take from the ranks on a busy machine. Prints JSON.

    python bench/checkpoint.py [--features sparkdl-work/demo/features.parquet] [--repeats 3] [--epochs 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def synthetic(spark, path: str, dim: int, n_classes: int, train: int, valid: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.0, size=(n_classes, dim)).astype(np.float32)
    rows = []
    for i in range(train + valid):
        label = int(rng.integers(0, n_classes))
        x = centers[label] + rng.normal(0, 1.0, size=dim).astype(np.float32)
        rows.append((f"file:/b/{i}.png", f"c{label}", label, "train" if i < train else "valid", x.tolist()))
    spark.createDataFrame(rows, "path string, label string, label_index int, split string, features array<float>") \
        .write.mode("overwrite").parquet(path)


def fit_once(spark, df, dim: int, n_classes: int, cfg, checkpoint_dir: str | None) -> dict:
    from sparkdl.model import build_head
    from sparkdl.train.driver import build_master

    run = dataclasses.replace(cfg.run, checkpoint_dir=checkpoint_dir, checkpoint_every=1 if checkpoint_dir else 0)
    cfg = dataclasses.replace(cfg, run=run)
    start = time.perf_counter()
    result = build_master(cfg).fit(df, build_head(cfg.head, dim, n_classes, seed=cfg.seed), n_classes)
    wall = time.perf_counter() - start
    return {"wall": wall, "epoch_seconds": [h.seconds for h in result.history], "stats": result.stats}


def case(spark, df, dim, n_classes, cfg, repeats: int, scratch: str) -> dict:
    walls = {"off": [], "on": []}
    epochs_off, writes, sizes, in_loop = [], [], [], []
    for r in range(repeats):
        for mode in ("off", "on"):
            ck = os.path.join(scratch, f"ck-{cfg.master}-{r}") if mode == "on" else None
            out = fit_once(spark, df, dim, n_classes, cfg, ck)
            walls[mode].append(out["wall"])
            if mode == "off":
                epochs_off += out["epoch_seconds"]
            else:
                s = out["stats"]
                writes.append(s["checkpoint_seconds"] / max(1, s["checkpoints_written"]))
                in_loop.append(s["checkpoint_seconds_in_loop"] / max(1, s["checkpoints_written"]))
                sizes.append(s["checkpoint_bytes"])
    epoch = statistics.median(epochs_off)
    extra = (statistics.median(walls["on"]) - statistics.median(walls["off"])) / cfg.epochs
    return {
        "master": cfg.master,
        "epoch_seconds": round(epoch, 4),
        "wall_seconds_off": [round(w, 3) for w in walls["off"]],
        "wall_seconds_on": [round(w, 3) for w in walls["on"]],
        "extra_seconds_per_epoch": round(extra, 4),
        "extra_fraction_of_epoch": round(extra / epoch, 4),
        "loop_seconds_per_checkpoint": round(statistics.median(in_loop), 4),
        "loop_fraction_of_epoch": round(statistics.median(in_loop) / epoch, 4),
        "driver_write_seconds": round(statistics.median(writes), 4),
        "write_fraction_of_epoch": round(statistics.median(writes) / epoch, 4),
        "checkpoint_bytes": sizes[-1],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default=None, help="the demo's features.parquet (default: synthetic, same shape)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args(argv)

    from sparkdl.config import (AveragingConfig, HeadConfig, OptimizerConfig, RunConfig, SessionConfig, SharingConfig,
                                TrainConfig)  # fmt: skip
    from sparkdl.session import build_session

    spark = build_session(SessionConfig(master="local[2]", ui_enabled=False))
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "epochs": args.epochs, "repeats": args.repeats, "cases": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sparkdl-bench-ckpt-") as scratch:
        demo_path = args.features
        if demo_path is None:
            demo_path = os.path.join(scratch, "demo.parquet")
            synthetic(spark, demo_path, 1280, 10, 1257, 270)
        big_path = os.path.join(scratch, "big.parquet")
        synthetic(spark, big_path, 1024, 10, 1257, 270, seed=1)
        heads = {"demo": (demo_path, HeadConfig(), 1280), "1m": (big_path, HeadConfig.parse("mlp:960"), 1024)}
        for name, (path, head, dim) in heads.items():
            df = spark.read.parquet(path).cache()
            df.count()
            for algorithm in (AveragingConfig(), SharingConfig()):
                cfg = TrainConfig(algorithm=algorithm, run=RunConfig(workers=2), head=head, epochs=args.epochs,
                                  optimizer=OptimizerConfig(lr=0.01))  # fmt: skip
                params = sum(int(np.prod(s)) for s in __import__("sparkdl.model", fromlist=["head_shapes"]).head_shapes(head, dim, 10).values())
                result = case(spark, df, dim, 10, cfg, args.repeats, scratch)
                out["cases"][f"{name}-{cfg.master}"] = {"parameters": params, **result}
                print(json.dumps({f"{name}-{cfg.master}": result}), file=sys.stderr, flush=True)
            df.unpersist()
    spark.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
