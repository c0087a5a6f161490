"""Benchmark: training a head on a features table three ways, same head, hyper-parameters and epochs:

(a) single-process PyTorch (global batch = workers x batch per worker),
(b) sparkdl's ParameterAveragingTrainingMaster on Spark local[2],
(c) PySpark's TorchDistributor (DDP over gloo, 2 processes, local mode).

    python bench/train.py --features sparkdl-work/demo/features.parquet   # made by `sparkdl demo`

Each reports wall seconds, training examples/s and test accuracy (best epoch by valid accuracy), once per seed
(``--seeds``): accuracy is averaged over the seeds (one seed's test split of a few hundred rows moves by a point
per 3 rows), time is the median, and the first seed's times are reported too. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def load_splits(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["split", "label_index", "features"])
    split = np.asarray(table.column("split").to_pylist())
    y = table.column("label_index").to_numpy()
    col = table.column("features").combine_chunks()
    x = col.flatten().to_numpy().reshape(len(col), -1).astype(np.float32)
    return {s: (x[split == s], y[split == s]) for s in ("train", "valid", "test")}


def _train_loop(x, y, xv, yv, xt, yt, n_classes, epochs, batch, lr, momentum, seed, rank=0, world=1, ddp=False):
    """Shared by (a) and (c): nesterov SGD on a softmax head, best epoch by valid accuracy -> test accuracy."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    head = nn.Linear(x.shape[1], n_classes)
    model = nn.parallel.DistributedDataParallel(head) if ddp else head
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True)
    rng = np.random.default_rng(seed)
    best_valid, best_test, examples = -1.0, 0.0, 0
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    for _epoch in range(epochs):
        order = rng.permutation(len(x))  # same permutation on every rank; each takes its stride
        order = order[rank::world]
        steps = len(order) // batch if ddp else -(-len(order) // batch)
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
            examples += len(idx)
        with torch.inference_mode():
            v = float((head(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean()) if len(xv) else 0.0
            t = float((head(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
        if v > best_valid:
            best_valid, best_test = v, t
    return best_test, examples


def single_process(splits, n_classes, args) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    (x, y), (xv, yv), (xt, yt) = splits["train"], splits["valid"], splits["test"]
    acc, examples = _train_loop(x, y, xv, yv, xt, yt, n_classes, args.epochs, args.workers * args.batch_size_per_worker,
                                args.lr, args.momentum, args.seed)  # fmt: skip
    wall = time.perf_counter() - start
    return {"setup": "single-process PyTorch", "seconds": round(wall, 3), "examples_per_s": round(examples / wall, 1), "test_accuracy": round(acc, 4)}


def sparkdl_averaging(spark, path, n_classes, args) -> dict:
    from pyspark.sql import functions as F

    from sparkdl.config import AveragingConfig, OptimizerConfig, RunConfig, TrainConfig
    from sparkdl.evaluate import evaluate_head
    from sparkdl.model import HeadSpec, build_head
    from sparkdl.train.driver import build_master

    cfg = TrainConfig(run=RunConfig(workers=args.workers, execution=args.execution), epochs=args.epochs,
                      batch_size_per_worker=args.batch_size_per_worker,
                      algorithm=AveragingConfig(frequency=args.averaging_frequency),
                      optimizer=OptimizerConfig(name="nesterov", lr=args.lr, momentum=args.momentum), seed=args.seed)  # fmt: skip
    start = time.perf_counter()
    df = spark.read.parquet(path)
    dim = int(df.select(F.size("features")).first()[0])
    result = build_master(cfg).fit(df, build_head(cfg.head, dim, n_classes, seed=cfg.seed), n_classes)
    spec = HeadSpec.from_module(cfg.head, dim, n_classes, result.head)
    acc = evaluate_head(df.filter("split = 'test'"), spec, n_classes).accuracy
    wall = time.perf_counter() - start
    return {"setup": f"sparkdl averaging ({args.execution}), local[2], {args.workers} workers, frequency {args.averaging_frequency}",
            "seconds": round(wall, 3), "examples_per_s": round(result.stats["examples"] / wall, 1), "test_accuracy": round(acc, 4),
            "rounds": result.stats["iterations"]}  # fmt: skip


def _ddp_main(path, n_classes, epochs, batch, lr, momentum, seed):
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    splits = load_splits(path)
    (x, y), (xv, yv), (xt, yt) = splits["train"], splits["valid"], splits["test"]
    acc, examples = _train_loop(x, y, xv, yv, xt, yt, n_classes, epochs, batch, lr, momentum, seed, rank, world, ddp=True)
    total = torch.tensor([examples], dtype=torch.int64)
    dist.all_reduce(total)
    dist.destroy_process_group()
    return {"test_accuracy": acc, "examples": int(total.item())}


def torch_distributor(path, n_classes, args) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    saved = os.dup(1)
    os.dup2(2, 1)  # torchrun's banner and logs go to stderr: stdout carries the JSON only
    try:
        start = time.perf_counter()
        out = TorchDistributor(num_processes=args.workers, local_mode=True, use_gpu=False).run(
            _ddp_main, os.path.abspath(path), n_classes, args.epochs, args.batch_size_per_worker, args.lr, args.momentum, args.seed
        )
        wall = time.perf_counter() - start
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    return {"setup": f"TorchDistributor, DDP gloo, {args.workers} processes, local mode", "seconds": round(wall, 3),
            "examples_per_s": round(out["examples"] / wall, 1), "test_accuracy": round(out["test_accuracy"], 4)}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", default="sparkdl-work/demo/features.parquet")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size-per-worker", type=int, default=16)
    ap.add_argument("--averaging-frequency", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[42, 43, 44, 45, 46],
                    help="one run of each setup per seed (default 42,43,44,45,46); accuracy is averaged, time is the "
                    "median, and the first seed's times (sparkdl's Python workers still cold) are reported too")  # fmt: skip
    ap.add_argument("--execution", choices=["barrier", "rounds"], default="barrier",
                    help="the averaging master's execution (default barrier)")
    args = ap.parse_args(argv)

    from sparkdl.config import SessionConfig
    from sparkdl.session import build_session

    path = args.features
    if not os.path.exists(path):
        ap.error(f"{path} not found: run `sparkdl demo` first, or pass --features")
    meta = json.load(open(path[: -len(".parquet")] + ".meta.json")) if path.endswith(".parquet") else {}
    splits = load_splits(path)
    n_classes = len(meta.get("labels", [])) or int(max(s[1].max() for s in splits.values() if len(s[1])) + 1)
    spark = build_session(SessionConfig(master="local[2]", ui_enabled=False, app_name="bench-train"))
    spark.range(4).repartition(2).mapInArrow(lambda it: it, "id long").collect()  # start Python workers: not measured
    runs: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
    for seed in args.seeds:
        args.seed = seed
        runs["a"].append({**single_process(splits, n_classes, args), "seed": seed})
        runs["b"].append({**sparkdl_averaging(spark, path, n_classes, args), "seed": seed})
        runs["c"].append({**torch_distributor(path, n_classes, args), "seed": seed})
        print(json.dumps({k: v[-1] for k, v in runs.items()}), file=sys.stderr)
    spark.stop()

    def summary(key: str) -> dict:
        rs = runs[key]
        return {"setup": rs[0]["setup"], "median_seconds": round(float(np.median([r["seconds"] for r in rs])), 3),
                "first_seconds": rs[0]["seconds"],
                "median_examples_per_s": round(float(np.median([r["examples_per_s"] for r in rs])), 1),
                "mean_test_accuracy": round(float(np.mean([r["test_accuracy"] for r in rs])), 4),
                "test_accuracy_per_seed": [r["test_accuracy"] for r in rs]}  # fmt: skip

    a, b, c = summary("a"), summary("b"), summary("c")
    report = {
        "benchmark": "train",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "features": path,
        "rows": {s: int(len(v[1])) for s, v in splits.items()},
        "feature_dim": int(splits["train"][0].shape[1]),
        "classes": n_classes,
        "config": {k: v for k, v in vars(args).items() if k != "seed"},
        "summary": [a, b, c],
        "runs": runs,
        "accuracy_gap_b_minus_a": round(b["mean_test_accuracy"] - a["mean_test_accuracy"], 4),
        "time_ratio_b_over_c": round(b["median_seconds"] / c["median_seconds"], 3),
        "time_ratio_b_over_c_first_run": round(b["first_seconds"] / c["first_seconds"], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
