"""``sparkdl serve``: a model bundle behind HTTP with micro-batching (``sparkdl.infer.serve``)."""
from __future__ import annotations

import argparse

from sparkdl.cli.options import positive_int, print_summary


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, got 0")
    return value


def register(sub, common: argparse.ArgumentParser) -> dict:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve a model bundle over HTTP (predictions with micro-batching, health, metrics)",
        description="Serve a model bundle over HTTP until SIGTERM/SIGINT (then finish the requests in flight and exit "
        "0). POST /v1/predict takes one image as the raw body (Content-Type image/* or application/octet-stream; "
        "?top_k=N), POST /v1/predict/batch a multipart/form-data of images (one result per part, a bad part is an "
        "error item); GET /v1/model, /healthz (alive), /readyz (model loaded), /metrics (Prometheus). Concurrent "
        "requests are batched into one forward pass. Bad input is a 4xx with {\"error\": {\"reason\", \"detail\"}}. "
        "Needs the serve extra: pip install 'sparkdl-torch[serve]'.",
    )
    p.add_argument("--model", required=True,
                   help="model bundle written by `sparkdl train`: a local directory, or a Hadoop URI (copied to the "
                        "local disk once with a short-lived SparkSession, see --spark-master)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this host only; 0.0.0.0 to accept other hosts, "
                        "e.g. in a container — then set --token-file)")  # fmt: skip
    p.add_argument("--port", type=_port, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    p.add_argument("--max-batch", type=positive_int, default=32, help="most images per forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=_non_negative, default=5.0,
                   help="how long a batch waits for more images after its first one arrived, in ms (default 5; "
                        "0: never wait, batch only what is already queued)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1,
                   help="server processes, each with its own copy of the model and its share of the cores "
                        "(default 1: one process whose torch threads use every core)")  # fmt: skip
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="require 'Authorization: Bearer <token>' with the token in FILE (>= 16 printable "
                        "characters) on every endpoint except /healthz and /readyz (default: no auth)")  # fmt: skip
    p.add_argument("--max-body-mb", type=_positive, default=20.0,
                   help="largest request body in MiB; larger ones get 413 (default 20)")  # fmt: skip
    p.add_argument("--max-parts", type=positive_int, default=256, help="most images in one /v1/predict/batch request (default 256)")
    p.add_argument("--max-image-pixels", type=positive_int, default=89_478_485,
                   help="refuse (400 too_large) an image whose header declares more pixels, before decoding it "
                        "(default 89478485, Pillow's warning limit; JPEGs decode at up to 1/8 scale and get 64x)")  # fmt: skip
    p.add_argument("--top-k", type=positive_int, default=5, dest="default_top_k",
                   help="classes listed per answer when the request gives no ?top_k= (default 5)")  # fmt: skip
    p.add_argument("--shutdown-timeout", type=_positive, default=30.0,
                   help="seconds the requests in flight may take after SIGTERM before being cancelled (default 30)")  # fmt: skip
    p.add_argument("--no-access-log", dest="access_log", action="store_false", help="no line per request on stderr")
    return {"serve": run_serve}


def _stop_spark(spark) -> None:
    """Stop the session and end its JVM too (a long-running server should not keep an idle JVM's memory): PySpark's
    gateway JVM exits when its stdin pipe closes. Under spark-submit the JVM is not ours (no ``proc``) and stays."""
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is None or proc is None:
        return
    try:
        gateway.shutdown()
    except Exception:  # noqa: BLE001 - the JVM ends below either way
        pass
    SparkContext._gateway = SparkContext._jvm = None
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except Exception:  # noqa: BLE001
        proc.kill()


def run_serve(args, say) -> dict:
    from sparkdl.data import hadoopfs
    from sparkdl.errors import ConfigError

    try:
        from sparkdl.infer.serve import ServeConfig, resolve_model, serve
    except ImportError as exc:
        raise ConfigError(f"`sparkdl serve` needs the serve extra ({exc.name} is missing): pip install 'sparkdl-torch[serve]'") from None
    config = ServeConfig(
        model=args.model, host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        workers=args.workers, token_file=args.token_file, max_body_mb=args.max_body_mb, max_parts=args.max_parts,
        max_image_pixels=args.max_image_pixels, default_top_k=args.default_top_k, shutdown_timeout_s=args.shutdown_timeout,
        log_level="warning" if args.quiet else "info", access_log=args.access_log and not args.quiet,
    )  # fmt: skip
    config.token()  # a bad token file fails before the model is read
    spec = scratch = None
    if not hadoopfs.is_local(args.model):
        from sparkdl.cli.options import session

        say(f"serve: copying {args.model} to the local disk with Spark")
        spark = session(args)
        try:
            spec, scratch = resolve_model(args.model, spark)
        finally:
            _stop_spark(spark)
    try:
        payload = serve(config, spec=spec, progress=say)
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    print_summary("serve: stopped", [("url", payload["url"]), ("model", payload["model_sha256"]),
                                      ("served for", f"{payload['seconds']:.1f} s")], payload, args.json)  # fmt: skip
    return payload
