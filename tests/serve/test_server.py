"""`sparkdl serve`: the real server (a `sparkdl serve` subprocess on 127.0.0.1, an ephemeral port) over plain
http.client: answers equal to the in-process classifier, micro-batching, every bad input as a 4xx with its reason,
auth, metrics, graceful shutdown. Plus in-process checks of the batcher, the config, and the 500 path."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from datagen import jpeg_bytes, make_bundle

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-0123456789abcdef"


# -- helpers ---------------------------------------------------------------------------------------------------------


class Server:
    """A `sparkdl serve` subprocess; its log goes to a file (a full pipe would stall it)."""

    def __init__(self, tmp: Path, model: Path, *args: str, name: str = "server") -> None:
        self.log = tmp / f"{name}.log"
        self.out = tmp / f"{name}.out"
        cmd = [sys.executable, "-m", "sparkdl.cli", "serve", "--model", str(model), "--port", "0", *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as err, open(self.out, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=REPO, env=env)
        self.port = self._wait_port()
        self.wait_ready()

    def _wait_port(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"on http://127\.0\.0\.1:(\d+) ", self.log.read_text(errors="replace"))
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"sparkdl serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"sparkdl serve did not report its port:\n{self.log.read_text()}")

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if call(self.port, "GET", "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"sparkdl serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"sparkdl serve never became ready:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         timeout: float = 60) -> tuple[int, dict, object]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        text = data.decode("utf-8", "replace")
        payload = json.loads(text) if hdrs.get("content-type", "").startswith("application/json") else text
        return resp.status, hdrs, payload
    finally:
        conn.close()


def predict(port: int, image: bytes, query: str = "", headers: dict | None = None):
    return call(port, "POST", f"/v1/predict{query}", image, {"Content-Type": "image/jpeg", **(headers or {})})


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    boundary = "sparkdl-test-boundary-7f3a"
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A ~70-byte PNG declaring width x height RGB pixels (Pillow refuses it at open: a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def metric_values(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def assert_same_prediction(got: dict, want, rel: float = 1e-5) -> None:
    assert got["label"] == want.label and got["index"] == want.index
    assert got["probability"] == pytest.approx(want.probability, rel=rel, abs=1e-7)
    assert [t["label"] for t in got["top_k"]] == [lab for lab, _ in want.top_k]
    assert [t["probability"] for t in got["top_k"]] == pytest.approx([p for _, p in want.top_k], rel=rel, abs=1e-7)


# -- fixtures --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve-bundle") / "model", backbone="tiny")


@pytest.fixture(scope="module")
def classifier(bundle):
    from sparkdl.infer.classifier import ImageClassifier

    return ImageClassifier.load(bundle)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    """No auth, a 1 MiB body limit, batches of up to 16 waiting up to 50 ms (so concurrent requests meet)."""
    srv = Server(tmp_path_factory.mktemp("serve"), bundle, "--max-body-mb", "1", "--max-batch", "16", "--max-wait-ms", "50")
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


# -- the happy path and batching -------------------------------------------------------------------------------------


def test_predict_equals_in_process_classifier(server, classifier):
    for seed in range(3):
        image = jpeg_bytes(seed)
        status, _, body = predict(server.port, image, "?top_k=2")
        assert status == 200, body
        want = classifier.predict([image], top_k=2)[0]
        assert_same_prediction(body, want)
        assert len(body["top_k"]) == 2
        assert body["model"] == {"sha256": classifier.model_sha256, "backbone": "tiny"}
    status, _, body = call(server.port, "POST", "/v1/predict", jpeg_bytes(7), {"Content-Type": "application/octet-stream"})
    assert status == 200 and len(body["top_k"]) == 3  # default top_k 5, capped to the 3 classes


def test_concurrent_clients_are_batched_and_get_the_sequential_answers(server):
    images = [jpeg_bytes(100 + i) for i in range(16)]
    sequential = [predict(server.port, img)[2] for img in images]
    before = metric_values(call(server.port, "GET", "/metrics")[2])
    barrier = threading.Barrier(16)
    results: list = [None] * 16

    def client(i: int) -> None:
        barrier.wait()
        results[i] = predict(server.port, images[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = metric_values(call(server.port, "GET", "/metrics")[2])
    for (status, _, got), want in zip(results, sequential):
        assert status == 200, got
        assert got["label"] == want["label"]
        assert got["probability"] == pytest.approx(want["probability"], rel=1e-5)
        assert [t["label"] for t in got["top_k"]] == [t["label"] for t in want["top_k"]]
    batches = after["sparkdl_serve_batch_size_count"] - before["sparkdl_serve_batch_size_count"]
    single = after['sparkdl_serve_batch_size_bucket{le="1"}'] - before['sparkdl_serve_batch_size_bucket{le="1"}']
    images_run = after["sparkdl_serve_images_total"] - before["sparkdl_serve_images_total"]
    assert images_run == 16
    assert batches < 16 and single < batches, f"16 concurrent requests ran as {batches} batches, {single} of size 1"


def test_batch_endpoint_one_result_per_part_in_order(server, classifier):
    images = [jpeg_bytes(200), b"not an image at all", jpeg_bytes(201), b""]
    body, ctype = multipart([("image", "a.jpg", images[0]), ("image", "b.txt", images[1]), ("image", "c.jpg", images[2]),
                             ("image", "empty.jpg", images[3])])  # fmt: skip
    status, _, got = call(server.port, "POST", "/v1/predict/batch?top_k=1", body, {"Content-Type": ctype})
    assert status == 200, got
    results = got["results"]
    assert [r.get("filename") for r in results] == ["a.jpg", "b.txt", "c.jpg", "empty.jpg"]
    assert_same_prediction(results[0], classifier.predict([images[0]], top_k=1)[0])
    assert_same_prediction(results[2], classifier.predict([images[2]], top_k=1)[0])
    assert results[1]["error"]["reason"] == "not_an_image"
    assert results[3]["error"]["reason"] == "empty_file"
    assert got["model"]["sha256"] == classifier.model_sha256


# -- bad input: a 4xx with the reason, never a 500 -------------------------------------------------------------------


def test_bad_images_are_400_with_the_decode_reason(server):
    whole = jpeg_bytes(5, size=(120, 160))
    cases = {
        "empty_file": b"",
        "not_an_image": b"hello, this is text\n",
        "corrupt_image": whole[: len(whole) // 3],
        "too_large": bomb_png(),
    }
    for reason, data in cases.items():
        status, _, body = predict(server.port, data, headers={"Content-Type": "image/png"})
        assert status == 400, (reason, body)
        assert body["error"]["reason"] == reason and body["error"]["detail"], body
    # Pillow only warns between its limit and twice it: the server refuses from the header, before decoding
    status, _, body = predict(server.port, bomb_png(10000, 10000), headers={"Content-Type": "image/png"})
    assert status == 400 and body["error"]["reason"] == "too_large" and "declares 10000x10000" in body["error"]["detail"]
    text = call(server.port, "GET", "/metrics")[2]
    for reason in cases:
        assert re.search(rf'sparkdl_serve_rejects_total{{reason="{reason}"}} [1-9]', text), reason
    assert "sparkdl_serve_internal_errors_total{" not in text


def test_body_over_the_limit_is_413_with_content_length(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:  # declare 10 GB, send nothing: the answer must not wait for the body
        conn.putrequest("POST", "/v1/predict")
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Content-Length", str(10 * 1024**3))
        conn.endheaders()
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413 and body["error"]["reason"] == "body_too_large", body


def test_body_over_the_limit_is_413_while_streaming_without_content_length(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("POST", "/v1/predict")
        conn.putheader("Content-Type", "image/jpeg")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        chunk = b"\xff" * 65536
        try:
            for _ in range(24):  # 1.5 MiB against a 1 MiB limit, never terminated: the server must stop reading
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 413 and body["error"]["reason"] == "body_too_large", body


def test_routing_and_media_type_errors_are_json(server):
    status, hdrs, body = call(server.port, "GET", "/no/such/path")
    assert status == 404 and body["error"]["reason"] == "not_found"
    status, hdrs, body = call(server.port, "GET", "/v1/predict")
    assert status == 405 and body["error"]["reason"] == "method_not_allowed" and "POST" in hdrs.get("allow", "")
    status, _, body = call(server.port, "DELETE", "/v1/model")
    assert status == 405
    status, _, body = call(server.port, "POST", "/v1/predict", b"x", {"Content-Type": "text/plain"})
    assert status == 415 and body["error"]["reason"] == "unsupported_media_type"
    status, _, body = call(server.port, "POST", "/v1/predict/batch", jpeg_bytes(1), {"Content-Type": "image/jpeg"})
    assert status == 415
    status, _, body = call(server.port, "POST", "/v1/predict/batch", b"garbage", {"Content-Type": "multipart/form-data"})
    assert status == 400 and body["error"]["reason"] == "bad_multipart", body


@pytest.mark.parametrize("top_k", ["0", "4", "-1", "abc", "1.5", ""])
def test_bad_top_k_is_400(server, top_k):
    status, _, body = predict(server.port, jpeg_bytes(1), f"?top_k={top_k}")
    assert status == 400 and body["error"]["reason"] == "bad_parameter", body


def test_kept_alive_connections_answer_without_delayed_ack_stalls(server):
    # uvicorn's own bind_socket makes a socket without IPPROTO_TCP, so asyncio never set TCP_NODELAY and every
    # answer on a reused connection waited for the client's delayed ACK (>= 40 ms on Linux); /healthz takes < 1 ms
    from sparkdl.infer.serve import _bind

    sock = _bind("127.0.0.1", 0)
    assert sock.proto == socket.IPPROTO_TCP
    sock.close()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    times = []
    try:
        for _ in range(7):
            t0 = time.perf_counter()
            conn.request("GET", "/healthz")
            assert conn.getresponse().read()
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
    assert sorted(times)[3] < 0.035, times


# -- model, health, metrics ------------------------------------------------------------------------------------------


def test_model_health_and_readiness(server, classifier):
    status, _, body = call(server.port, "GET", "/v1/model")
    assert status == 200
    assert body["labels"] == ["ak47", "american-flag", "backpack"] and body["sha256"] == classifier.model_sha256
    assert body["backbone"]["name"] == "tiny" and "metrics" in body
    assert call(server.port, "GET", "/healthz")[:1] == (200,)
    status, _, body = call(server.port, "GET", "/readyz")
    assert status == 200 and body["status"] == "ready"


def test_metrics_exposition(server):
    predict(server.port, jpeg_bytes(3))
    call(server.port, "GET", "/nowhere")
    status, hdrs, text = call(server.port, "GET", "/metrics")
    assert status == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4")
    for name, kind in [("sparkdl_serve_requests_total", "counter"), ("sparkdl_serve_rejects_total", "counter"),
                       ("sparkdl_serve_batch_size", "histogram"), ("sparkdl_serve_request_duration_seconds", "histogram"),
                       ("sparkdl_serve_ready", "gauge")]:  # fmt: skip
        assert f"# TYPE {name} {kind}" in text, name
    values = metric_values(text)
    assert values['sparkdl_serve_requests_total{route="/v1/predict",status="200"}'] >= 1
    assert values['sparkdl_serve_requests_total{route="unmatched",status="404"}'] >= 1  # unknown paths share a label
    assert values['sparkdl_serve_request_duration_seconds_bucket{route="/v1/predict",le="+Inf"}'] == \
        values['sparkdl_serve_request_duration_seconds_count{route="/v1/predict"}']  # fmt: skip
    assert values['sparkdl_serve_batch_size_bucket{le="+Inf"}'] == values["sparkdl_serve_batch_size_count"] >= 1
    assert values["sparkdl_serve_ready"] == 1
    # every sample line parses as `name{labels} value`
    sample = re.compile(r'^[a-z_]+(\{([a-z_0-9]+="[^"]*",?)+\})? [-+0-9.eInf]+$')
    assert all(sample.match(ln) for ln in text.splitlines() if ln and not ln.startswith("#")), text


# -- auth ------------------------------------------------------------------------------------------------------------


def test_bearer_token(bundle, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    srv = Server(tmp_path, bundle, "--token-file", str(token_file), name="auth")
    try:
        image = jpeg_bytes(1)
        status, hdrs, body = predict(srv.port, image)
        assert status == 401 and body["error"]["reason"] == "unauthorized" and hdrs["www-authenticate"].startswith("Bearer")
        assert predict(srv.port, image, headers={"Authorization": "Bearer wrong-token-0123456789abc"})[0] == 401
        assert predict(srv.port, image, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert call(srv.port, "GET", "/metrics")[0] == 401
        status, _, body = predict(srv.port, image, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["label"]
        assert call(srv.port, "GET", "/v1/model", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200
        assert call(srv.port, "GET", "/healthz")[0] == 200 and call(srv.port, "GET", "/readyz")[0] == 200  # probes open
        text = call(srv.port, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})[2]
        assert metric_values(text)['sparkdl_serve_requests_total{route="/v1/predict",status="401"}'] == 3
    finally:
        assert srv.stop() == 0


def test_not_a_bundle_fails_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sparkdl.cli", "serve", "--model", str(tmp_path / "nothing"), "--port", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
    assert proc.returncode == 1 and "not a sparkdl model bundle" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_token_file_fails_before_serving(bundle, tmp_path):
    short = tmp_path / "short"
    short.write_text("abc")
    for path in (short, tmp_path / "missing"):
        proc = subprocess.run([sys.executable, "-m", "sparkdl.cli", "serve", "--model", str(bundle), "--port", "0",
                               "--token-file", str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
        assert proc.returncode == 1 and "token" in proc.stderr, proc.stderr


# -- graceful shutdown -----------------------------------------------------------------------------------------------


def test_sigterm_finishes_in_flight_requests_then_exits_0(bundle, classifier, tmp_path):
    # a long batching window: the first request is waiting in the batcher when SIGTERM arrives
    srv = Server(tmp_path, bundle, "--max-wait-ms", "1500", name="sigterm")
    image = jpeg_bytes(11)
    queued: list = []
    t = threading.Thread(target=lambda: queued.append(predict(srv.port, image)))
    # a second request still uploading its body when SIGTERM arrives
    slow = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    slow.putrequest("POST", "/v1/predict")
    slow.putheader("Content-Type", "image/jpeg")
    slow.putheader("Content-Length", str(len(image)))
    slow.endheaders()
    slow.send(image[:100])
    t.start()
    time.sleep(0.5)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert srv.proc.poll() is None  # still draining
    slow.send(image[100:])
    resp = slow.getresponse()
    slow_body = json.loads(resp.read())
    slow.close()
    t.join(30)
    assert resp.status == 200, slow_body
    assert queued and queued[0][0] == 200, queued
    want = classifier.predict([image])[0]
    assert_same_prediction(slow_body, want)
    assert_same_prediction(queued[0][2], want)
    assert srv.proc.wait(30) == 0, srv.log.read_text()
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_two_worker_processes_and_ctrl_c(bundle, classifier, tmp_path):
    srv = Server(tmp_path, bundle, "--workers", "2", name="workers")
    try:
        for seed in (1, 2, 3):
            status, _, body = predict(srv.port, jpeg_bytes(seed))
            assert status == 200
            assert_same_prediction(body, classifier.predict([jpeg_bytes(seed)])[0])
    finally:
        assert srv.stop(sig=signal.SIGINT) == 0, srv.log.read_text()


def test_ctrl_c_exits_0(bundle, tmp_path):
    srv = Server(tmp_path, bundle, name="sigint")
    assert predict(srv.port, jpeg_bytes(1))[0] == 200
    assert srv.stop(sig=signal.SIGINT) == 0, srv.log.read_text()
    assert "serve: stopped" in srv.out.read_text()


# -- a bundle on HDFS ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.spark
def test_model_on_hdfs_is_copied_through_a_short_lived_session(bundle, classifier, tmp_path):
    """A real NameNode + DataNode (scripts/local_hdfs.py); `serve` copies the bundle with a local SparkSession, stops
    it (its JVM too) and serves the same model."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_hdfs", REPO / "scripts" / "local_hdfs.py")
    local_hdfs = importlib.util.module_from_spec(spec)
    sys.modules["local_hdfs"] = local_hdfs  # dataclasses look their module up by name
    spec.loader.exec_module(local_hdfs)
    try:
        local_hdfs.fetch()
    except local_hdfs.PartsUnavailable as exc:
        if os.environ.get("SPARKDL_REQUIRE_HDFS") == "1":
            pytest.fail(f"no HDFS on this machine: {exc} (SPARKDL_REQUIRE_HDFS=1)")
        pytest.skip(f"no HDFS on this machine: {exc}")
    from sparkdl.data.webhdfs import WebHdfs

    with local_hdfs.LocalHdfs(tmp_path / "hdfs", permissions=False) as hdfs:
        WebHdfs(hdfs.webhdfs, "hdfs").upload(bundle, "/models/tiny")
        srv = Server(tmp_path, f"{hdfs.fs}/models/tiny", "--spark-master", "local[1]", "--driver-memory", "512m", name="hdfs")
        try:
            assert "copying hdfs://" in srv.log.read_text()
            children = subprocess.run(["ps", "--ppid", str(srv.proc.pid), "-o", "args="], capture_output=True, text=True).stdout
            assert "java" not in children, children  # the session's JVM ended before serving
            status, _, body = predict(srv.port, jpeg_bytes(4))
            assert status == 200 and body["model"]["sha256"] == classifier.model_sha256
            assert_same_prediction(body, classifier.predict([jpeg_bytes(4)])[0])
        finally:
            assert srv.stop() == 0, srv.log.read_text()


