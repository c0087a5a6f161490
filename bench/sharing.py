"""Benchmark: gradient sharing (issues 4 and 15). Prints JSON.

1. ``codec``: threshold encode + decode + apply of a 10M-entry fp32 gradient on one core (numpy), at densities from
   1e-4 to 0.5: the format ``encode`` picks and the bitmap forced, best of ``--codec-repeats``; GB of fp32 gradient
   per second (goal >= 2 at every density).
2. ``training`` (Spark ``local[2]``, the real barrier launcher, 2 workers): per head, (a) dense synchronous SGD (the
   averaging master at frequency 1), (b) the averaging master at its default frequency 5, (c) the sharing master
   with default flags; test accuracy (mean over seeds), wall seconds (median), the sharing fit's
   ``compression_ratio`` (dense fp32 gradient bytes / encoded update bytes, every update of every worker, as in
   ``metrics.json``). Heads: ``demo`` (the demo's features, softmax 1280 -> 10, 12,810 parameters),
   ``caltech-softmax`` (Caltech-256-shaped synthetic features, 4096-d post-ReLU, 257 classes: softmax, 1,052,929
   parameters) and ``caltech-mlp`` (``mlp:256`` on the same, 1,114,881). Goal: >= 1000x at test accuracy within 1
   point of (b) on the ~1 M-parameter heads.
3. ``levers`` (``--levers``; in-process workers, same math): the sharing fit with the issue-4 settings (DL4J's band
   [1e-4, 1e-2], no message limit), with the limit only, and with today's defaults; bytes of rank 0's messages under
   the first codec (48-byte header, int32 indices or a 2-bit bitmap above 1/16) and under today's. On the demo head
   (every seed): the defaults vs today's band without its 128-entry floor.
4. ``staleness`` (``--staleness``; in-process, 8 workers, one of them sleeping ``--slow-ms`` before each step):
   k = 0, 1, 4, 16: test accuracy, the lag updates were actually applied with, exactly-once counts.

    python bench/sharing.py --demo-features sparkdl-work/demo/features.parquet [--levers] [--staleness]
    python bench/sharing.py --codec-only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

DENSITIES = [1e-4, 1e-3, 1e-2, 1 / 64, 1 / 32, 0.1, 0.5]


def codec_throughput(length: int, densities: list[float], repeats: int) -> list[dict]:
    from sparkdl.train.exchange.sharing import codec

    rng = np.random.default_rng(0)
    grad = rng.standard_normal(length).astype(np.float32)
    residual = np.empty_like(grad)
    total = np.zeros(length, np.float32)
    total.fill(0)  # touched: a worker's update buffer is reused, its pages are there
    out = []
    for density in densities:
        tau = float(np.quantile(np.abs(grad), 1 - density))
        for fmt in (None, codec.BITMAP):
            best = (float("inf"), 0.0, 0.0)
            for _ in range(repeats):
                residual[:] = grad
                t0 = time.perf_counter()
                message, sent = codec.encode(residual, tau, fmt=fmt)
                t1 = time.perf_counter()
                codec.decode(message).add_into(total)
                t2 = time.perf_counter()
                best = min(best, (t2 - t0, t1 - t0, t2 - t1))
            chosen = codec.FORMATS[codec.decode(message).fmt]
            if fmt is not None and chosen == out[-1]["format"]:
                continue  # the bitmap was picked anyway
            out.append({"density": density, "format": chosen, "forced": fmt is not None, "entries_sent": sent,
                        "message_bytes": len(message), "compression": round(4 * length / len(message), 1),
                        "encode_ms": round(best[1] * 1e3, 2), "decode_apply_ms": round(best[2] * 1e3, 2),
                        "gb_per_s": round(4 * length / best[0] / 1e9, 3)})  # fmt: skip
    return out


def caltech_like(directory: str, per_class: int = 40, noise: float = 2.0, seed: int = 0) -> str:
    """A Caltech-256-shaped features table: 257 classes x ``per_class`` rows of 4096-d post-ReLU features (class
    clusters in a 64-d latent space through a random layer; ``noise`` 2.0 makes a softmax head reach ~0.58 test
    accuracy in 5 epochs), split 60/20/20. Written with pyarrow, with its meta; returns the table's path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    k, dim, latent = 257, 4096, 64
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (k, latent)).astype(np.float32)
    layer = (rng.normal(0, 1, (latent, dim)) / np.sqrt(latent)).astype(np.float32)
    bias = rng.normal(-0.5, 0.3, dim).astype(np.float32)
    labels = np.repeat(np.arange(k), per_class)
    z = centers[labels] + rng.normal(0, noise, (len(labels), latent)).astype(np.float32)
    x = np.maximum(z @ layer + bias, 0).astype(np.float32)
    u = rng.random(len(labels))
    split = np.where(u < 0.6, "train", np.where(u < 0.8, "valid", "test"))
    table = os.path.join(directory, "caltech-like.parquet")
    os.makedirs(table, exist_ok=True)
    features = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, dim, dtype=np.int32)), pa.array(x.reshape(-1)))
    pq.write_table(pa.table({"path": [f"file:/synthetic/{c:03d}/{i:05d}.jpg" for i, c in enumerate(labels)],
                             "label": [f"{c:03d}.class" for c in labels], "label_index": pa.array(labels.astype(np.int32)),
                             "split": split, "features": features}),
                   os.path.join(table, "part-00000.parquet"), row_group_size=2048)  # fmt: skip
    meta = {"format": "sparkdl.features/1", "labels": [f"{c:03d}.class" for c in range(k)], "feature_dim": dim,
            "backbone": {"name": "synthetic-caltech-like", "feature_dim": dim}}  # fmt: skip
    with open(os.path.join(directory, "caltech-like.meta.json"), "w") as f:
        json.dump(meta, f)
    return table


