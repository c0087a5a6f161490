"""``sparkdl`` command line: demo | ingest | featurize | train | evaluate | report | fs.

The only place (with ``jobs/``) that reads argv and the environment. Progress lines go to stderr, the final summary
to stdout (``--json`` for a machine-readable one). Errors: one line on stderr, exit code 1 (2 for usage errors).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from typing import Sequence

from sparkdl.config import (
    FeaturizeConfig, HeadConfig, IngestConfig, OptimizerConfig, SessionConfig, SharingConfig, TrainConfig,
    TransportConfig,
)  # fmt: skip
from sparkdl.errors import ConfigError, SparkDLError


class _Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.start = time.perf_counter()
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


def _split_arg(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split takes three comma-separated fractions like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--split takes three fractions (train,valid,test), got {len(parts)}")
    return parts  # type: ignore[return-value]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {value}")
    return value


def build_parser(job: bool = False) -> argparse.ArgumentParser:
    """The ``sparkdl`` parser; ``job=True`` names each command ``spark-submit jobs/<command>.py`` in its usage."""
    from sparkdl.featurize.backbones import list_backbones

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--spark-master",
        default=None,
        help="Spark master URL (default: the one given to spark-submit, else local[*])",
    )
    common.add_argument("--driver-memory", default="2g", help="driver JVM heap for local masters (default 2g)")
    common.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    common.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    parser = argparse.ArgumentParser(
        prog="sparkdl",
        description="Transfer learning on Apache Spark: ingest image folders, featurize with a frozen CNN, "
        "train a PyTorch head across executors.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if job:
        add_parser = sub.add_parser
        sub.add_parser = lambda name, **kw: add_parser(name, prog=f"spark-submit jobs/{name}.py", **kw)  # type: ignore[method-assign]

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="end-to-end run on the embedded default (scikit-learn's digits, EfficientNet-Lite0), no download",
        description="Write scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes) as an "
        "image-folder tree, ingest and featurize them with the embedded pretrained EfficientNet-Lite0, train a "
        "softmax head with the parameter-averaging master (or --master sharing), evaluate on the test split and write the report, all "
        "on local Spark.",
    )
    demo.add_argument("--workdir", default="sparkdl-work/demo", help="where the demo writes (default sparkdl-work/demo)")
    demo.add_argument("--max-per-class", type=_positive_int, default=None, help="use at most N images per class")
    demo.add_argument("--backbone", default="efficientnet_lite0", choices=list_backbones())
    _add_train_args(demo)

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
    ingest.add_argument("--split", type=_split_arg, default=(0.7, 0.15, 0.15), help="train,valid,test fractions (default 0.7,0.15,0.15)")
    ingest.add_argument("--seed", type=int, default=42, help="seed of the split hash (default 42)")
    ingest.add_argument("--max-reject-fraction", type=_fraction, default=0.01, help="fail above this fraction of bad files (default 0.01)")
    ingest.add_argument("--partitions", type=_positive_int, default=None, help="repartition the files before decoding")
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
    feat.add_argument("--batch-size", type=_positive_int, default=32, help="images per forward pass (default 32)")
    feat.add_argument("--partitions", type=_positive_int, default=None, help="partitions to featurize (default: whole waves of the default parallelism, see --max-rows-per-partition)")
    feat.add_argument("--max-rows-per-partition", type=_positive_int, default=2048, help="upper bound of images per task when --partitions is not given (default 2048)")
    feat.add_argument("--threads-per-task", type=_positive_int, default=None, help="torch threads per task (default spark.task.cpus)")
    feat.add_argument("--max-reject-fraction", type=_fraction, default=0.01, help="fail above this fraction of bad images (default 0.01)")
    feat.add_argument("--overwrite", action="store_true", help="replace an existing output")
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
    _add_train_args(train)
    train.add_argument("--overwrite", action="store_true", help="replace an existing model directory")

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

    fs_common = argparse.ArgumentParser(add_help=False)
    fs_common.add_argument("--webhdfs", default=None, metavar="URL",
                           help="NameNode HTTP endpoint, e.g. http://nn:9870 (default: dfs.namenode.http-address "
                                "from $HADOOP_CONF_DIR/hdfs-site.xml, else the URI's host on port 9870)")  # fmt: skip
    fs_common.add_argument("--user", default=None, help="Hadoop user (default $HADOOP_USER_NAME, else the OS user)")
    for flag in ("--json", "--quiet", "--debug"):
        fs_common.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    fs = sub.add_parser(
        "fs",
        help="HDFS outside Spark over WebHDFS: put, get, ls, exists, mkdir",
        description="Copy a local dataset or weights file to HDFS before a job, list, fetch results, check a path; "
        "over WebHDFS (no JVM, no Spark). URIs are hdfs://NAMENODE:PORT/path. Uploads appear complete or not at all.",
    )
    fs_sub = fs.add_subparsers(dest="fs_command", required=True, metavar="ACTION")
    put = fs_sub.add_parser("put", parents=[fs_common], help="upload a local file or directory tree")
    put.add_argument("local")
    put.add_argument("uri")
    put.add_argument("--overwrite", action="store_true")
    put.add_argument("--threads", type=_positive_int, default=16,
                     help="files in flight at once (many small files are latency-bound; default %(default)s)")
    get = fs_sub.add_parser("get", parents=[fs_common], help="download a file or directory tree")
    get.add_argument("uri")
    get.add_argument("local")
    get.add_argument("--overwrite", action="store_true")
    ls = fs_sub.add_parser("ls", parents=[fs_common], help="list a directory")
    ls.add_argument("uri")
    ex = fs_sub.add_parser("exists", parents=[fs_common], help="exit 0 if the path exists, 1 if not")
    ex.add_argument("uri")
    mk = fs_sub.add_parser("mkdir", parents=[fs_common], help="create a directory and its parents")
    mk.add_argument("uri")
    return parser


def _add_train_args(p: argparse.ArgumentParser, epochs: int = 10) -> None:
    p.add_argument(
        "--master",
        dest="training_master",
        default="averaging",
        choices=["averaging", "sharing"],
        help="averaging: parameter averaging (DL4J ParameterAveragingTrainingMaster); sharing: threshold-quantized "
        "gradient sharing over a tree of workers (Strom 2015, DL4J SharedTrainingMaster) (default averaging)",
    )
    p.add_argument("--workers", type=_positive_int, default=2, help="data-parallel workers (default 2)")
    p.add_argument("--epochs", type=_positive_int, default=epochs, help=f"epochs (default {epochs})")
    p.add_argument("--batch-size-per-worker", type=_positive_int, default=16, help="minibatch per worker (default 16)")
    p.add_argument("--averaging-frequency", type=_positive_int, default=5, help="minibatches between averagings (default 5)")
    p.add_argument(
        "--execution",
        default="barrier",
        choices=["barrier", "rounds"],
        help="barrier: the whole fit in one Spark barrier stage, workers averaging among themselves over --transport "
        "(fast); rounds: one Spark job per averaging round, a lost task retried alone (default barrier)",
    )
    p.add_argument("--aggregation-depth", type=_positive_int, default=2, help="treeAggregate depth, --execution rounds (default 2)")
    p.add_argument("--tree-fanout", type=_positive_int, default=8, help="children per worker in the tree workers sum over (default 8)")
    p.add_argument(
        "--transport",
        default="grpc",
        choices=["grpc", "aeron"],
        help="how barrier workers talk: grpc (default); aeron is refused with the reason (no binding on Python 3.11)",
    )
    p.add_argument(
        "--threshold",
        default="adaptive",
        help="sharing: adaptive[:T0] (keep 1e-4..1e-2 of the entries sent), fixed:T or target-sparsity:S (default adaptive)",
    )
    p.add_argument("--residual-clip", default="5:5", help="sharing: clip the residual to +-k x tau every n steps, k:n (default 5:5; k:0 never)")
    p.add_argument("--staleness", type=int, default=0, help="sharing: 0 synchronous and deterministic; k > 0 up to k steps ahead (default 0)")
    p.add_argument("--head", default="softmax", help="softmax or mlp:H1,H2,... (default softmax)")
    p.add_argument("--dropout", type=_fraction, default=0.0, help="dropout after each hidden layer of an mlp head")
    p.add_argument("--optimizer", default="nesterov", choices=["sgd", "nesterov", "adam"], help="default nesterov")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    p.add_argument("--momentum", type=_fraction, default=0.9, help="momentum for sgd/nesterov (default 0.9)")
    p.add_argument(
        "--average-updater-state",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average the optimizer state (momentum, Adam moments) with the parameters (default on)",
    )
    p.add_argument("--early-stopping-patience", type=_positive_int, default=None, help="stop after N epochs without a better valid accuracy")
    p.add_argument("--seed", type=int, default=42, help="head init, shuffling and dropout seed (default 42)")
    p.add_argument("--score-every", type=int, default=0, help="print the training loss every N averaging rounds (default: per epoch only)")


def _train_config(args) -> TrainConfig:
    return TrainConfig(
        master=args.training_master,
        workers=args.workers,
        epochs=args.epochs,
        batch_size_per_worker=args.batch_size_per_worker,
        averaging_frequency=args.averaging_frequency,
        aggregation_depth=args.aggregation_depth,
        average_updater_state=args.average_updater_state,
        head=HeadConfig.parse(args.head, dropout=args.dropout),
        optimizer=OptimizerConfig(name=args.optimizer, lr=args.lr, momentum=args.momentum if args.optimizer != "adam" else 0.0),
        seed=args.seed,
        early_stopping_patience=args.early_stopping_patience,
        score_every=args.score_every,
        execution=args.execution,
        tree_fanout=args.tree_fanout,
        transport=TransportConfig(name=args.transport),
        sharing=_sharing_config(args),
    )


def _sharing_config(args) -> SharingConfig:
    k, every = SharingConfig.parse_clip(args.residual_clip)
    return SharingConfig(threshold=args.threshold, residual_clip_k=k, residual_clip_every=every, staleness=args.staleness)


def _session(args):
    from sparkdl.session import build_session

    return build_session(SessionConfig(master=args.spark_master, driver_memory=args.driver_memory))


def _fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "none"


def _print_summary(title: str, rows: list[tuple[str, object]], payload: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return
    print(title)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def _stage_rows(result) -> list[tuple[str, object]]:
    """The summary lines every table-writing stage shares (a ``StageResult``)."""
    return [
        ("output", result.output_uri),
        ("rows in / out", f"{result.rows_in} / {result.rows_out}"),
        ("rejected", f"{result.rows_in - result.rows_out} ({_fmt_counts(result.rejects)}) -> {result.rejects_uri}"),
        ("splits", _fmt_counts(result.split_counts)),
    ]


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
    result = ingest_images(_session(args), config, progress=say)
    payload = {**asdict(result), "files_per_second": result.rows_per_second}
    hidden_rows = [("hidden folders", result.hidden_folders.summary())] if result.hidden_folders.names else []
    _print_summary(
        "ingest summary",
        [
            *_stage_rows(result),
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
    )
    say("featurize: starting Spark")
    result = featurize_images(_session(args), config, progress=say)
    payload = {**asdict(result), "images_per_second": result.rows_per_second}
    _print_summary(
        "featurize summary",
        [
            *_stage_rows(result),
            ("backbone", f"{result.backbone['name']} ({result.backbone['feature_dim']}-d, {result.backbone['weights']})"),
            ("time", f"{result.seconds:.1f} s ({result.rows_per_second:.1f} images/s, {result.partitions} partitions)"),
        ],
        payload,
        args.json,
    )
    return payload


def _metrics_rows(metrics: dict) -> list[tuple[str, object]]:
    return [
        (split, f"accuracy {m['accuracy']:.4f}  top-5 {m['top5']:.4f}  macro P/R/F1 "
                f"{m['macro_precision']:.4f}/{m['macro_recall']:.4f}/{m['macro_f1']:.4f}  (n={m['n']})")
        for split, m in metrics.items()
    ]  # fmt: skip


def run_train(args, say) -> dict:
    from sparkdl.train.run import train_head

    config = _train_config(args)
    say("train: starting Spark")
    result = train_head(_session(args), args.features, args.output, config, overwrite=args.overwrite, progress=say)
    payload = asdict(result)
    _print_summary(
        "train summary",
        [
            ("model", result.model_dir),
            ("best epoch", f"{result.best_epoch + 1} of {result.epochs_run}"),
            *_metrics_rows(result.metrics),
            ("time", f"{result.seconds:.1f} s ({result.examples_per_second:.0f} examples/s)"),
            *[("warning", w) for w in result.warnings],  # also under "warnings" in the --json payload
        ],
        payload,
        args.json,
    )
    return payload


def run_evaluate(args, say) -> dict:
    from sparkdl.train.run import evaluate_model

    split = None if args.split == "all" else args.split
    metrics = evaluate_model(_session(args), args.model, args.features, split=split)
    payload = {"split": args.split, **metrics.to_json()}
    rows = _metrics_rows({args.split: metrics.summary()})
    if len(metrics.confusion) <= 12:
        rows.append(("confusion", "rows = true, columns = predicted"))
        rows += [(f"  {i}", " ".join(f"{v:4d}" for v in row)) for i, row in enumerate(metrics.confusion)]
    _print_summary("evaluate summary", rows, payload, args.json)
    return payload


def run_report(args, say) -> dict:
    from sparkdl.data import hadoopfs
    from sparkdl.report import write_report

    if not hadoopfs.is_local(args.model):
        raise ConfigError(f"report reads a model on the local disk: copy it first, e.g. `sparkdl fs get {args.model} model`")
    page = write_report(args.model, args.out)
    payload = {"report": str(page), "files": sorted(p.name for p in page.parent.iterdir())}
    _print_summary("report", [("html", str(page)), ("files", ", ".join(payload["files"]))], payload, args.json)
    return payload


def run_demo(args, say) -> dict:
    from sparkdl.demo import run_demo as demo

    result = demo(
        _session(args),
        workdir=args.workdir,
        max_per_class=args.max_per_class,
        backbone=args.backbone,
        train_config=_train_config(args),
        progress=say,
    )
    _print_summary(
        "demo summary (digits -> ingest -> featurize -> train -> evaluate -> report)",
        [
            ("image folders", result["images_dir"]),
            ("images table", f"{result['ingest']['output_uri']} ({result['ingest']['rows_out']} rows)"),
            ("features table", f"{result['featurize']['output_uri']} ({result['featurize']['rows_out']} x {result['featurize']['backbone']['feature_dim']})"),
            ("featurize speed", f"{result['featurize']['images_per_second']:.1f} images/s"),
            ("model", result["train"]["model_dir"]),
            *_metrics_rows(result["train"]["metrics"]),
            ("training", f"{result['train']['seconds']:.1f} s, best epoch {result['train']['best_epoch'] + 1} of {result['train']['epochs_run']}"),
            ("report", result["report"]),
        ],
        result,
        args.json,
    )
    return result


class _Absent(Exception):
    """``sparkdl fs exists`` on a missing path: exit code 1, no error line."""


def run_fs(args, say) -> dict:
    from sparkdl.data.webhdfs import WebHdfs, WebHdfsConfig

    client, path = WebHdfs.for_uri(args.uri, WebHdfsConfig(url=args.webhdfs, user=args.user))
    action = args.fs_command
    if action == "put":
        say(f"fs: uploading {args.local} to {args.uri} as {client.user} via {client.url}")
        t0 = time.perf_counter()
        sent = client.upload(args.local, path, overwrite=args.overwrite, threads=args.threads)
        payload = {"uri": args.uri, "bytes": sent, "seconds": round(time.perf_counter() - t0, 3)}
        rows = [("uploaded", f"{args.local} -> {args.uri}"), ("bytes", sent), ("time", f"{payload['seconds']:.1f} s")]
    elif action == "get":
        local = client.download(path, args.local, overwrite=args.overwrite)
        payload = {"uri": args.uri, "local": str(local)}
        rows = [("downloaded", f"{args.uri} -> {local}")]
    elif action == "ls":
        entries = client.list(path)
        payload = {"uri": args.uri, "entries": entries}
        if args.json:
            print(json.dumps(payload, indent=2, sort_keys=True))
        else:
            for e in entries:
                kind = "d" if e["type"] == "DIRECTORY" else "-"
                print(f"{kind}{e['permission']:>4} {e['owner']:<10} {e['length']:>12} {e['name']}")
        return payload
    elif action == "exists":
        found = client.exists(path)
        payload = {"uri": args.uri, "exists": found}
        if args.json:
            print(json.dumps(payload))
        if not found:
            raise _Absent()
        return payload
    else:
        client.makedirs(path)
        payload = {"uri": args.uri}
        rows = [("created", args.uri)]
    _print_summary(f"fs {action}", rows, payload, args.json)
    return payload


COMMANDS = {
    "ingest": run_ingest,
    "featurize": run_featurize,
    "train": run_train,
    "evaluate": run_evaluate,
    "report": run_report,
    "demo": run_demo,
    "fs": run_fs,
}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Errors raised in a Spark worker arrive wrapped with the worker's traceback: the cause is its last line.
    first = lines[-1] if "Traceback (most recent call last)" in text else lines[0]
    return first if isinstance(exc, SparkDLError) else f"{type(exc).__name__}: {first}"


def main(argv: Sequence[str] | None = None, job: bool = False) -> int:
    """``job=True``: called by a ``jobs/<command>.py`` entry point (usage lines name the job)."""
    parser = build_parser(job=job)
    args = parser.parse_args(argv)
    say = _Progress(quiet=args.quiet)
    try:
        COMMANDS[args.command](args, say)
    except _Absent:
        return 1
    except KeyboardInterrupt:
        print("sparkdl: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for users; --debug for the traceback
        if args.debug:
            raise
        print(f"sparkdl {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
