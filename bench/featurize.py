"""Benchmark: images/s of the sparkdl featurize stage on Spark local[2] vs the best plain-PyTorch loop.

Both paths start from the same encoded JPEGs and do the same work per image (decode, resize/crop, normalize,
forward pass). Plain loops tried: 1 process x N threads, and P processes x 1 thread (each on its share of the
images), timed after one untimed batch (oneDNN builds its kernels at the first call); the best of them is the
reference. The Spark path is `featurize_images` on an images table (read Parquet,
mapInArrow over the backbone, write the features Parquet, count rejects), timed after a small warm-up run that
starts the JVM's code paths and the Python workers and loads that setup's model in them (a Python worker holds one
model, as a long job would load it once).
Setups are interleaved and repeated (--repeats); medians are reported. The plain loops are the fp32 torch
reference; the Spark path runs each --numerics setup (precision:runtime) and reports its ratio to the best plain loop.
--fidelity instead compares each precision's features with torch fp32 on the demo's digits (real Lite0 weights).

    python bench/featurize.py --backbones efficientnet_lite0,vgg16 --images 480,96
    python bench/featurize.py --fidelity
    python bench/featurize.py --incremental --backbones efficientnet_lite0 --images 2000 --added 0.1

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_jpegs(n: int, seed: int = 0, size=(300, 400)) -> list[bytes]:
    """Photo-sized JPEGs (Caltech-256 images average about 300x400)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * (i % 5 + 2)) % 256, ((xx + yy) * (i % 3 + 1)) % 256], -1)
        img = np.clip(base + rng.integers(-25, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _plain_worker(args) -> tuple[int, float]:
    backbone, random_init, images, threads, batch = args
    import torch

    from sparkdl.data.decode import open_image
    from sparkdl.featurize.backbones import load_backbone

    torch.set_num_threads(threads)
    model = load_backbone(backbone, random_init=random_init)
    prep = model.preprocess
    # one untimed batch first: oneDNN creates its kernels at the first call (the Spark path's workers are warm too)
    model(torch.from_numpy(np.stack([prep.to_array(open_image(b, draft_size=prep.resize)) for b in images[:batch]])))
    start = time.perf_counter()
    done = 0
    for i in range(0, len(images), batch):
        arr = np.stack([prep.to_array(open_image(b, draft_size=prep.resize)) for b in images[i : i + batch]])
        model(torch.from_numpy(arr))
        done += len(arr)
    return done, time.perf_counter() - start


def plain(backbone: str, random_init: bool, images: list[bytes], processes: int, threads: int, batch: int) -> dict:
    shares = [images[i::processes] for i in range(processes)]
    if processes == 1:
        results = [_plain_worker((backbone, random_init, images, threads, batch))]
    else:
        # all workers load their model first, then run concurrently: wall = slowest worker's loop
        with mp.get_context("spawn").Pool(processes) as pool:
            results = pool.map(_plain_worker, [(backbone, random_init, s, threads, batch) for s in shares])
    n = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    return {"setup": f"{processes} process(es) x {threads} thread(s)", "images": n, "seconds": round(wall, 3),
            "images_per_s": round(n / wall, 2)}  # fmt: skip


def spark_path(spark, backbone: str, random_init: bool, table: str, out_dir: Path, threads: int, batch: int,
               precision: str = "fp32", runtime: str = "torch") -> dict:  # fmt: skip
    from sparkdl.config import FeaturizeConfig
    from sparkdl.featurize.featurizer import featurize_images

    out = out_dir / f"features-{backbone}-{threads}t-{precision}-{runtime}.parquet"
    cfg = FeaturizeConfig(
        input_uri=table, output_uri=str(out), backbone=backbone, random_init=random_init, batch_size=batch,
        threads_per_task=threads, overwrite=True, precision=precision, runtime=runtime,
    )  # fmt: skip
    start = time.perf_counter()
    result = featurize_images(spark, cfg)
    wall = time.perf_counter() - start
    ran = result.backbone["numerics"]
    return {"setup": f"Spark local[2], 2 tasks x {threads} thread(s), {ran['precision']} on {ran['runtime']}"
                     + (" (--precision auto)" if precision == "auto" else ""),
            "images": result.rows_out, "fallback_rows": ran["fallback_rows"],
            "partitions": result.partitions, "seconds": round(wall, 3), "images_per_s": round(result.rows_out / wall, 2)}  # fmt: skip


def fidelity(spark, work: Path, per_class: int | None) -> dict:
    """The demo's digits (real scans) through the real EfficientNet-Lite0 weights: per-row cosine of each
    precision/runtime's features to torch fp32, and the test accuracy of a softmax head (multinomial logistic
    regression, the same model as ``--head softmax``) trained on split=train of each."""
    from sklearn.linear_model import LogisticRegression

    from sparkdl.config import FeaturizeConfig, IngestConfig
    from sparkdl.data.images import ingest_images
    from sparkdl.demo import write_digits_tree
    from sparkdl.featurize.featurizer import featurize_images

    write_digits_tree(work / "digits", max_per_class=per_class)
    images = ingest_images(spark, IngestConfig(images_uri=str(work / "digits"), output_uri=str(work / "digits.parquet")))
    out = {"images": images.rows_out, "backbone": "efficientnet_lite0", "setups": {}}
    ref = None
    for precision, runtime in (("fp32", "torch"), ("auto", "auto"), ("fp32", "onnxruntime"), ("bf16", "torch")):
        result = featurize_images(spark, FeaturizeConfig(input_uri=images.output_uri, overwrite=True, precision=precision,
                                                         runtime=runtime, output_uri=str(work / "f.parquet")))  # fmt: skip
        rows = spark.read.parquet(result.output_uri).orderBy("path").collect()
        feats = np.array([r["features"] for r in rows], dtype=np.float64)
        labels = np.array([r["label_index"] for r in rows])
        train = np.array([r["split"] == "train" for r in rows])
        test = np.array([r["split"] == "test" for r in rows])
        acc = float((LogisticRegression(max_iter=3000).fit(feats[train], labels[train]).predict(feats[test]) == labels[test]).mean())
        ran = result.backbone["numerics"]
        key = f"{ran['precision']} on {ran['runtime']}" + (" (auto)" if precision == "auto" else "")
        if ref is None:
            ref = feats
        cos = (feats * ref).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(ref, axis=1)
        out["setups"][key] = {"min_cosine_to_torch_fp32": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
                              "test_accuracy": round(acc, 4), "test_images": int(test.sum()), "fallback_rows": ran["fallback_rows"]}  # fmt: skip
        print(json.dumps({key: out["setups"][key]}), file=sys.stderr, flush=True)
    return out


def incremental_bench(spark, work: Path, backbone: str, n: int, added: float, repeats: int, batch: int) -> dict:
    """An images table of ``n`` photos featurized in full; then ``added`` x n new photos appended: the incremental
    run's wall time vs a full run of the grown table (interleaved, ``repeats`` times; medians)."""
    from sparkdl.config import FeaturizeConfig
    from sparkdl.featurize.featurizer import featurize_images

    random_init = backbone == "vgg16"
    extra = int(round(n * added))
    images = make_jpegs(n + extra)
    import hashlib

    # as ingest writes it: with each image's sha256
    schema = "path string, label string, label_index int, split string, image binary, sha256 string"
    rows = [(f"file:/bench/c{i % 4}/{i}.jpg", f"c{i % 4}", i % 4, "train", images[i], hashlib.sha256(images[i]).hexdigest())
            for i in range(n + extra)]  # fmt: skip
    base, grown = str(work / "inc-base.parquet"), str(work / "inc-grown.parquet")
    for table, count in ((base, n), (grown, n + extra)):  # in slices: the driver's heap holds one at a time
        for start in range(0, count, 1000):
            spark.createDataFrame(rows[start:min(count, start + 1000)], schema).coalesce(1) \
                .write.mode("overwrite" if start == 0 else "append").parquet(table)  # fmt: skip

    def run(table: str, out: str, incremental: bool) -> tuple[float, dict]:
        cfg = FeaturizeConfig(input_uri=table, output_uri=out, backbone=backbone, random_init=random_init,
                              batch_size=batch, overwrite=True, incremental=incremental)  # fmt: skip
        start = time.perf_counter()
        result = featurize_images(spark, cfg)
        return time.perf_counter() - start, result.incremental

    warm = str(work / "inc-warm-in.parquet")
    spark.createDataFrame(rows[:64], schema).write.mode("overwrite").parquet(warm)
    run(warm, str(work / "inc-warm.parquet"), False)  # warm-up: JVM code paths, Python workers, the model
    full_s, inc_s, counts = [], [], None
    for _ in range(repeats):
        run(base, str(work / "inc-out.parquet"), False)  # the previous day's table
        seconds, counts = run(grown, str(work / "inc-out.parquet"), True)
        inc_s.append(seconds)
        full_s.append(run(grown, str(work / "inc-full.parquet"), False)[0])
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"backbone": backbone, "images_before": n, "images_added": extra, "repeats": repeats, "counts": counts,
            "full_seconds_all": [round(x, 2) for x in full_s], "incremental_seconds_all": [round(x, 2) for x in inc_s],
            "full_seconds_median": round(med(full_s), 2), "incremental_seconds_median": round(med(inc_s), 2),
            "ratio_incremental_to_full": round(med(inc_s) / med(full_s), 3)}  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="efficientnet_lite0,vgg16")
    ap.add_argument("--images", default="480,48", help="images per backbone, comma-separated in the same order")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="runs per setup, interleaved; medians are reported")
    ap.add_argument("--skip-oversubscribed", action="store_true", help="skip the 2 tasks x 2 threads Spark run")
    ap.add_argument("--numerics", default="fp32:torch,auto:auto,bf16:torch,fp32:onnxruntime",
                    help="Spark path setups as precision:runtime, comma-separated (the same resolved setup runs once)")
    ap.add_argument("--fidelity", action="store_true", help="only the fidelity check on the demo's digits (real Lite0 weights)")
    ap.add_argument("--per-class", type=int, default=None, help="--fidelity: digits per class (default all 1,797)")
    ap.add_argument("--incremental", action="store_true",
                    help="only the incremental check: --images N photos, then --added x N more (first --backbones)")
    ap.add_argument("--added", type=float, default=0.1, help="--incremental: fraction of new images (default 0.1)")
    args = ap.parse_args(argv)

    from sparkdl.config import SessionConfig
    from sparkdl.featurize.backbones import get_backbone
    from sparkdl.featurize.precision import choose, describe_host
    from sparkdl.session import build_session

    backbones = args.backbones.split(",")
    counts = [int(c) for c in args.images.split(",")]
    if len(counts) != len(backbones):
        ap.error("--images needs one count per backbone")
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="sparkdl-bench-"))
    spark = build_session(SessionConfig(master="local[2]", ui_enabled=False, app_name="bench-featurize"))
    report = {
        "benchmark": "featurize",
        "machine": {"cpus": cores, "python": platform.python_version(), "platform": platform.platform()},
        "batch_size": args.batch_size,
        "results": [],
    }
    report["host"] = describe_host()
    if args.incremental:
        try:
            report = {**report, "benchmark": "featurize-incremental",
                      **incremental_bench(spark, work, backbones[0], counts[0], args.added, args.repeats, args.batch_size)}
        finally:
            spark.stop()
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(report, indent=2))
        return 0
    if args.fidelity:
        try:
            report = {**report, "benchmark": "featurize-fidelity", **fidelity(spark, work, args.per_class)}
        finally:
            spark.stop()
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(report, indent=2))
        return 0
    try:
        for backbone, n in zip(backbones, counts):
            random_init = backbone == "vgg16"
            images = make_jpegs(n)
            rows = [(f"file:/bench/c{i % 4}/{i}.jpg", f"c{i % 4}", i % 4, "train", images[i]) for i in range(n)]
            table = str(work / f"images-{backbone}.parquet")
            spark.createDataFrame(rows, "path string, label string, label_index int, split string, image binary") \
                .coalesce(1).write.mode("overwrite").parquet(table)  # fmt: skip
            warm = str(work / f"warm-{backbone}.parquet")
            spark.createDataFrame(rows[:8], "path string, label string, label_index int, split string, image binary") \
                .write.mode("overwrite").parquet(warm)  # fmt: skip
            spark_path(spark, backbone, random_init, warm, work, 1, args.batch_size)  # warm-up, not reported

            def warm_then_time(precision: str, runtime: str) -> dict:
                # each Python worker holds one model: load this setup's in both workers (8 rows, untimed), as a
                # long job loads it once, then time the whole stage
                spark_path(spark, backbone, random_init, warm, work, 1, args.batch_size, precision, runtime)
                return spark_path(spark, backbone, random_init, table, work, 1, args.batch_size, precision, runtime)
            setups, seen = [], set()
            for item in args.numerics.split(","):
                precision, runtime = item.split(":")
                resolved = choose(get_backbone(backbone).numerics, precision, runtime)
                if resolved not in seen or precision == "auto":
                    seen.add(resolved)
                    setups.append((precision, runtime))

            # interleave the setups and repeat them, so a noisy neighbour hurts all of them alike; report medians
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):
                for r in (plain(backbone, random_init, images, 1, cores, args.batch_size),
                          plain(backbone, random_init, images, cores, 1, args.batch_size),
                          *(warm_then_time(p, rt) for p, rt in setups)):  # fmt: skip
                    runs.setdefault(r["setup"], []).append(r)
            if not args.skip_oversubscribed and cores > 1:
                r = spark_path(spark, backbone, random_init, table, work, cores, args.batch_size, "fp32", "torch")
                runs.setdefault(r["setup"], []).append(r)
            summary = {}
            for setup, rs in runs.items():
                rates = sorted(x["images_per_s"] for x in rs)
                summary[setup] = {"images_per_s_median": rates[len(rates) // 2], "images_per_s_all": rates,
                                  "seconds_median": sorted(x["seconds"] for x in rs)[len(rs) // 2]}  # fmt: skip
            plain_keys = [k for k in summary if k.startswith(tuple("0123456789"))]
            spark_key = "Spark local[2], 2 tasks x 1 thread(s), fp32 on torch"
            best_plain = max(plain_keys, key=lambda k: summary[k]["images_per_s_median"])
            for key, s in summary.items():
                s["ratio_to_best_plain_fp32_torch"] = round(s["images_per_s_median"] / summary[best_plain]["images_per_s_median"], 3)
            report["results"].append({
                "backbone": backbone,
                "weights": "random-init (timing only)" if random_init else "pretrained",
                "images": n,
                "repeats": args.repeats,
                "setups": summary,
                "best_plain": best_plain,
                "best_plain_images_per_s": summary[best_plain]["images_per_s_median"],
                "spark_images_per_s": summary[spark_key]["images_per_s_median"],
                "ratio_spark_to_best_plain": round(
                    summary[spark_key]["images_per_s_median"] / summary[best_plain]["images_per_s_median"], 3),
                "best_spark": max((k for k in summary if k.startswith("Spark")), key=lambda k: summary[k]["images_per_s_median"]),
            })  # fmt: skip
            print(json.dumps(report["results"][-1]), file=sys.stderr, flush=True)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
