"""``sparkdl predict``: a model bundle over images on Spark, batch or streaming."""
from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import asdict

from sparkdl.cli.options import add_mlflow_args, fraction, positive_int, print_summary, session, stage_rows


def register(sub, common) -> dict:
    p = sub.add_parser(
        "predict",
        parents=[common],
        help="model bundle + images -> predictions table (batch, or --stream over a folder receiving images)",
        description="Decode every image, run the bundle's backbone and head in one pass on the executors and write "
        "path, prediction, prediction_index, probability, top_k (plus label, label_index, split when the input has "
        "them; the summary prints accuracy then). Undecodable images are listed in <output>.rejects.parquet. "
        "With --stream: a Structured Streaming query over a folder (or a table another job appends to), a file "
        "sink with --checkpoint, every image predicted exactly once across restarts; rejected images are rows of "
        "the output with reject_reason set.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", default=None, help="folder of images, read recursively (any Hadoop URI)")
    source.add_argument("--table", default=None, help="images table (`sparkdl ingest`'s, or any with path + image)")
    p.add_argument("--model", required=True, help="model bundle directory written by `sparkdl train` (local or Hadoop URI)")
    p.add_argument("--output", required=True, help="predictions table to write")
    p.add_argument("--top-k", type=positive_int, default=5, help="labels kept per image in top_k (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--partitions", type=positive_int, default=None, help="partitions to predict (default: whole waves of the default parallelism)")
    p.add_argument("--max-rows-per-partition", type=positive_int, default=256, help="upper bound of images per task (default 256)")
    p.add_argument("--threads-per-task", type=positive_int, default=None, help="torch threads per task (default spark.task.cpus)")
    p.add_argument("--max-reject-fraction", type=fraction, default=0.01, help="fail above this fraction of bad images (default 0.01; batch only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing predictions table (batch only)")
    p.add_argument("--stream", action="store_true", help="run as a streaming query (needs --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="--stream: where Spark keeps the query's progress (any Hadoop URI)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--trigger", default=None, metavar="INTERVAL",
                      help="--stream: run a micro-batch every INTERVAL (e.g. 10s) until stopped (SIGTERM / Ctrl-C)")  # fmt: skip
    when.add_argument("--available-now", action="store_true",
                      help="--stream: process every image there now, then stop (the default with --stream)")  # fmt: skip
    p.add_argument("--max-files-per-trigger", type=positive_int, default=None, help="--stream: files per micro-batch")
    add_mlflow_args(p)
    return {"predict": run_predict}


def _config(args):
    from sparkdl.config import PredictConfig

    return PredictConfig(
        model_uri=args.model, output_uri=args.output, images_uri=args.images, table_uri=args.table, top_k=args.top_k,
        batch_size=args.batch_size, partitions=args.partitions, max_rows_per_partition=args.max_rows_per_partition,
        threads_per_task=args.threads_per_task, max_reject_fraction=args.max_reject_fraction, overwrite=args.overwrite,
        stream=args.stream, checkpoint_uri=args.checkpoint, trigger=args.trigger,
        max_files_per_trigger=args.max_files_per_trigger,
    )  # fmt: skip


def run_predict(args: argparse.Namespace, say) -> dict:
    config = _config(args)
    if config.stream:
        return _run_stream(args, config, say)
    from sparkdl.infer.predict import predict_images

    say("predict: starting Spark")
    result = predict_images(session(args, say), config, progress=say)
    payload = {**asdict(result), "images_per_second": result.rows_per_second}
    rows = [*stage_rows(result), ("model", f"{config.model_uri} (sha256 {result.model_sha256[:16]}…, {len(result.labels)} labels)")]
    rows += [(f"accuracy {k}", f"{v:.4f}") for k, v in result.accuracy.items()]
    rows.append(("time", f"{result.seconds:.1f} s ({result.rows_per_second:.1f} images/s, {result.partitions} partitions)"))
    print_summary("predict summary", rows, payload, args.json)
    return payload


def _run_stream(args, config, say) -> dict:
    from sparkdl.infer.predict import start_stream

    say("predict: starting Spark")
    handle = start_stream(session(args, say), config, progress=say)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if threading.current_thread() is threading.main_thread() else None
    try:
        while not stop.is_set():
            if handle.query.awaitTermination(1.0):  # available-now: ends by itself; a failed query raises here
                break
    except KeyboardInterrupt:
        say("predict: interrupted: stopping the query (its checkpoint keeps what was done)")
    finally:
        progress = list(handle.query.recentProgress or [])
        handle.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    rows_in = sum(int(p.get("numInputRows", 0)) for p in progress)
    payload = {"output_uri": config.output_uri, "checkpoint_uri": config.checkpoint_uri, "micro_batches": len(progress),
               "images": rows_in}  # fmt: skip
    print_summary("predict (stream) summary", [("output", config.output_uri), ("checkpoint", config.checkpoint_uri),
                                               ("micro-batches", len(progress)), ("images", rows_in)], payload, args.json)  # fmt: skip
    return payload
