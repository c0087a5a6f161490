"""The pipeline commands: demo | ingest | featurize | train | evaluate | report (Spark, the common options)."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from sparkdl.cli.options import (
    add_mlflow_args, add_train_args, fraction, metrics_rows, positive_int, print_summary, session, split_arg, stage_rows, train_config,
)  # fmt: skip
from sparkdl.config import DEVICES, PRECISIONS, RUNTIMES, FeaturizeConfig, IngestConfig
from sparkdl.errors import ConfigError
from sparkdl.extras import available


def register(sub, common: argparse.ArgumentParser) -> dict:
    """Add the stage commands to ``sub`` (in ``sparkdl --help`` order); return their runners by name."""
    from sparkdl.featurize.backbones import list_backbones

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="end-to-end run on the embedded default (scikit-learn's digits, EfficientNet-Lite0), no download",
        description="Write scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes) as an "
        "image-folder tree, ingest and featurize them with the embedded pretrained EfficientNet-Lite0, train a "
        "softmax head with the parameter-averaging master (or --training-master sharing), evaluate on the test split and write the report, all "
        "on local Spark.",
    )
    demo.add_argument("--workdir", default="sparkdl-work/demo", help="where the demo writes (default sparkdl-work/demo)")
    demo.add_argument("--max-per-class", type=positive_int, default=None, help="use at most N images per class")
    demo.add_argument("--backbone", default="efficientnet_lite0", choices=list_backbones())
    add_train_args(demo)

    ingest = sub.add_parser(
        "ingest",
        parents=[common],
        help="image-folder tree -> images table (path, label, label_index, split, image)",
        description="Read every file below --images with Spark's binaryFile source; label = class folder "
        "(Caltech-256's 001.ak47 -> ak47, index 0). Undecodable files are listed in <output>.rejects.parquet "
        "and counted; the label mapping and counts go to <output>.meta.json.",
    )
    ingest.add_argument("--images", required=True, help="root of the image-folder tree (any Hadoop URI)")
    ingest.add_argument("--output", required=True, help="images table to write, e.g. hdfs://nn:9000/x/images.parquet")
    ingest.add_argument("--split", type=split_arg, default=(0.7, 0.15, 0.15), help="train,valid,test fractions (default 0.7,0.15,0.15)")
    ingest.add_argument("--seed", type=int, default=42, help="seed of the split hash (default 42)")
    ingest.add_argument("--max-reject-fraction", type=fraction, default=0.01, help="fail above this fraction of bad files (default 0.01)")
    ingest.add_argument("--partitions", type=positive_int, default=None, help="repartition the files before decoding")
    ingest.add_argument("--overwrite", action="store_true", help="replace an existing output")

    feat = sub.add_parser(
        "featurize",
        parents=[common],
        help="images table -> features table (path, label, label_index, split, features array<float>)",
        description="Run a frozen pretrained backbone over every image in Spark executors (one model per Python "
        "worker). Undecodable images are listed in <output>.rejects.parquet and counted.",
    )
    feat.add_argument("--input", required=True, help="images table written by `sparkdl ingest`")
    feat.add_argument("--output", required=True, help="features table to write")
    feat.add_argument("--backbone", default="efficientnet_lite0", choices=list_backbones(), help="default efficientnet_lite0 (embedded weights)")
    feat.add_argument("--weights", default=None, help="weights file (.pth/.pt, .safetensors or Keras .h5): a path on the driver or a Hadoop URI")
    feat.add_argument("--random-init", action="store_true", help="seeded random weights, on purpose (timing runs)")
    feat.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    feat.add_argument("--partitions", type=positive_int, default=None, help="partitions to featurize (default: whole waves of the default parallelism, see --max-rows-per-partition)")
    feat.add_argument("--max-rows-per-partition", type=positive_int, default=256, help="upper bound of images per task when --partitions is not given (default 256: several waves, so progress moves and a slow task costs less)")
    feat.add_argument("--threads-per-task", type=positive_int, default=None, help="torch threads per task (default spark.task.cpus)")
    feat.add_argument("--incremental", action="store_true",
                      help="when --output exists and was made the same way (backbone, weights, preprocessing, "
                      "precision): reuse its rows whose (path, content sha256) are unchanged, compute new and changed "
                      "images, drop removed ones; the new table replaces the old one atomically")  # fmt: skip
    feat.add_argument("--precision", choices=PRECISIONS, default="auto",
                      help="auto (default: the backbone's measured fast and faithful choice: fp32 on onnxruntime for "
                      "efficientnet_lite0, bf16 for vgg16), fp32 or bf16; a CPU without bf16 instructions computes fp32 "
                      "and says so")  # fmt: skip
    feat.add_argument("--runtime", choices=RUNTIMES, default="auto",
                      help="auto (default: the measured best for the precision), torch or onnxruntime (fp32 only)")
    feat.add_argument("--device", choices=DEVICES, default="auto",
                      help="auto (default: the GPU Spark assigned the task, spark.task.resource.gpu.amount, else the "
                      "CPU), cpu or cuda")  # fmt: skip
    feat.add_argument("--max-reject-fraction", type=fraction, default=0.01, help="fail above this fraction of bad images (default 0.01)")
    feat.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_mlflow_args(feat)

    train = sub.add_parser(
        "train",
        parents=[common],
        help="features table -> model bundle (head trained across Spark executors)",
        description="Train a softmax/MLP head on split = train with a distributed training master; keep the epoch "
        "with the best valid accuracy; write a model bundle (config.json, head.safetensors, metrics.json, "
        "events.jsonl).",
    )
    train.add_argument("--features", required=True, help="features table written by `sparkdl featurize`")
    train.add_argument("--output", required=True, help="model bundle directory to write: a local path or a Hadoop URI")
    add_train_args(train)
    train.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    train.add_argument("--no-embed-backbone", dest="embed_backbone", action="store_false",
                       help="store the backbone weights file's URI + sha256 in the bundle instead of the converted "
                            "weights (a small bundle; the file must stay readable where the model is used)")  # fmt: skip
    add_mlflow_args(train)

    ev = sub.add_parser(
        "evaluate",
        parents=[common],
        help="metrics of a model bundle on a features table",
        description="Accuracy, top-5, macro precision/recall/F1 and the confusion matrix, computed per partition.",
    )
    ev.add_argument("--model", required=True, help="model bundle directory")
    ev.add_argument("--features", required=True, help="features table")
    ev.add_argument("--split", default="test", help="split to score: train, valid, test or all (default test)")

    rep = sub.add_parser(
        "report",
        parents=[common],
        help="HTML + PNG plots of a training run",
        description="Loss per iteration, accuracy per epoch, phase timings per round and the confusion matrix.",
    )
    rep.add_argument("--model", required=True, help="model bundle directory")
    rep.add_argument("--out", default=None, help="where to write (default <model>/report)")

    return {
        "demo": run_demo,
        "ingest": run_ingest,
        "featurize": run_featurize,
        "train": run_train,
        "evaluate": run_evaluate,
        "report": run_report,
    }


def run_ingest(args, say) -> dict:
    from sparkdl.data.images import ingest_images

    config = IngestConfig(
        images_uri=args.images,
        output_uri=args.output,
        split=args.split,
        seed=args.seed,
        max_reject_fraction=args.max_reject_fraction,
        partitions=args.partitions,
        overwrite=args.overwrite,
    )
    say("ingest: starting Spark")
    result = ingest_images(session(args, say), config, progress=say)
    payload = {**asdict(result), "files_per_second": result.rows_per_second}
    hidden_rows = [("hidden folders", result.hidden_folders.summary())] if result.hidden_folders.names else []
    print_summary(
        "ingest summary",
        [
            *stage_rows(result),
            *hidden_rows,
            ("classes", f"{len(result.labels)} ({result.label_source}) -> {result.meta_uri}"),
            ("time", f"{result.seconds:.1f} s ({result.rows_per_second:.1f} files/s)"),
        ],
        payload,
        args.json,
    )
    return payload


def run_featurize(args, say) -> dict:
    from sparkdl.featurize.featurizer import featurize_images

    config = FeaturizeConfig(
        input_uri=args.input,
        output_uri=args.output,
        backbone=args.backbone,
        weights=args.weights,
        random_init=args.random_init,
        batch_size=args.batch_size,
        partitions=args.partitions,
        max_rows_per_partition=args.max_rows_per_partition,
        threads_per_task=args.threads_per_task,
        max_reject_fraction=args.max_reject_fraction,
        overwrite=args.overwrite,
        incremental=args.incremental,
        precision=args.precision,
        runtime=args.runtime,
        device=args.device,
    )
    say("featurize: starting Spark")
    result = featurize_images(session(args, say), config, progress=say)
    payload = {**asdict(result), "images_per_second": result.rows_per_second}
    print_summary(
        "featurize summary",
        [
            *stage_rows(result),
            ("backbone", f"{result.backbone['name']} ({result.backbone['feature_dim']}-d, {result.backbone['weights']})"),
            ("numerics", _numerics_row(result.backbone["numerics"])),
            *([("incremental", "{reused} reused, {computed} computed ({new} new, {changed} changed), {dropped} dropped"
                .format(**result.incremental))] if result.incremental.get("enabled") else []),
            ("time", f"{result.seconds:.1f} s ({result.rows_per_second:.1f} images/s, {result.partitions} partitions)"),
        ],
        payload,
        args.json,
    )
    return payload


def _numerics_row(numerics: dict) -> str:
    row = f"{numerics['precision']} on {numerics['runtime']} (--device {numerics['device']})"
    return row + (f"; {numerics['fallback_rows']} rows in fp32 (no bf16 on their CPUs)" if numerics["fallback_rows"] else "")


def _failure_row(failure: dict) -> str:
    who = f"rank {failure['rank']}" if failure["rank"] is not None else "a worker"
    where = f" in epoch {failure['epoch'] + 1}" if failure["epoch"] is not None else ""
    then = (f"; went on from epoch {failure['resume_epoch'] + 1} with {failure['workers_after']} workers"
            if failure["resume_epoch"] is not None else "")  # fmt: skip
    return f"{who}{where}: {failure['cause']}{then}"


def run_train(args, say) -> dict:
    from sparkdl.train.run import train_head

    config = train_config(args)
    run = getattr(args, "mlflow_run", None)  # set by sparkdl.cli when --mlflow
    say("train: starting Spark")
    spark = session(args, say)
    result = train_head(spark, args.features, args.output, config, overwrite=args.overwrite, progress=say,
                        embed_backbone=args.embed_backbone, listeners=[run.listener()] if run else ())  # fmt: skip
    if run is not None:
        from sparkdl.tracking import log_bundle

        log_bundle(run, spark, result.model_dir)
        say(f"train: model bundle logged to MLflow run {run.run_id} as artifact 'model'")
    payload = asdict(result)
    print_summary(
        "train summary",
        [
            ("model", result.model_dir),
            ("best epoch", f"{result.best_epoch + 1} of {result.epochs_run}"),
            *metrics_rows(result.metrics),
            ("time", f"{result.seconds:.1f} s ({result.examples_per_second:.0f} examples/s)"),
            *([("resumed", f"from the checkpoint after epoch {result.resumed_from_epoch}")]
              if result.resumed_from_epoch is not None else []),
            *[(f"attempt {f['attempt']} failed", _failure_row(f)) for f in result.failures],
            *[("warning", w) for w in result.warnings],  # also under "warnings" in the --json payload
        ],
        payload,
        args.json,
    )
    return payload


def run_evaluate(args, say) -> dict:
    from sparkdl.train.run import evaluate_model

    split = None if args.split == "all" else args.split
    metrics = evaluate_model(session(args, say), args.model, args.features, split=split)
    payload = {"split": args.split, **metrics.to_json()}
    rows = metrics_rows({args.split: metrics.summary()})
    if len(metrics.confusion) <= 12:
        rows.append(("confusion", "rows = true, columns = predicted"))
        rows += [(f"  {i}", " ".join(f"{v:4d}" for v in row)) for i, row in enumerate(metrics.confusion)]
    print_summary("evaluate summary", rows, payload, args.json)
    return payload


def run_report(args, say) -> dict:
    from sparkdl.data import hadoopfs
    from sparkdl.report import NO_PLOTS_REASON, write_report

    if not hadoopfs.is_local(args.model):
        raise ConfigError(f"report reads a model on the local disk: copy it first, e.g. `sparkdl fs get {args.model} model`")
    page = write_report(args.model, args.out)
    if not available("matplotlib"):
        say(f"report: HTML only, no plots: {NO_PLOTS_REASON}")
    payload = {"report": str(page), "files": sorted(p.name for p in page.parent.iterdir())}
    print_summary("report", [("html", str(page)), ("files", ", ".join(payload["files"]))], payload, args.json)
    return payload


def run_demo(args, say) -> dict:
    from sparkdl.demo import run_demo as demo

    result = demo(
        session(args, say),
        workdir=args.workdir,
        max_per_class=args.max_per_class,
        backbone=args.backbone,
        train_config=train_config(args),
        progress=say,
    )
    print_summary(
        "demo summary (digits -> ingest -> featurize -> train -> evaluate -> report -> predict)",
        [
            ("image folders", result["images_dir"]),
            ("images table", f"{result['ingest']['output_uri']} ({result['ingest']['rows_out']} rows)"),
            ("features table", f"{result['featurize']['output_uri']} ({result['featurize']['rows_out']} x {result['featurize']['backbone']['feature_dim']})"),
            ("featurize speed", f"{result['featurize']['images_per_second']:.1f} images/s"),
            ("model", result["train"]["model_dir"]),
            *metrics_rows(result["train"]["metrics"]),
            ("training", f"{result['train']['seconds']:.1f} s, best epoch {result['train']['best_epoch'] + 1} of {result['train']['epochs_run']}"),
            ("report", result["report"]),
            ("predicted", f"{len(result['predictions'])} held-out test images with `sparkdl predict` -> {result['predict']['output_uri']}"),
            *[(f"  {p['file']}", f"{p['prediction']} ({p['probability']:.2f}), true {p['label']}") for p in result["predictions"]],
        ],
        result,
        args.json,
    )
    return result