# -- in process: an inference failure is a counted JSON 500; the batcher; the config ---------------------------------


def test_inference_exception_is_a_counted_json_500(bundle):
    import uvicorn

    from sparkdl.infer.classifier import ImageClassifier
    from sparkdl.infer.serve import ServeConfig, build_app

    broken = ImageClassifier.load(bundle)

    def boom(batch):
        raise RuntimeError("the model fell over")

    broken.probabilities = boom
    config = ServeConfig(model=str(bundle), port=0)
    app = build_app(broken, config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="on", ws="none"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        status, _, body = predict(port, jpeg_bytes(1))
        assert status == 500 and body["error"]["reason"] == "internal_error" and "fell over" in body["error"]["detail"]
        assert predict(port, b"")[0] == 400  # bad input is still the client's
        values = metric_values(call(port, "GET", "/metrics")[2])
        assert values['sparkdl_serve_internal_errors_total{route="/v1/predict"}'] == 1
        assert values['sparkdl_serve_requests_total{route="/v1/predict",status="500"}'] == 1
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_micro_batcher_batches_drains_and_survives_errors():
    from sparkdl.infer.serve import Closed, MicroBatcher

    sizes = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        if (batch < 0).any():
            raise ValueError("negative")
        time.sleep(0.01)
        return batch * 2

    batcher = MicroBatcher(run, max_batch=4, max_wait_s=0.2)
    got: dict = {}
    done = threading.Event()

    def on_done(i):
        def cb(row, exc):
            got[i] = (row, exc)
            if len(got) == 10:
                done.set()

        return cb

    for i in range(10):
        batcher.submit(np.array([float(i)]), on_done(i))
    batcher.close()  # drains what is queued
    assert done.wait(5)
    assert sizes == [4, 4, 2]  # full batches go at once, then the rest
    assert all(got[i][0][0] == 2 * i and got[i][1] is None for i in range(10))
    with pytest.raises(Closed):
        batcher.submit(np.array([1.0]), on_done(99))
    # the window is only waited out for images announced (being decoded): a lone one goes at once
    sizes.clear()
    lone = MicroBatcher(run, max_batch=8, max_wait_s=5.0)
    t0 = time.perf_counter()
    got.clear()
    done.clear()
    finished = threading.Event()
    lone.submit(np.array([1.0]), lambda row, exc: finished.set())
    assert finished.wait(2) and time.perf_counter() - t0 < 1.0
    lone.announce(3)
    finished.clear()
    lone.submit(np.array([2.0]), lambda row, exc: None, announced=True)
    time.sleep(0.3)
    lone.submit(np.array([3.0]), lambda row, exc: None, announced=True)  # joins the waiting batch
    lone.withdraw()  # the third never comes: the batch goes without waiting out the 5 s
    lone.close(5)
    assert sizes == [1, 2]
    bad = MicroBatcher(run, max_batch=8, max_wait_s=0.0)
    errors = []
    bad.submit(np.array([-1.0]), lambda row, exc: errors.append(exc))
    bad.submit(np.array([1.0]), lambda row, exc: errors.append(exc))
    bad.close()
    assert errors and isinstance(errors[0], ValueError)


def test_serve_config_validation():
    from sparkdl.errors import ConfigError
    from sparkdl.infer.serve import ServeConfig

    assert ServeConfig(model="m").host == "127.0.0.1"
    for bad in ({"port": 70000}, {"max_batch": 0}, {"max_wait_ms": -1}, {"max_wait_ms": float("nan")},
                {"workers": 0}, {"max_body_mb": 0}, {"model": " "}, {"log_level": "loud"}):  # fmt: skip
        with pytest.raises(ConfigError):
            ServeConfig(**{"model": "m", **bad})


def test_help_describes_every_option():
    from sparkdl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    serve = sub.choices["serve"]
    for action in serve._actions:
        assert action.help and action.help.strip(), action.option_strings
    text = serve.format_help()
    for opt in ("--model", "--host", "--port", "--max-batch", "--max-wait-ms", "--workers", "--token-file", "--max-body-mb"):
        assert opt in text
    assert "127.0.0.1" in text and "/healthz" in text
