"""Benchmark: images/s of `sparkdl predict` (decode + backbone + head, one mapInArrow pass, predictions written)
vs `sparkdl featurize` (decode + backbone, features written) on the same images table, Spark local[2].

Goal (issue "Use the model"): predict within 5 % of featurize. Both runs are interleaved and repeated (--repeats);
medians are reported, after one warm-up run of each (JVM code paths, Python workers, the model loaded in them).

    python bench/predict.py --backbone efficientnet_lite0 --images 480 --repeats 3

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from featurize import make_jpegs  # noqa: E402


def make_model(directory: Path, backbone: str, n_classes: int = 4) -> Path:
    """A bundle with a seeded softmax head on ``backbone`` (its embedded / seeded weights), as `sparkdl train`
    would carry it: the timing does not depend on what the head learned."""
    from sparkdl.bundle import ModelBundle
    from sparkdl.config import HeadConfig
    from sparkdl.featurize.backbones import check_backbone
    from sparkdl.featurize.carry import carry_backbone
    from sparkdl.model import HeadSpec, build_head

    info = check_backbone(backbone)
    carried, file = carry_backbone(None, info, True, directory.parent)
    head = build_head(HeadConfig(), info["feature_dim"], n_classes, seed=0)
    spec = HeadSpec.from_module(HeadConfig(), info["feature_dim"], n_classes, head)
    ModelBundle(head=spec, labels=[f"c{i}" for i in range(n_classes)], backbone={**info, "carried": carried},
                attachments={file.name: file} if file else {}).save(directory)  # fmt: skip
    return directory


def run_featurize(spark, table: str, out: Path, backbone: str, batch: int) -> dict:
    from sparkdl.config import FeaturizeConfig
    from sparkdl.featurize.featurizer import featurize_images

    start = time.perf_counter()
    r = featurize_images(spark, FeaturizeConfig(input_uri=table, output_uri=str(out), backbone=backbone, batch_size=batch,
                                                overwrite=True))  # fmt: skip
    wall = time.perf_counter() - start
    return {"images": r.rows_out, "seconds": round(wall, 3), "images_per_s": round(r.rows_out / wall, 2)}


def run_predict(spark, table: str, out: Path, model: Path, batch: int) -> dict:
    from sparkdl.config import PredictConfig
    from sparkdl.infer.predict import predict_images

    start = time.perf_counter()
    r = predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(out), table_uri=table, batch_size=batch,
                                            overwrite=True))  # fmt: skip
    wall = time.perf_counter() - start
    return {"images": r.rows_out, "seconds": round(wall, 3), "images_per_s": round(r.rows_out / wall, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=480)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    from sparkdl.config import SessionConfig
    from sparkdl.session import build_session

    work = Path(tempfile.mkdtemp(prefix="sparkdl-bench-predict-"))
    spark = build_session(SessionConfig(master="local[2]", ui_enabled=False, app_name="bench-predict"))
    try:
        images = make_jpegs(args.images)
        rows = [(f"file:/bench/c{i % 4}/{i}.jpg", f"c{i % 4}", i % 4, "test", images[i]) for i in range(args.images)]
        schema = "path string, label string, label_index int, split string, image binary"
        table, warm = str(work / "images.parquet"), str(work / "warm.parquet")
        spark.createDataFrame(rows, schema).coalesce(1).write.parquet(table)
        spark.createDataFrame(rows[:8], schema).write.parquet(warm)
        model = make_model(work / "model", args.backbone)
        run_featurize(spark, warm, work / "wf.parquet", args.backbone, args.batch_size)  # warm-ups, not reported
        run_predict(spark, warm, work / "wp.parquet", model, args.batch_size)
        runs: dict[str, list[dict]] = {"featurize": [], "predict": []}
        for _ in range(args.repeats):
            runs["featurize"].append(run_featurize(spark, table, work / "f.parquet", args.backbone, args.batch_size))
            runs["predict"].append(run_predict(spark, table, work / "p.parquet", model, args.batch_size))
        med = {k: sorted(r["images_per_s"] for r in v)[len(v) // 2] for k, v in runs.items()}
        report = {
            "benchmark": "predict",
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "backbone": args.backbone, "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats,
            "featurize_images_per_s": med["featurize"], "predict_images_per_s": med["predict"],
            "ratio_predict_to_featurize": round(med["predict"] / med["featurize"], 3),
            "runs": runs,
        }  # fmt: skip
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
