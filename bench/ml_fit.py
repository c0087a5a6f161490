"""Benchmark: `HeadClassifier.fit` on one DataFrame laid out in few vs many partitions (an `orderBy` leaves up to
`spark.sql.shuffle.partitions`), and the head's row-by-row scoring cost against a batched forward pass. Spark local[2].

    python bench/ml_fit.py --repeats 3

Prints one JSON object (medians).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from datagen import make_features_table  # noqa: E402


def _fit_seconds(est, df, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        est.fit(df)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _scoring_us(dim: int, n_classes: int, rows: int = 2000) -> dict:
    import torch

    from sparkdl.config import HeadConfig
    from sparkdl.model import build_head

    torch.set_num_threads(1)
    model = build_head(HeadConfig(), dim, n_classes, seed=1).eval()
    x = torch.randn(rows, dim)
    with torch.inference_mode():
        t = time.perf_counter()
        for i in range(rows):
            model(x[i : i + 1])
        per_row = (time.perf_counter() - t) / rows
        t = time.perf_counter()
        model(x)
        batched = (time.perf_counter() - t) / rows
    return {"dim": dim, "classes": n_classes, "row_by_row_us": round(per_row * 1e6, 1), "batched_us": round(batched * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from sparkdl.config import SessionConfig
    from sparkdl.ml import HeadClassifier
    from sparkdl.session import build_session

    spark = build_session(SessionConfig(master="local[2]", ui_enabled=False))
    uri = tempfile.mkdtemp(prefix="sparkdl-bench-") + "/features.parquet"
    make_features_table(spark, uri, n=0, dim=6, n_classes=3, seed=7, split_counts={"train": 72, "valid": 12, "test": 24})
    few = spark.read.parquet(uri).cache()
    many = few.orderBy("path").cache()
    few.count(), many.count()
    est = HeadClassifier(labelCol="label", epochs=2, batchSizePerWorker=8, averagingFrequency=2, lr=0.05)
    est.fit(few)  # warm-up: Python workers, torch imports
    out = {
        "machine": platform.processor() or platform.machine(),
        "fit_seconds": {f"{few.rdd.getNumPartitions()}_partitions": round(_fit_seconds(est, few, args.repeats), 2),
                        f"{many.rdd.getNumPartitions()}_partitions": round(_fit_seconds(est, many, args.repeats), 2)},
        "head_scoring": [_scoring_us(1280, 257), _scoring_us(4096, 257)],
    }
    spark.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
