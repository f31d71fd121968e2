"""Overload, slow clients and logs: bounded work, clear answers, nothing sensitive written."""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from runtime.app import create_app
from runtime.settings import Settings
from tests.images import encode, solid
from tests.server import post_file, start_server, stop_server


def _slow_down(client: TestClient, wait: Callable[[], object]) -> None:
    """Every model run of the client's app first calls ``wait`` (holds it, or takes a known time)."""
    engine = client.app.state.engine  # type: ignore[attr-defined]
    real_run = engine.run

    def slow_run(images):  # type: ignore[no-untyped-def]
        wait()
        return real_run(images)

    engine.run = slow_run


def test_overload_answers_503_with_retry_after_at_once(tiny_bundle: Path) -> None:
    settings = Settings(bundle=str(tiny_bundle), threads=1, inference_concurrency=1, max_queue=0)
    release = threading.Event()
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        _slow_down(client, lambda: release.wait(10))
        first: dict[str, int] = {}
        worker = threading.Thread(
            target=lambda: first.update(
                status=client.post("/api/predict", files={"file": ("a.jpg", solid())}).status_code
            )
        )
        worker.start()
        admission = client.app.state.admission  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while admission.active == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        busy = client.post("/api/predict", files={"file": ("b.jpg", solid())})
        assert time.monotonic() - started < 2
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "overloaded"
        release.set()
        worker.join(10)
        assert first["status"] == 200
        assert 'skin_rejected_total{reason="overloaded"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("path", ["/api/predict", "/api/predict/batch"])
