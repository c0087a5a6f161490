"""``sparkdl serve``: a model bundle behind HTTP (Starlette app on uvicorn) with a micro-batcher.

Request path: the handler (event loop) checks auth, method, media type and size while streaming the body; decoding
runs in Starlette's threadpool (``ImageClassifier.decode``: ingest's decoder and the features' preprocessing); the
decoded array goes to the :class:`MicroBatcher`, whose single thread stacks up to ``max_batch`` arrays (waiting at
most ``max_wait_ms`` after the first one arrived, and only while other images are being decoded) and runs one
forward pass; the handler awaits a future the batcher
resolves through ``loop.call_soon_threadsafe``, so a slow batch never blocks the event loop. The classifier is used
only by that thread (it is not thread-safe); torch's own threads use the cores.

Errors are JSON ``{"error": {"reason", "detail"}}``: undecodable input is a 400 with ingest's reject reason
(``sparkdl.data.decode``), never a 500; a 500 (``internal_error``) means a bug or a broken model, and is counted.

Endpoints: ``POST /v1/predict`` (raw image body), ``POST /v1/predict/batch`` (multipart/form-data, one result per
part), ``GET /v1/model``, ``GET /healthz`` (live), ``GET /readyz`` (model loaded and not draining), ``GET /metrics``
(Prometheus text format). With a token, every path but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer``.
"""
from __future__ import annotations

import asyncio
import hmac
import io
import logging
import math
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Union

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sparkdl.data.decode import TOO_LARGE
from sparkdl.errors import ConfigError, DataError
from sparkdl.infer.classifier import ClassifierSpec, ImageClassifier, Reject

__all__ = ["ServeConfig", "build_app", "serve", "resolve_model", "MicroBatcher", "Metrics"]

log = logging.getLogger("uvicorn.error")  # uvicorn configures it: our lines look like the server's