class _Steps:
    """Rank 0's per-step events (message bytes, fraction sent)."""

    def __init__(self) -> None:
        self.events = []

    def on_round(self, event) -> None:
        self.events.append(event)


def train_run(df, n_classes, dim, head, args, seed, algorithm, launcher=None, epochs=None) -> dict:
    from pyspark.sql import functions as F

    from sparkdl.config import HeadConfig, OptimizerConfig, RunConfig, TrainConfig
    from sparkdl.evaluate import evaluate_head
    from sparkdl.model import HeadSpec, build_head
    from sparkdl.train.driver import build_master

    cfg = TrainConfig(algorithm=algorithm, run=RunConfig(workers=args.workers), epochs=epochs or args.epochs,
                      head=HeadConfig.parse(head), batch_size_per_worker=args.batch_size_per_worker, seed=seed,
                      optimizer=OptimizerConfig(name="nesterov", lr=args.lr, momentum=args.momentum))  # fmt: skip
    steps = _Steps()
    start = time.perf_counter()
    result = build_master(cfg, launcher).fit(df, build_head(cfg.head, dim, n_classes, seed=seed), n_classes, listeners=[steps])
    wall = time.perf_counter() - start
    spec = HeadSpec.from_module(cfg.head, dim, n_classes, result.head)
    st = result.stats
    run = {"seed": seed, "seconds": round(wall, 2),
           "test_accuracy": round(evaluate_head(df.filter(F.col("split") == "test"), spec, n_classes).accuracy, 4),
           "parameters": int(sum(v.size for v in result.final_params.values())),
           "transport_bytes": st.get("bytes_between_workers")}  # fmt: skip
    if "compression_ratio" in st:
        run.update(compression_ratio=round(st["compression_ratio"], 1), update_bytes=st["update_bytes"],
                   dense_equivalent_bytes=st["dense_equivalent_bytes"], sent_fraction=round(st["sent_fraction"], 6),
                   updates_exactly_once=st["updates_exactly_once"], max_update_lag=st["max_update_lag"])  # fmt: skip
        run["_rank0_steps"] = [(e.sent_fraction, e.message_bytes) for e in steps.events]
    return run