def test_full_server_refuses_before_parsing_the_upload(tiny_bundle: Path, path: str) -> None:
    # Under overload the 503 must cost nothing: a body that is not even valid multipart is never looked at.
    settings = Settings(bundle=str(tiny_bundle), threads=1, inference_concurrency=1, max_queue=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        admission = client.app.state.admission  # type: ignore[attr-defined]
        admission.active = admission.capacity
        busy = client.post(
            path, content=b"not multipart at all", headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        admission.active = 0
        bad = client.post(
            path, content=b"not multipart at all", headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert bad.status_code == 400


def test_probes_and_scrapes_that_succeed_are_debug_lines_and_failures_info(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture
) -> None:
    """kubelet probes every few seconds and Prometheus scrapes: at info they were most of the log."""
    settings = Settings(bundle=str(tiny_bundle), threads=1)
    with (
        TestClient(create_app(settings)) as client,
        runtime_log.at_level(logging.DEBUG, logger="runtime.access"),
    ):
        for path in ("/healthz", "/readyz", "/metrics", "/api/info"):
            assert client.get(path).status_code == 200
        assert client.post("/metrics").status_code == 405
    seen = [
        (r.fields["route"], r.fields["status"], r.levelname)
        for r in runtime_log.records
        if r.name == "runtime.access"
    ]  # type: ignore[attr-defined]
    assert seen == [
        ("/healthz", 200, "DEBUG"),
        ("/readyz", 200, "DEBUG"),
        ("/metrics", 200, "DEBUG"),
        ("/api/info", 200, "INFO"),
        ("/metrics", 405, "INFO"),
    ]


def test_access_log_is_json_with_request_id_and_no_file_names(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture
) -> None:
    settings = dataclasses.replace(Settings(bundle=str(tiny_bundle), threads=1))
    access = runtime_log.at_level(logging.INFO, logger="runtime.access")
    with TestClient(create_app(settings)) as client, access:
        client.post(
            "/api/predict",
            files={"file": ("patient-jane-doe.jpg", solid())},
            headers={"x-request-id": "r-1"},
        )
        # Refusals name their error code (what the answer said), from the app and from the middleware.
        client.post("/api/predict", files={"file": ("jane.jpg", b"junk")})
        client.post("/api/predict", content=b"x" * 100, headers={"content-length": "999999999999"})
        client.get("/api/nowhere")
    records = [r for r in runtime_log.records if r.name == "runtime.access"]
    assert len(records) == 4 and records[0].fields["request_id"] == "r-1"  # type: ignore[attr-defined]
    from runtime.logs import JsonFormatter

    lines = [JsonFormatter().format(r) for r in records]
    entries = [json.loads(line) for line in lines]
    assert entries[0]["route"] == "/api/predict" and entries[0]["status"] == 200 and "error" not in entries[0]
    assert [(e["status"], e.get("error")) for e in entries[1:]] == [
        (400, "not_an_image"),
        (413, "body_too_large"),
        (404, "not_found"),
    ]
    assert not any("jane" in line for line in lines)


@pytest.mark.slow
def test_slow_client_gets_408_without_holding_the_server(tiny_bundle: Path) -> None:
    url, proc = start_server(tiny_bundle, env={"SKIN_BODY_TIMEOUT_S": "1"})
    try:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n--b\r\n"
            )
            started = time.monotonic()
            # Meanwhile the server keeps answering others.
            with socket.create_connection((host, int(port)), timeout=5) as other:
                other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"200 OK" in other.recv(4096)
            answer = b""
            while b"body_timeout" not in answer and (chunk := sock.recv(4096)):
                answer += chunk
            assert b"408" in answer.split(b"\r\n", 1)[0] and b"body_timeout" in answer
            assert time.monotonic() - started < 5
            assert b"\r\nconnection: close\r\n" in answer.lower()
            # And the connection goes: uvicorn would otherwise read and drop the rest for as long as it came,
            # with no timer left to stop it.
            sock.settimeout(5)  # kept open, recv() times out: the test fails
            closed = False
            try:
                for _ in range(50):
                    sock.sendall(b"x" * 100)
                    if sock.recv(4096) == b"":
                        closed = True
                        break
            except ConnectionError:  # reset while sending: closed too
                closed = True
            assert closed
    finally:
        assert stop_server(proc) in (0, -15)


@pytest.mark.slow
def test_connections_that_sent_no_body_hold_no_upload_place(tiny_bundle: Path) -> None:
    # Past SKIN_MAX_UPLOADS (16), POST heads with no body each held a place until its body deadline, renewable
    # for ever: every other client got 503. They hold no memory, so they block nobody.
    url, proc = start_server(tiny_bundle)
    host, port = url.removeprefix("http://").split(":")
    idle: list[socket.socket] = []
    try:
        for _ in range(20):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
            idle[-1].sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1000000\r\n\r\n"
            )
        deadline = time.monotonic() + 10
        while (
            _in_flight(url) < 21 and time.monotonic() < deadline
        ):  # the 20 wait for their bodies, + this one
            time.sleep(0.05)
        assert "primary" in post_file(url + "/api/predict", solid())  # urlopen raises at a 503
        for sock in idle:  # and none of them was refused either
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in idle:
            sock.close()
        assert stop_server(proc) in (0, -15)


def _in_flight(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return next(float(line.split()[-1]) for line in lines if line.startswith("skin_in_flight_requests "))


def test_upload_memory_is_bounded_by_the_bytes_held(tiny_bundle: Path) -> None:
    # SKIN_MAX_UPLOADS x SKIN_MAX_BODY_MB of body bytes at once: a request whose next bytes would overflow it
    # gets 503, and every request gives its bytes back when it ends, however it ends.
    noise = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    png = encode(Image.fromarray(noise), "PNG")
    image = _multipart(png)
    limit = 48 * 1024
    assert limit // 2 < len(image) < limit
    settings = Settings(
        bundle=str(tiny_bundle), threads=1, max_uploads=1, max_body_bytes=limit, body_timeout_s=1.0
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        uploads = client.app.state.uploads  # type: ignore[attr-defined]
        assert uploads.capacity == limit
        # One upload half sent, then stalled: it holds its half until its 408.
        filler = _multipart(b"\0" * 2 * limit)  # a file that never ends, for uploads cut short
        stalled, stalled_sent = _raw_post(client, [filler[: limit // 2 + 1]], length=limit, more=True)
        deadline = time.monotonic() + 5
        while uploads.held == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert uploads.held == limit // 2 + 1
        first = limit // 2  # more than is left
        refused, sent = _raw_post(client, [image[:first], image[first:]], length=len(image))
        refused.result(10)
        head = dict(sent[0]["headers"])  # type: ignore[arg-type]
        assert sent[0]["status"] == 503 and head[b"retry-after"] == b"1"
        assert json.loads(sent[1]["body"])["error"]["code"] == "overloaded"  # type: ignore[arg-type]
        assert head[b"connection"] == b"close"  # its body was not all read: the connection goes
        assert uploads.held == limit // 2 + 1  # the refused request gave back what it had taken
        stalled.result(10)
        assert stalled_sent[0]["status"] == 408 and uploads.held == 0
        assert client.post("/api/predict", files={"file": ("a.png", png)}).status_code == 200
        assert client.post("/api/predict/batch", files={"files": ("a.png", png)}).status_code == 200
        assert (
            client.post("/api/predict", content=b"x", headers={"content-type": "image/png"}).status_code
            == 400
        )
        assert uploads.held == 0
        cut_off, cut_sent = _raw_post(client, [filler[:1000]], length=limit, more=True, then_hang_up=True)
        cut_off.result(10)
        assert cut_sent[0]["status"] == 499 and uploads.held == 0
        thirds = [filler[i : i + limit // 2] for i in range(0, 3 * limit // 2, limit // 2)]
        chunked, chunked_sent = _raw_post(client, thirds, length=None)
        chunked.result(10)
        assert chunked_sent[0]["status"] == 413 and uploads.held == 0


def _multipart(data: bytes) -> bytes:
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    return head + data + b"\r\n--b0undary--\r\n"


def _raw_post(
    client: TestClient,
    chunks: list[bytes],
    *,
    length: int | None,
    more: bool = False,
    then_hang_up: bool = False,
) -> tuple[Any, list[dict[str, object]]]:
    """POST /api/predict into the client's app, its body in ``chunks``; ``more``: the client then sends
    nothing (or hangs up). Returns the running request and the messages it sends back."""
    headers = [(b"host", b"testserver"), (b"content-type", b"multipart/form-data; boundary=b0undary")]
    headers.append(
        (b"content-length", str(length).encode()) if length else (b"transfer-encoding", b"chunked")
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    messages = [
        {"type": "http.request", "body": c, "more_body": more or i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        if more and not then_hang_up:
            await anyio.sleep(60)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    return client.portal.start_task_soon(client.app, scope, receive, send), sent  # type: ignore[union-attr]


def test_uploads_over_a_megabyte_never_touch_the_disk(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Starlette's parser spools a part past 1 MB to a temporary file: uploads are health data, so never.
    rollovers = []
    real_rollover = tempfile.SpooledTemporaryFile.rollover

    def rollover(self: tempfile.SpooledTemporaryFile[bytes]) -> None:
        rollovers.append(self.tell())
        real_rollover(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", rollover)
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")
    assert 1.5 * 1024 * 1024 < len(big) < 10 * 1024 * 1024
    with TestClient(create_app(Settings(bundle=str(tiny_bundle), threads=1))) as client:
        one = client.post("/api/predict", files={"file": ("a.png", big, "image/png")})
        assert one.status_code == 200, one.text
        files = [("files", ("a.png", big, "image/png")), ("files", ("b.png", big, "image/png"))]
        batch = client.post("/api/predict/batch", files=files)
        assert batch.status_code == 200 and all("primary" in r for r in batch.json()["results"])
    assert rollovers == []


def test_decodes_at_once_are_bounded_by_the_cpus(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtime.app

    # More requests admitted than there are CPUs: only as many full-size images are decoded at once.
    monkeypatch.setattr(runtime.app, "available_cpus", lambda: 2)
    lock, running, most = threading.Lock(), 0, 0

    def counting_preprocess(data: bytes, size: tuple[int, int], **kwargs: object) -> np.ndarray:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.3)
        with lock:
            running -= 1
        return np.zeros((*size, 3), dtype=np.uint8)

    monkeypatch.setattr(runtime.app, "preprocess", counting_preprocess)
    settings = Settings(bundle=str(tiny_bundle), threads=1, inference_concurrency=6, max_queue=6)
    with TestClient(create_app(settings)) as client:
        statuses: list[int] = []

        def post() -> None:
            statuses.append(client.post("/api/predict", files={"file": ("a.jpg", solid())}).status_code)

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert statuses == [200] * 6 and most == 2


def test_body_over_the_limit_is_not_read_further() -> None:
    # Chunked upload with no Content-Length: reading stops at the limit, so memory stays at the limit.
    import asyncio

    from runtime.upload import ApiError, BodyLimitMiddleware, UploadBudget

    chunk = b"0" * 65536
    calls = 0

    async def receive() -> dict[str, object]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": chunk, "more_body": True}  # an endless body

    async def app(scope: object, receive, send) -> None:  # type: ignore[no-untyped-def]
        while True:
            await receive()

    limited = BodyLimitMiddleware(app, max_body_bytes=1024 * 1024, budget=UploadBudget(1 << 30))
    scope = {"type": "http", "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}
    with pytest.raises(ApiError) as info:
        asyncio.run(limited(scope, receive, None))  # type: ignore[arg-type]
    assert info.value.status == 413
    assert calls == 1024 * 1024 // len(chunk) + 1


def test_a_trickled_body_gets_one_deadline_not_one_per_chunk() -> None:
    # A byte every 0.1 s never waits a whole timeout for the next: the 408 comes from the body's total time.
    import asyncio

    from runtime.upload import ApiError, BodyLimitMiddleware, UploadBudget

    calls = 0

    async def receive() -> dict[str, object]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return {"type": "http.request", "body": b"x", "more_body": calls < 30}  # 3 s in all

    async def app(scope: object, receive, send) -> None:
        while (await receive())["more_body"]:
            pass

    limited = BodyLimitMiddleware(app, max_body_bytes=1024, budget=UploadBudget(1 << 30), timeout_s=0.5)
    scope = {"type": "http", "headers": [(b"content-type", b"multipart/form-data; boundary=b")]}
    with pytest.raises(ApiError) as info:
        asyncio.run(limited(scope, receive, None))  # type: ignore[arg-type]
    assert (info.value.status, info.value.code) == (408, "body_timeout")
    assert info.value.message.startswith("the upload took longer than 0.5 s; send a smaller image")
    assert calls <= 7


def test_unhandled_error_is_generic_json_with_headers_and_logged_with_request_id(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture
) -> None:
    origin = "https://app.example"
    settings = Settings(bundle=str(tiny_bundle), threads=1, cors_origins=(origin,))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]

        def broken() -> dict[str, object]:
            raise RuntimeError("secret detail /data/patient-jane.jpg")

        engine.info = broken
        with runtime_log.at_level(logging.INFO, logger="runtime"):
            response = client.get("/api/info", headers={"x-request-id": "req-500", "origin": origin})
    assert response.status_code == 500
    # A page on an allowed origin can read the error, not only a network failure.
    assert response.headers["access-control-allow-origin"] == origin
    assert "x-request-id" in response.headers["access-control-expose-headers"]
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal error; it has been logged"}
    }
    assert response.headers["x-request-id"] == "req-500"
    assert (
        response.headers["x-frame-options"] == "DENY"
        and "default-src 'self'" in response.headers["content-security-policy"]
    )
    assert "jane" not in response.text
    errors = [r for r in runtime_log.records if r.levelno == logging.ERROR]
    assert errors and errors[0].fields["request_id"] == "req-500"  # type: ignore[attr-defined]
    access = [r for r in runtime_log.records if r.name == "runtime.access"]
    assert access and access[-1].fields["status"] == 500  # type: ignore[attr-defined]
    assert access[-1].fields["error"] == "internal_error"  # type: ignore[attr-defined]


def _histogram_sum(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(f"{name}_sum"))


@pytest.mark.parametrize("gather", [0, 4], ids=["one at a time", "SKIN_GATHER=4"])
def test_inference_seconds_count_model_time_not_the_wait_for_a_slot(tiny_bundle: Path, gather: int) -> None:
    settings = Settings(
        bundle=str(tiny_bundle), threads=1, inference_concurrency=1, max_queue=4, gather=gather
    )
    with TestClient(create_app(settings)) as client:
        _slow_down(client, lambda: time.sleep(0.3))
        before = _histogram_sum(client.get("/metrics").text, "skin_inference_seconds")
        post = lambda: client.post("/api/predict", files={"file": ("a.jpg", solid())})  # noqa: E731
        workers = [threading.Thread(target=post) for _ in range(3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        text = client.get("/metrics").text
        runs = (
            3
            if not gather
            else sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("skin_gathered_images_count")
            )
        )
        spent = _histogram_sum(text, "skin_inference_seconds") - before
        # Queued behind each other the three waited up to 0.6 s more; only the runs themselves are counted.
        assert 0.3 * runs <= spent < 0.3 * runs + 0.25, (spent, runs)


def test_metrics_include_the_process_and_the_gc(tiny_bundle: Path) -> None:
    with TestClient(create_app(Settings(bundle=str(tiny_bundle), threads=1))) as client:
        text = client.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "python_info", "python_gc"):
        assert name in text, name


def test_runtime_logs_follow_uvicorns_log_level(tiny_bundle: Path) -> None:
    uvicorn_log, runtime_log = logging.getLogger("uvicorn.error"), logging.getLogger("runtime")
    kept = uvicorn_log.level, runtime_log.level
    try:
        uvicorn_log.setLevel(logging.WARNING)  # what `--log-level warning` does before the app starts
        with TestClient(create_app(Settings(bundle=str(tiny_bundle), threads=1))):
            assert runtime_log.level == logging.WARNING
        uvicorn_log.setLevel(logging.NOTSET)  # not run by uvicorn: info
        with TestClient(create_app(Settings(bundle=str(tiny_bundle), threads=1))):
            assert runtime_log.level == logging.INFO
    finally:
        uvicorn_log.setLevel(kept[0])
        runtime_log.setLevel(kept[1])


def test_a_request_holds_about_one_body_of_uploads_not_two() -> None:
    # Each part is copied out of the parser's in-memory file and that file closed at once: at most the body
    # and one part's copy at a time (SKIN_MAX_UPLOADS x SKIN_MAX_BODY_MB bounds upload memory, README).
    import asyncio
    import tracemalloc

    from starlette.requests import Request

    from runtime.upload import read_files

    mb, size = 1 << 20, 3 << 20
    body = b"".join(
        b'--B\r\nContent-Disposition: form-data; name="files"; filename="%d.jpg"\r\n\r\n' % i
        + bytes([i + 1]) * size
        + b"\r\n"
        for i in range(3)
    )
    chunks = [c[i : i + 65536] for c in (body + b"--B--\r\n",) for i in range(0, len(c), 65536)]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": len(chunks) > 0}

    async def read() -> tuple[int, float]:
        headers = [(b"content-type", b"multipart/form-data; boundary=B")]
        request = Request({"type": "http", "method": "POST", "headers": headers}, receive)  # type: ignore[arg-type]
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            parts = await read_files(request, "files", max_files=4)
            return len(parts), (tracemalloc.get_traced_memory()[1] - base) / mb
        finally:
            tracemalloc.stop()

    count, peak = asyncio.run(read())
    assert count == 3
    assert peak < (3 * size + size) / mb + 1  # the body and one part's copy (holding both copies: 18 MB)


@pytest.mark.parametrize("gather", [0, 4], ids=["one at a time", "SKIN_GATHER=4"])
def test_a_request_whose_client_left_while_queued_never_runs(tiny_bundle: Path, gather: int) -> None:
    settings = Settings(
        bundle=str(tiny_bundle),
        threads=1,
        inference_concurrency=1,
        max_queue=2,
        gather=gather,
        body_timeout_s=0.3,  # the upload's deadline passes while it waits: it bounds the upload, not this
    )
    release, runs = threading.Event(), []
    with TestClient(create_app(settings)) as client:
        _slow_down(client, lambda: (runs.append(1), release.wait(10)))
        first = threading.Thread(target=lambda: client.post("/api/predict", files={"file": ("a", solid())}))
        first.start()
        while not runs:
            time.sleep(0.01)
        # The second client uploads in full, then hangs up while the first holds the model.
        body = _multipart(solid())
        admission = client.app.state.admission  # type: ignore[attr-defined]
        second, sent = _raw_post(client, [body], length=len(body))
        deadline = time.monotonic() + 10
        while admission.active < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        release.set()
        second.result(10)
        first.join(10)
        assert len(runs) == 1  # only the first request's image went through the model
        assert sent[0]["status"] == 499
        assert 'skin_rejected_total{reason="client_closed"} 1.0' in client.get("/metrics").text


def test_an_error_in_the_cors_layer_is_answered_and_logged_like_any_other(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CORS middleware sits outside the catch that answers the app's errors: one of its own must not fall
    # through to Starlette's bare 500 (no request id, no security headers, no log line of ours).
    from runtime.app import JsonCORSMiddleware

    def broken(self: object, request_headers: object) -> None:
        raise RuntimeError("secret detail /data/patient-jane.jpg")

    monkeypatch.setattr(JsonCORSMiddleware, "preflight_response", broken)
    origin = "https://app.example"
    settings = Settings(bundle=str(tiny_bundle), threads=1, cors_origins=(origin,))
    preflight = {"origin": origin, "access-control-request-method": "POST", "x-request-id": "req-cors"}
    app = create_app(settings)
    with (
        TestClient(app, raise_server_exceptions=False) as client,
        runtime_log.at_level(logging.INFO, "runtime"),
    ):
        response = client.options("/api/predict", headers=preflight)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error" and "jane" not in response.text
    assert response.headers["x-request-id"] == "req-cors" and response.headers["x-frame-options"] == "DENY"
    errors = [r for r in runtime_log.records if r.levelno == logging.ERROR]
    assert errors and errors[0].fields["request_id"] == "req-cors"  # type: ignore[attr-defined]


@pytest.mark.parametrize("cors", [(), ("https://app.example",)], ids=["no-cors", "cors"])
def test_an_error_after_the_answer_started_is_logged_once(
    tiny_bundle: Path,
    runtime_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    cors: tuple[str, ...],
) -> None:
    from runtime.upload import BodyLimitMiddleware

    served = BodyLimitMiddleware.__call__

    async def late(self: BodyLimitMiddleware, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await served(self, scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("after the start")

    monkeypatch.setattr(BodyLimitMiddleware, "__call__", late)
    settings = Settings(bundle=str(tiny_bundle), threads=1, cors_origins=cors)
    app = create_app(settings)
    with (
        TestClient(app, raise_server_exceptions=False) as client,
        runtime_log.at_level(logging.INFO, "runtime"),
    ):
        client.get("/api/info")
    assert [r.getMessage() for r in runtime_log.records if r.levelno == logging.ERROR] == ["unhandled error"]