OPEN_PATHS = ("/healthz", "/readyz")  # never behind the token: probes carry no credentials
ROUTES = ("/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz", "/readyz", "/metrics")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class ServeConfig:
    """How to serve a model bundle. ``port=0`` binds an ephemeral port (``serve`` reports the one bound)."""

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # images per forward pass
    max_wait_ms: float = 5.0  # how long the batcher waits for more after the first image of a batch arrived
    workers: int = 1  # server processes, each with its own model and batcher
    token_file: str | None = None  # a file holding the bearer token; None: no auth
    max_body_mb: float = 20.0  # request body limit (413 above it), enforced while streaming
    max_parts: int = 256  # images per /v1/predict/batch request
    max_queue: int = 1024  # images waiting for the batcher before requests get 503 overloaded
    max_image_pixels: int = 89_478_485  # width x height above which an image is too_large before decoding
    default_top_k: int = 5  # when a request gives no top_k (capped to the number of classes)
    shutdown_timeout_s: float = 30.0  # after SIGTERM: how long in-flight requests may take before being cancelled
    log_level: str = "info"
    access_log: bool = True

    def __post_init__(self) -> None:
        _require(isinstance(self.model, str) and self.model.strip() != "", "model must be a bundle path or Hadoop URI")
        _require(isinstance(self.host, str) and self.host.strip() != "", "host must not be empty")
        _require(isinstance(self.port, int) and 0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port!r}")
        _require(isinstance(self.max_batch, int) and 1 <= self.max_batch <= 4096, f"max_batch must be in 1..4096, got {self.max_batch!r}")
        _require(_finite(self.max_wait_ms) and 0 <= self.max_wait_ms <= 10_000, f"max_wait_ms must be in 0..10000, got {self.max_wait_ms!r}")
        _require(isinstance(self.workers, int) and 1 <= self.workers <= 64, f"workers must be in 1..64, got {self.workers!r}")
        _require(self.token_file is None or (isinstance(self.token_file, str) and self.token_file != ""), "token_file must be a path or None")
        _require(_finite(self.max_body_mb) and 0 < self.max_body_mb <= 4096, f"max_body_mb must be in (0, 4096], got {self.max_body_mb!r}")
        _require(isinstance(self.max_parts, int) and self.max_parts >= 1, f"max_parts must be a positive integer, got {self.max_parts!r}")
        _require(isinstance(self.max_queue, int) and self.max_queue >= 1, f"max_queue must be a positive integer, got {self.max_queue!r}")
        _require(isinstance(self.max_image_pixels, int) and self.max_image_pixels >= 1, f"max_image_pixels must be a positive integer, got {self.max_image_pixels!r}")
        _require(isinstance(self.default_top_k, int) and self.default_top_k >= 1, f"default_top_k must be a positive integer, got {self.default_top_k!r}")
        _require(_finite(self.shutdown_timeout_s) and self.shutdown_timeout_s > 0, f"shutdown_timeout_s must be > 0, got {self.shutdown_timeout_s!r}")
        _require(self.log_level in _LOG_LEVELS, f"log_level must be one of {', '.join(_LOG_LEVELS)}, got {self.log_level!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def token(self) -> bytes | None:
        """The bearer token from ``token_file`` (surrounding whitespace stripped), or None without a file."""
        if self.token_file is None:
            return None
        try:
            token = Path(self.token_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {self.token_file}: {exc.strerror or exc}") from None
        _require(len(token) >= 16, f"the token in {self.token_file} is {len(token)} bytes: use at least 16 (e.g. `openssl rand -hex 32`)")
        _require(all(33 <= b < 127 for b in token), f"the token in {self.token_file} must be printable ASCII without spaces")
        return token


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- errors ----------------------------------------------------------------------------------------------------------


class ApiError(Exception):
    """A 4xx/5xx answer with ``{"error": {"reason", "detail"}}``."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict | None = None) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers


def _error(status: int, reason: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"reason": reason, "detail": detail}}, status_code=status, headers=headers)


# -- metrics (Prometheus text exposition format 0.0.4, written here: four metric kinds, no global registry) ----------


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    return "+Inf" if x == math.inf else repr(float(x)) if not float(x).is_integer() else str(int(x))


class _Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names, self.values = name, help, labels, {}

    def inc(self, *labels, by: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + by

    def render(self, kind: str = "counter") -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {kind}"]
        out += [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in sorted(self.values.items())]
        return out


class _Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, labels
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self.series: dict[tuple, list] = {}  # labels -> [bucket counts (not cumulative)..., sum, count]

    def observe(self, value: float, *labels) -> None:
        s = self.series.setdefault(labels, [0] * len(self.buckets) + [0.0, 0])
        for i, b in enumerate(self.buckets):
            if value <= b:
                s[i] += 1
                break
        s[-2] += value
        s[-1] += 1

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, s in sorted(self.series.items()):
            cumulative = 0
            for b, c in zip(self.buckets, s):
                cumulative += c
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {cumulative}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {s[-1]}")
        return out


class Metrics:
    """The server's metrics (thread-safe: handlers and the batcher thread both record)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = _Counter("sparkdl_serve_requests_total", "HTTP requests answered, by route and status.", ("route", "status"))
        self.rejects = _Counter("sparkdl_serve_rejects_total", "Images refused (400 or a batch part's error), by reason.", ("reason",))
        self.errors = _Counter("sparkdl_serve_internal_errors_total", "Unexpected exceptions answered with a 500, by route.", ("route",))
        self.images = _Counter("sparkdl_serve_images_total", "Images through the network.")
        self.latency = _Histogram("sparkdl_serve_request_duration_seconds", "Request latency, by route.",
                                  (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), ("route",))  # fmt: skip
        self.batch_size = _Histogram("sparkdl_serve_batch_size", "Images per forward pass.", (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
        self.batch_seconds = _Histogram("sparkdl_serve_batch_duration_seconds", "Forward pass time per batch.",
                                        (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))  # fmt: skip
        self.queue_wait = _Histogram("sparkdl_serve_queue_wait_seconds", "Time an image waited for its batch to start.",
                                     (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))  # fmt: skip
        self.ready = 0
        self.model: tuple[str, str] | None = None  # (sha256, backbone)

    def record(self, fn: Callable[[], None]) -> None:
        with self._lock:
            fn()

    def request(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests.inc(route, str(status))
            self.latency.observe(seconds, route)

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejects.inc(reason)

    def render(self) -> str:
        with self._lock:
            lines = []
            for metric in (self.requests, self.rejects, self.errors, self.images):
                lines += metric.render()
            for hist in (self.latency, self.batch_size, self.batch_seconds, self.queue_wait):
                lines += hist.render()
            lines += ["# HELP sparkdl_serve_ready 1 when the model is loaded and the server is not draining.",
                      "# TYPE sparkdl_serve_ready gauge", f"sparkdl_serve_ready {self.ready}"]  # fmt: skip
            if self.model:
                lines += ["# HELP sparkdl_serve_model_info The model served.", "# TYPE sparkdl_serve_model_info gauge",
                          f"sparkdl_serve_model_info{_labels(('sha256', 'backbone'), self.model)} 1"]  # fmt: skip
        return "\n".join(lines) + "\n"


# -- micro-batcher ---------------------------------------------------------------------------------------------------


class Overloaded(Exception):
    pass


class Closed(Exception):
    pass




class MicroBatcher:
    """One thread running ``run_batch`` over stacked arrays: up to ``max_batch`` per call, waiting at most
    ``max_wait_s`` after the first queued item arrived (under load, what piled up during the previous batch goes at
    once). It waits only while more is on its way: requests ``announce()`` an image when they start decoding it and
    ``submit`` (or ``withdraw``) it after, so a lone request is run at once instead of waiting out the window.
    ``submit`` hands each item's row back through ``on_done(row, exc)`` on the batcher thread. ``close`` refuses
    new items, finishes the queued ones and joins the thread."""

    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_s: float,
                 max_queue: int = 1024, metrics: Metrics | None = None) -> None:  # fmt: skip
        self.run_batch, self.max_batch, self.max_wait_s, self.max_queue = run_batch, max_batch, max_wait_s, max_queue
        self.metrics = metrics or Metrics()
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._announced = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="sparkdl-batcher", daemon=True)
        self._thread.start()

    def announce(self, n: int = 1) -> None:
        """``n`` images are being decoded and will be submitted (or withdrawn) soon."""
        with self._cond:
            self._announced += n

    def withdraw(self, n: int = 1) -> None:
        """``n`` announced images will not come (they did not decode, or the client went away)."""
        with self._cond:
            self._announced -= n
            self._cond.notify()

    def submit(self, array: np.ndarray, on_done: Callable[[np.ndarray | None, BaseException | None], None],
               announced: bool = False) -> None:  # fmt: skip
        """Queue one image (an announced one: its announcement is consumed, even when refused)."""
        with self._cond:
            if announced:
                self._announced -= 1
            self._cond.notify()
            if self._closed:
                raise Closed("the server is shutting down")
            if len(self._items) >= self.max_queue:
                raise Overloaded(f"{self.max_queue} images are already waiting for the model")
            self._items.append((array, on_done, time.perf_counter()))

    def close(self, timeout: float | None = None) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def _next_batch(self) -> list | None:
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._items.popleft()]
            deadline = batch[0][2] + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._items:
                    batch.append(self._items.popleft())
                    continue
                wait = deadline - time.perf_counter()
                if self._announced <= 0 or self._closed or wait <= 0:
                    break
                self._cond.wait(wait)
            return batch

    def _loop(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list) -> None:
        start = time.perf_counter()
        try:
            rows = self.run_batch(np.stack([a for a, _, _ in batch]))
            if len(rows) != len(batch):
                raise RuntimeError(f"the model returned {len(rows)} rows for a batch of {len(batch)}")
            error = None
        except Exception as exc:  # every waiter gets it (a 500); the thread lives on
            log.exception("inference failed on a batch of %d", len(batch))
            rows, error = None, exc
        elapsed = time.perf_counter() - start

        def record() -> None:
            m = self.metrics
            m.batch_size.observe(len(batch))
            m.batch_seconds.observe(elapsed)
            m.images.inc(by=len(batch))
            for _, _, queued in batch:
                m.queue_wait.observe(start - queued)

        self.metrics.record(record)
        for i, (_, on_done, _) in enumerate(batch):
            try:
                on_done(None if rows is None else np.array(rows[i]), error)
            except Exception:  # a waiter's callback must not stop the batcher
                log.exception("could not hand a result back")


# -- the app ---------------------------------------------------------------------------------------------------------

ClassifierSource = Union[ImageClassifier, ClassifierSpec, Callable[[], ImageClassifier]]


class _State:
    """The model, its batcher and the readiness flags of one app (one server process)."""

    def __init__(self, source: ClassifierSource, config: ServeConfig, metrics: Metrics,
                 on_fatal: Callable[[BaseException], None] | None) -> None:  # fmt: skip
        self.source, self.config, self.metrics, self.on_fatal = source, config, metrics, on_fatal
        self.classifier: ImageClassifier | None = None
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.draining = False
        self.model_ref: dict = {}
        self._loader: threading.Thread | None = None

    def start(self) -> None:
        if isinstance(self.source, ImageClassifier):
            self._ready(self.source)
        else:
            self._loader = threading.Thread(target=self._load, name="sparkdl-model-loader", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        try:
            src = self.source
            t0 = time.perf_counter()
            classifier = ImageClassifier(src) if isinstance(src, ClassifierSpec) else src()
            log.info("model %s loaded in %.1f s", classifier.model_sha256[:12], time.perf_counter() - t0)
            self._ready(classifier)
        except BaseException as exc:  # noqa: BLE001 - reported, and the server told to stop
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load the model: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _ready(self, classifier: ImageClassifier) -> None:
        backbone = classifier.spec.info.get("backbone", {}).get("name") or classifier.spec.backbone.name
        self.model_ref = {"sha256": classifier.model_sha256, "backbone": backbone}
        self.batcher = MicroBatcher(classifier.probabilities, self.config.max_batch, self.config.max_wait_ms / 1000.0,
                                    self.config.max_queue, self.metrics)  # fmt: skip
        self.classifier = classifier
        self.metrics.record(lambda: setattr(self.metrics, "model", (self.model_ref["sha256"], backbone)))
        self._set_ready()

    def _set_ready(self) -> None:
        ready = int(self.classifier is not None and not self.draining)
        self.metrics.record(lambda: setattr(self.metrics, "ready", ready))

    @property
    def ready(self) -> bool:
        return self.classifier is not None and not self.draining

    def require(self) -> ImageClassifier:
        if self.classifier is None:
            detail = f"the model failed to load ({self.load_error})" if self.load_error else "the model is still loading"
            raise ApiError(503, "not_ready", detail, {"Retry-After": "1"})
        return self.classifier

    def close(self) -> None:
        self.draining = True
        self._set_ready()
        if self._loader is not None:
            self._loader.join()
        if self.batcher is not None:
            self.batcher.close()

    async def decode_and_infer(self, classifier: ImageClassifier, data: bytes) -> np.ndarray | Reject:
        """Decode in the threadpool (announced to the batcher, which then waits for it), then run it through the
        batcher: the image's probabilities, or the Reject."""
        batcher = self.batcher
        assert batcher is not None
        batcher.announce()
        announced = True
        try:
            decoded = await run_in_threadpool(_decode, classifier, data, self.config.max_image_pixels)
            if isinstance(decoded, Reject):
                return decoded
            announced = False
            return await self.infer(decoded, announced=True)
        finally:
            if announced:
                batcher.withdraw()

    async def infer(self, array: np.ndarray, announced: bool = False) -> np.ndarray:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def settle(row, exc) -> None:
            if not fut.done():  # a cancelled request (client gone) leaves nobody to answer
                fut.set_exception(exc) if exc is not None else fut.set_result(row)

        assert self.batcher is not None
        try:
            self.batcher.submit(array, lambda row, exc: loop.call_soon_threadsafe(settle, row, exc), announced=announced)
        except Overloaded as exc:
            raise ApiError(503, "overloaded", str(exc), {"Retry-After": "1"}) from None
        except Closed as exc:
            raise ApiError(503, "shutting_down", str(exc)) from None
        return await fut


def _route_of(path: str) -> str:
    return path if path in ROUTES else "unmatched"  # unknown paths share one label (bounded cardinality)


class _Observe:
    """Outermost middleware: counts every answer by route and status, with its latency."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.request(_route_of(scope["path"]), status[0], time.perf_counter() - start)


class _Auth:
    """``Authorization: Bearer <token>`` on every path but the probes (constant-time comparison)."""

    def __init__(self, app, token: bytes) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            await self.app(scope, receive, send)
            return
        detail = "a bearer token is required" if not header else "the bearer token is not valid"
        await _error(401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="sparkdl"'})(scope, receive, send)


def _media_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return None if value is None else value.split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (Content-Length, then while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", f"Content-Length is not a number: {declared[:40]!r}") from None
        if n > limit:
            raise ApiError(413, "body_too_large", f"the body is {n} bytes; this server takes at most {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "body_too_large", f"the body exceeds {limit} bytes, the most this server takes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(classifier: ImageClassifier, data: bytes, max_pixels: int) -> np.ndarray | Reject:
    """``classifier.decode`` (ingest's decoder), after refusing an image whose header declares more than
    ``max_pixels``: Pillow only warns between its limit and twice it, and a small PNG can declare 100+ megapixels
    (hundreds of MB once decoded) -- a few such requests at once would exhaust the server's memory."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                w, h = img.size
                big = w * h > max_pixels and not (img.format == "JPEG" and w * h <= max_pixels * 64)
    except Exception:  # noqa: BLE001 - not an image, a bomb past Pillow's own limit...: decode says which, below
        big = False
    if big:  # a JPEG decodes at up to 1/8 scale (draft mode), so only 64x the limit is refused for JPEG
        return Reject(TOO_LARGE, f"the image declares {w}x{h} = {w * h} pixels; this server decodes at most {max_pixels}")
    return classifier.decode(data)


def _top_k(request: Request, classifier: ImageClassifier, default: int) -> int:
    n = len(classifier.labels)
    text = request.query_params.get("top_k")
    if text is None:
        return min(default, n)
    try:
        k = int(text)
    except ValueError:
        k = 0
    if not 1 <= k <= n:
        raise ApiError(400, "bad_parameter", f"top_k must be an integer in 1..{n} (the model has {n} classes), got {text[:40]!r}")
    return k


def build_app(classifier: ClassifierSource, config: ServeConfig,
              on_fatal: Callable[[BaseException], None] | None = None) -> Starlette:  # fmt: skip
    """The ASGI app serving ``classifier``: an :class:`ImageClassifier` (ready at once), or a
    :class:`ClassifierSpec` / zero-argument loader built in a background thread at startup (``/readyz`` answers
    503 until then; ``on_fatal(exc)`` is called if that fails). ``config`` gives the batching and the limits
    (host, port and workers are ``serve``'s)."""
    metrics = Metrics()
    state = _State(classifier, config, metrics, on_fatal)
    limit = config.max_body_bytes

    def endpoint(route: str):
        """Answers ApiError as JSON, and any other exception as a counted JSON 500 (never a bare traceback)."""

        def wrap(fn):
            async def handler(request: Request) -> Response:
                try:
                    return await fn(request)
                except ApiError as exc:
                    return _error(exc.status, exc.reason, exc.detail, exc.headers)
                except ClientDisconnect:
                    return _error(400, "client_disconnected", "the client went away before sending the whole body")
                except Exception as exc:
                    log.exception("internal error on %s", route)
                    metrics.record(lambda: metrics.errors.inc(route))
                    return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

            return handler

        return wrap

    def reject(r: Reject) -> ApiError:
        metrics.reject(r.reason)
        return ApiError(400, r.reason, r.detail)

    @endpoint("/v1/predict")
    async def predict(request: Request) -> Response:
        cl = state.require()
        media = _media_type(request)
        if media is not None and not (media.startswith("image/") or media == "application/octet-stream"):
            raise ApiError(415, "unsupported_media_type", f"send the image bytes as the body with Content-Type image/* "
                           f"or application/octet-stream (got {media!r}); several images: POST /v1/predict/batch")  # fmt: skip
        top_k = _top_k(request, cl, config.default_top_k)
        body = await _read_body(request, limit)
        probs = await state.decode_and_infer(cl, body)
        if isinstance(probs, Reject):
            raise reject(probs)
        return JSONResponse({**cl.prediction(probs, top_k).to_json(), "model": state.model_ref})

    @endpoint("/v1/predict/batch")
    async def predict_batch(request: Request) -> Response:
        cl = state.require()
        if _media_type(request) != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type", "send the images as multipart/form-data parts (curl -F "
                           f"image=@a.jpg -F image=@b.jpg), got {_media_type(request)!r}")  # fmt: skip
        top_k = _top_k(request, cl, config.default_top_k)
        body = await _read_body(request, limit)
        parts = await _parts(request, body, config.max_parts, limit)
        outcomes = await asyncio.gather(*(state.decode_and_infer(cl, data) for _, _, data in parts))
        results: list[dict] = []
        for (name, filename, _), out in zip(parts, outcomes):
            item: dict = {"part": name} | ({"filename": filename} if filename is not None else {})
            if isinstance(out, Reject):
                metrics.reject(out.reason)
                item["error"] = out.to_json()
            else:
                item |= cl.prediction(out, top_k).to_json()
            results.append(item)
        return JSONResponse({"results": results, "model": state.model_ref})

    @endpoint("/v1/model")
    async def model(request: Request) -> Response:
        cl = state.require()
        info = cl.spec.info
        return JSONResponse({
            "sha256": cl.model_sha256, "labels": cl.labels, "n_classes": len(cl.labels),
            "backbone": info.get("backbone"), "carried": info.get("carried"), "head": info.get("head"),
            "feature_dim": info.get("feature_dim"), "metrics": info.get("metrics", {}),
            "serving": {"max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "max_body_mb": config.max_body_mb,
                        "max_parts": config.max_parts, "default_top_k": min(config.default_top_k, len(cl.labels))},
        })  # fmt: skip

    @endpoint("/healthz")
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @endpoint("/readyz")
    async def readyz(request: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "ready", "model": state.model_ref})
        if state.draining:
            raise ApiError(503, "shutting_down", "the server is draining its last requests")
        state.require()
        raise ApiError(503, "not_ready", "the model is still loading")  # pragma: no cover - require raised

    @endpoint("/metrics")
    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        detail = {404: f"no such endpoint: {request.url.path}",
                  405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))  # fmt: skip
        return _error(exc.status_code, reason, detail, getattr(exc, "headers", None))

    @asynccontextmanager
    async def lifespan(app):
        state.start()
        try:
            yield
        finally:  # uvicorn has finished the in-flight requests: drain and stop the batcher
            await run_in_threadpool(state.close)

    token = config.token()
    middleware = [Middleware(_Observe, metrics=metrics)] + ([Middleware(_Auth, token=token)] if token else [])
    routes = [
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/predict/batch", predict_batch, methods=["POST"]),
        Route("/v1/model", model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={404: http_error, 405: http_error})  # fmt: skip
    app.state.serving = state
    app.state.metrics = metrics
    return app


async def _parts(request: Request, body: bytes, max_parts: int, limit: int) -> list[tuple[str, str | None, bytes]]:
    """(field name, filename or None, bytes) per multipart part, in order."""
    sent = [False]

    async def replay():
        if sent[0]:
            return {"type": "http.disconnect"}
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_parts, max_fields=max_parts, max_part_size=limit)
    except HTTPException as exc:  # Starlette's MultiPartException, as a 400
        raise ApiError(400, "bad_multipart", str(exc.detail)) from None
    except Exception as exc:  # noqa: BLE001 - whatever a malformed body makes the parser raise is the client's
        raise ApiError(400, "bad_multipart", f"{type(exc).__name__}: {exc}") from None
    try:
        parts = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                parts.append((name, value.filename, await value.read()))
            else:
                parts.append((name, None, value.encode()))
    finally:
        await form.close()
    if not parts:
        raise ApiError(400, "no_images", "the multipart body has no parts: send one image per part")
    return parts


# -- running it ------------------------------------------------------------------------------------------------------


def resolve_model(uri: str, spark=None) -> tuple[ClassifierSpec, Path]:
    """Check a bundle and find its backbone without building the network: (spec, scratch directory)
    (:func:`sparkdl.infer.classifier.resolve_bundle`). The caller removes the scratch directory when done serving."""
    from sparkdl.infer.classifier import resolve_bundle

    return resolve_bundle(uri, spark)


def _worker_app(spec: ClassifierSpec, config: ServeConfig):
    """App factory run in each ``--workers`` process (pickled to it): its share of the cores, its own model."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.workers))

    def fatal(exc: BaseException) -> None:  # uvicorn's supervisor stops everything on this exit code
        from uvicorn.config import STARTUP_FAILURE

        os._exit(STARTUP_FAILURE)

    return build_app(spec, config, on_fatal=fatal)


def serve(config: ServeConfig, spec: ClassifierSpec | None = None, progress: Callable[[str], None] | None = None) -> dict:
    """Serve until SIGTERM / SIGINT, then finish the in-flight requests and return a summary.

    ``spec``: the model, resolved by :func:`resolve_model` (needed for a bundle on a Hadoop URI: resolve it with a
    SparkSession first); default: resolve ``config.model`` from the local disk. Binds ``config.host:config.port``
    (``port=0``: an ephemeral one, reported through ``progress``). Raises if the model cannot be loaded."""
    import uvicorn

    say = progress or (lambda _msg: None)
    config.token()  # a bad token file fails before anything starts
    scratch = None
    if spec is None:
        spec, scratch = resolve_model(config.model)
    try:
        failure: list[BaseException] = []
        uv_config = uvicorn.Config(
            partial(_worker_app, spec, config) if config.workers > 1 else None,  # the single-process app is set below
            host=config.host, port=config.port, workers=config.workers, factory=config.workers > 1,
            log_level=config.log_level, access_log=config.access_log, lifespan="on", proxy_headers=False, ws="none",
            server_header=False, timeout_graceful_shutdown=config.shutdown_timeout_s, log_config=_log_config(),
            # --workers: uvicorn kills a worker that does not answer its supervisor's ping in time; a new worker only
            # answers once it has imported torch (1.3 s idle, several times that on a busy machine); the default 5 s
            # can kill and restart a worker that is merely starting
            timeout_worker_healthcheck=60,
        )  # fmt: skip
        sock = _bind(config.host, config.port)
        host, port = sock.getsockname()[:2]
        say(f"serve: model {spec.model_sha256[:12]} ({spec.backbone.name}, {spec.n_classes} classes) on "
            f"http://{host}:{port} with {config.workers} worker(s), batches of up to {config.max_batch}")  # fmt: skip
        started = time.perf_counter()
        with _quiet_signals():
            if config.workers > 1:
                from uvicorn.supervisors import Multiprocess

                supervisor = Multiprocess(uv_config, sockets=[sock])
                supervisor.run()
                from uvicorn.config import STARTUP_FAILURE

                if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
                    raise DataError("a server worker could not load the model (see its log above)")
            else:
                server = uvicorn.Server(uv_config)

                def fatal(exc: BaseException) -> None:
                    failure.append(exc)
                    server.should_exit = True

                uv_config.app = build_app(spec, config, on_fatal=fatal)
                server.run(sockets=[sock])
                if failure:
                    raise failure[0]
                if not server.started:
                    raise ConfigError(f"the server did not start on {host}:{port} (see the log above)")
        sock.close()
        return {"url": f"http://{host}:{port}", "model_sha256": spec.model_sha256, "workers": config.workers,
                "seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, made here rather than by uvicorn's ``Config.bind_socket``: that one is created without
    its protocol (``proto=0``), so asyncio does not set TCP_NODELAY on the connections it accepts (its check wants
    ``IPPROTO_TCP``) and every answer on a kept-alive connection waits ~40 ms for the client's delayed ACK
    (measured: GET /healthz 0.3 ms on a new connection, 44 ms on a reused one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # --workers: handed to the worker processes
    return sock


def _log_config() -> dict:
    """uvicorn's logging with the access lines on stderr too (stdout carries only the command's summary)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    conf = copy.deepcopy(LOGGING_CONFIG)
    conf["handlers"]["access"]["stream"] = "ext://sys.stderr"
    return conf


class _quiet_signals:
    """While serving: SIGTERM / SIGINT only stop the server (uvicorn installs its handlers inside and re-raises the
    signal once stopped; with these as the previous handlers, the re-raise is a no-op and we exit 0, not 143/130)."""

    def __enter__(self):
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.saved[sig] = signal.signal(sig, lambda *_: None)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