def _v1_bytes(length: int, count: int) -> int:
    """The first codec's message: 48-byte header, int32 indices, or two bit planes above length / 16 entries."""
    return 48 + (2 * -(-length // 8) if count > length / 16 else 4 * count)


def _summary(runs: list[dict]) -> dict:
    out = {"mean_test_accuracy": round(float(np.mean([r["test_accuracy"] for r in runs])), 4),
           "median_seconds": round(float(np.median([r["seconds"] for r in runs])), 2),
           "test_accuracy": [r["test_accuracy"] for r in runs]}  # fmt: skip
    if "compression_ratio" in runs[0]:
        out["compression_ratio"] = round(float(np.median([r["compression_ratio"] for r in runs])), 1)
        out["compression_ratio_min"] = min(r["compression_ratio"] for r in runs)
        out["sent_fraction"] = float(np.median([r["sent_fraction"] for r in runs]))
        out["updates_exactly_once"] = all(r["updates_exactly_once"] for r in runs)
    return out


def _load(spark, path: str):
    meta = json.load(open(path[: -len(".parquet")] + ".meta.json"))
    df = spark.read.parquet(path).cache()
    df.count()
    return df, len(meta["labels"]), int(meta["feature_dim"])


def training(spark, heads: dict, args) -> dict:
    from sparkdl.config import AveragingConfig, SharingConfig

    setups = {"dense": AveragingConfig(frequency=1), "averaging": AveragingConfig(frequency=5), "sharing": SharingConfig()}
    report = {}
    for name, (path, head, epochs, seeds) in heads.items():
        df, n_classes, dim = _load(spark, path)
        runs = {k: [] for k in setups}
        for seed in seeds:
            for setup, algorithm in setups.items():
                runs[setup].append(train_run(df, n_classes, dim, head, args, seed, algorithm, epochs=epochs))
            print(json.dumps({name: {k: {kk: vv for kk, vv in v[-1].items() if not kk.startswith("_")}
                                     for k, v in runs.items()}}), file=sys.stderr)  # fmt: skip
        df.unpersist()
        summary = {k: _summary(v) for k, v in runs.items()}
        share = summary["sharing"]
        report[name] = {"features": path, "head": head, "epochs": epochs, "seeds": seeds,
                        "parameters": runs["sharing"][0]["parameters"], "summary": summary,
                        "accuracy_gap_sharing_minus_averaging": round(share["mean_test_accuracy"] - summary["averaging"]["mean_test_accuracy"], 4),
                        "accuracy_gap_sharing_minus_dense": round(share["mean_test_accuracy"] - summary["dense"]["mean_test_accuracy"], 4),
                        "runs": {k: [{kk: vv for kk, vv in r.items() if not kk.startswith("_")} for r in v] for k, v in runs.items()}}  # fmt: skip
    return report


def levers(spark, heads: dict, args) -> dict:
    """Issue-4 settings vs the limit alone vs today's defaults, in-process (the thresholds are swapped in here)."""
    from sparkdl.config import SharingConfig
    from sparkdl.launch.local import LocalLauncher
    from sparkdl.train.exchange.sharing import exchange, threshold

    class Dl4jBand(threshold.AdaptiveThreshold):  # DL4J's band; ``limited``: the limit at its top
        limited = False

        def __init__(self, tau: float = 1e-4) -> None:
            super().__init__(tau, 1e-4, 1e-2, min_entries=1)

        def limit(self, length: int) -> int | None:
            return super().limit(length) if self.limited else None

    class Dl4jBandLimited(Dl4jBand):
        limited = True

    class NoFloor(threshold.AdaptiveThreshold):  # today's band without the 128-entry floor
        def __init__(self, tau: float = 1e-4) -> None:
            super().__init__(tau, min_entries=1)

    variants = {"issue-4 (DL4J band [1e-4, 1e-2], no limit)": Dl4jBand,
                "DL4J band + message limit at 1e-2": Dl4jBandLimited, "defaults": None}  # fmt: skip
    small = {"defaults": None, "band [1e-4, 2e-3] without the 128-entry floor": NoFloor}
    built = exchange.build_threshold
    report = {}
    for name, (path, head, epochs, seeds) in heads.items():
        df, n_classes, dim = _load(spark, path)
        rows = {}
        on_seeds = seeds if name == "demo" else seeds[:1]  # the small head: cheap, and its gaps are small
        for variant, cls in (small if name == "demo" else variants).items():
            exchange.build_threshold = (lambda config, cls=cls: cls()) if cls else built
            try:
                runs = [train_run(df, n_classes, dim, head, args, seed, SharingConfig(), launcher=LocalLauncher(),
                                  epochs=epochs) for seed in on_seeds]  # fmt: skip
            finally:
                exchange.build_threshold = built
            steps = runs[0].pop("_rank0_steps")
            length = runs[0]["parameters"]
            counts = [round(f * length) for f, _ in steps]
            dense = 4 * length * len(steps)
            rows[variant] = {"test_accuracy": round(float(np.mean([r["test_accuracy"] for r in runs])), 4),
                             "sent_fraction": runs[0]["sent_fraction"],
                             "rank0_ratio_codec_v1": round(dense / sum(_v1_bytes(length, n) for n in counts), 1),
                             "rank0_ratio_codec_v2": round(dense / sum(b for _, b in steps), 1),
                             "compression_ratio": float(np.median([r["compression_ratio"] for r in runs])),
                             "p99_fraction_sent": float(np.quantile([f for f, _ in steps], 0.99))}  # fmt: skip
            print(json.dumps({name: {variant: rows[variant]}}), file=sys.stderr)
        df.unpersist()
        report[name] = {"seeds": on_seeds, "epochs": epochs, "variants": rows}
    return report


def staleness(spark, path: str, head: str, args) -> dict:
    """W = 8 in-process workers, rank 5 sleeping ``--slow-ms`` before each step; k = 0, 1, 4, 16."""
    from sparkdl.config import SharingConfig
    from sparkdl.launch.local import LocalLauncher
    from sparkdl.train.exchange.sharing.exchange import SharingExchange

    step = SharingExchange.step

    def slow(self, *a, **kw):
        if self.comm.rank == 5:
            time.sleep(args.slow_ms / 1000)
        return step(self, *a, **kw)

    df, n_classes, dim = _load(spark, path)
    workers, args.workers = args.workers, 8
    SharingExchange.step = slow
    out = {}
    try:
        for k in (0, 1, 4, 16):
            runs = [train_run(df, n_classes, dim, head, args, seed, SharingConfig(staleness=k), launcher=LocalLauncher(), epochs=5)
                    for seed in args.seeds[:3]]  # fmt: skip
            out[f"k={k}"] = {**_summary(runs), "max_update_lag": max(r["max_update_lag"] for r in runs)}
            print(json.dumps({f"k={k}": out[f"k={k}"]}), file=sys.stderr)
    finally:
        SharingExchange.step = step
        args.workers = workers
    df.unpersist()
    return {"features": path, "head": head, "workers": 8, "slow_rank": 5, "slow_ms": args.slow_ms, "results": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-features", default="sparkdl-work/demo/features.parquet")
    ap.add_argument("--workdir", help="where the Caltech-like table is written (default: a temporary directory)")
    ap.add_argument("--codec-length", type=int, default=10_000_000)
    ap.add_argument("--codec-repeats", type=int, default=7)
    ap.add_argument("--epochs", type=int, default=10, help="epochs on the demo head (the Caltech-like heads: 5)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size-per-worker", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[42, 43, 44, 45, 46])
    ap.add_argument("--caltech-seeds", type=lambda v: [int(x) for x in v.split(",")], default=[42, 43, 44])
    ap.add_argument("--heads", default="demo,caltech-softmax,caltech-mlp")
    ap.add_argument("--codec-only", action="store_true")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--levers", action="store_true")
    ap.add_argument("--staleness", action="store_true")
    ap.add_argument("--slow-ms", type=float, default=30.0)
    args = ap.parse_args(argv)

    report = {"benchmark": "sharing",
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
              "codec": {"length": args.codec_length, "results": codec_throughput(args.codec_length, DENSITIES, args.codec_repeats)}}  # fmt: skip
    print(json.dumps(report["codec"]), file=sys.stderr)
    if not args.codec_only:
        from sparkdl.config import SessionConfig
        from sparkdl.session import build_session

        workdir = args.workdir or tempfile.mkdtemp(prefix="bench-sharing-")
        caltech = caltech_like(workdir)
        heads = {"demo": (args.demo_features, "softmax", args.epochs, args.seeds),
                 "caltech-softmax": (caltech, "softmax", 5, args.caltech_seeds),
                 "caltech-mlp": (caltech, "mlp:256", 5, args.caltech_seeds)}  # fmt: skip
        heads = {k: v for k, v in heads.items() if k in args.heads.split(",")}
        if "demo" in heads and not os.path.exists(args.demo_features):
            ap.error(f"{args.demo_features} not found: run `sparkdl demo` first, or pass --demo-features")
        spark = build_session(SessionConfig(master="local[2]", ui_enabled=False, app_name="bench-sharing"))
        spark.range(4).repartition(2).mapInArrow(lambda it: it, "id long").collect()
        if not args.skip_training:
            report["training"] = training(spark, heads, args)
        if args.levers:
            report["levers"] = levers(spark, heads, args)
        if args.staleness:
            report["staleness"] = staleness(spark, caltech, "softmax", args)
        spark.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
