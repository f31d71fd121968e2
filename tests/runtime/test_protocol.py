"""The HTTP protocol skin-serve runs (runtime/protocol.py), driven in-process: a request head has a time
limit of its own, and malformed HTTP gets the API's JSON error shape; and through a real server, an answer
sent before the body was read reaches the client (a lingering close)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import Server, ServerState

from runtime.app import RequestMiddleware, create_app
from runtime.engine import Engine
from runtime.metrics import Metrics
from runtime.protocol import H11Protocol
from runtime.settings import Settings
from runtime.upload import BAD_HTTP, BodyLimitMiddleware
from tests.images import solid
from tests.server import start_server, stop_server


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed, self.aborted, self.written = False, False, b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False  # as TLS: no lingering close (the real server's is tested below), a close is at once

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _connect(head_timeout_s: float, app: Any = _ok) -> tuple[H11Protocol, _Transport]:
    # No log_config or log_level: uvicorn would set its loggers' levels for the rest of the test session (and
    # the app's loggers follow uvicorn.error's level).
    config = Config(app=app, timeout_keep_alive=5, log_config=None)
    protocol = H11Protocol.with_head_timeout(head_timeout_s)(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_a_connection_that_sends_no_head_is_closed_after_the_head_timeout() -> None:
    async def scenario() -> tuple[bool, bool]:
        _, silent = await _connect(0.5)  # wide: a stalled loop must not fire the timer before the first look
        await asyncio.sleep(0.02)
        early = silent.closed
        await asyncio.sleep(0.8)
        return early, silent.closed

    assert asyncio.run(scenario()) == (False, True)


def test_the_head_timer_stops_once_a_head_arrives() -> None:
    # After a whole request the keep-alive timer governs the idle connection (5 s here), not the head timer.
    async def scenario() -> tuple[bytes, bool]:
        protocol, transport = await _connect(0.1)
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.3)
        closed = transport.closed
        protocol.connection_lost(None)
        return transport.written, closed

    written, closed = asyncio.run(scenario())
    assert written.startswith(b"HTTP/1.1 200") and written.endswith(b"ok")
    assert not closed


def test_a_client_that_reads_none_of_its_answer_is_cut_off_after_the_timeout() -> None:
    # Pipelined requests whose answers are never read: the socket fills, and uvicorn held it for ever.
    async def scenario() -> tuple[bool, bool, bool]:
        protocol, stuck = await _connect(0.5)
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.pause_writing()  # what the transport says when its buffer is full
        reader, reading = await _connect(0.5)
        reader.pause_writing()
        await asyncio.sleep(0.02)
        reader.resume_writing()  # the client read some: it may take its time
        early = stuck.aborted
        await asyncio.sleep(0.8)
        protocol.connection_lost(None)  # as the transport does once aborted: the app's send returns
        reader.connection_lost(None)
        return early, stuck.aborted, reading.aborted

    assert asyncio.run(scenario()) == (False, True, False)


async def _closing(scope: Any, receive: Any, send: Any) -> None:
    headers = [(b"content-length", b"2"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_closed_connection_whose_answer_is_never_read_is_cut_off_after_the_timeout() -> None:
    # A socket closes once what was written has gone out: uvicorn held one for ever when the client read none
    # of it and it was too little to fill the transport's buffer (no pause_writing, so no write timer).
    async def scenario() -> tuple[bool, bool, bool]:
        protocol, closed = await _connect(0.5, app=_closing)  # closed after its answer, as uvicorn does
        protocol.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        half, hung_up = await _connect(0.5)
        half.data_received(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.02)
        assert half.eof_received() is None  # the client's FIN, all answered: asyncio closes it
        hung_up.close()
        early = closed.aborted or hung_up.aborted
        await asyncio.sleep(0.8)  # the transports never report the connection lost: their answers sit unsent
        protocol.connection_lost(None)
        half.connection_lost(None)
        return early, closed.aborted, hung_up.aborted

    assert asyncio.run(scenario()) == (False, True, True)


def test_malformed_http_is_a_json_400_that_closes_the_connection() -> None:
    async def scenario() -> tuple[_Transport, bool]:
        protocol, transport = await _connect(30)
        protocol.data_received(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        closed = transport.closed  # at once, not when the client goes
        protocol.connection_lost(None)
        return transport, closed

    transport, closed = asyncio.run(scenario())
    head, _, body = transport.written.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"http/1.1 400 bad request"
    assert {
        b"content-type: application/json",
        b"connection: close",
        f"content-length: {len(body)}".encode(),
    } <= set(lines)
    assert json.loads(body)["error"]["code"] == "bad_http"
    assert closed
    # The headers every answer carries (README: HTTP API), a request id included.
    assert {b"x-content-type-options: nosniff", b"x-frame-options: deny", b"cache-control: no-store"} <= set(
        lines
    )
    assert any(line.startswith(b"content-security-policy: default-src 'self'") for line in lines)
    ids = [line.split(b": ", 1)[1] for line in lines if line.startswith(b"x-request-id: ")]
    assert len(ids) == 1 and len(ids[0]) == 32


def test_framing_that_breaks_after_the_answer_only_closes_the_connection() -> None:
    # The app answers before reading the body (as a 405 or a 413 does); the bad chunk comes after.
    async def scenario() -> tuple[_Transport, list[dict[str, Any]]]:
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        protocol, transport = await _connect(30)
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)  # the app's task answers
        protocol.data_received(b"zz\r\n")
        protocol.connection_lost(None)
        return transport, errors

    transport, errors = asyncio.run(scenario())
    assert transport.written.startswith(b"HTTP/1.1 200") and transport.written.endswith(b"ok")
    assert transport.closed and errors == []


@pytest.mark.parametrize("method", [pytest.param("GET", id="get"), pytest.param("HEAD", id="head")])
def test_framing_that_breaks_before_the_app_answers_leaves_the_400_alone(method: str) -> None:
    # The bad chunk comes in the head's own read, so the 400 goes out before the app runs; a GET (or a 405)
    # then answers without reading the body. Its answer went into h11, which raised: two logged tracebacks.
    async def scenario() -> tuple[_Transport, list[Any]]:
        raised: list[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: raised.append(context))

        async def answer(scope: Any, receive: Any, send: Any) -> None:
            try:
                await _ok(scope, receive, send)
            except Exception as exc:
                raised.append(exc)

        protocol, transport = await _connect(30, answer)
        wire = f"{method} /api/info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        protocol.data_received(wire.encode())
        for _ in range(5):
            await asyncio.sleep(0)  # the app's task answers
        protocol.connection_lost(None)
        return transport, raised

    transport, raised = asyncio.run(scenario())
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and transport.closed and raised == []
    if method == "HEAD":  # the headers only, as for any answer to HEAD
        assert body == b""
    else:
        assert json.loads(body)["error"]["code"] == "bad_http"  # and nothing after it


def test_a_request_answered_bad_http_mid_body_is_logged_and_counted_as_that() -> None:
    # Whatever the app answered after runtime/protocol.py's 400 went nowhere: the log and metrics say 400.
    metrics = Metrics()

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        scope[BAD_HTTP] = True  # as the protocol marks the request before the app answers
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def nowhere(message: Any) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/api/info", "headers": []}
    asyncio.run(RequestMiddleware(answer, metrics)(scope, nowhere, nowhere))
    sample = metrics.registry.get_sample_value
    assert sample("skin_requests_total", {"route": "/api/info", "status": "400"}) == 1
    assert sample("skin_requests_total", {"route": "/api/info", "status": "200"}) is None
    assert sample("skin_rejected_total", {"reason": "bad_http"}) == 1


async def _read_body(scope: Any, receive: Any, send: Any) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        size, more = size + len(message.get("body", b"")), message.get("more_body", False)
    body = str(size).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]}
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body_slowly(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await asyncio.sleep(0.1)  # the client's FIN comes while the model runs
    await _ok(scope, receive, send)


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.0\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n",
    ],
    ids=["http-1.0", "connection-close", "upgrade"],
)
def test_a_client_that_half_closes_after_a_last_request_gets_its_answer(head: bytes) -> None:
    # h11 has such a client in MUST_CLOSE (or MIGHT_SWITCH_PROTOCOL), not DONE, once its request is whole:
    # its FIN closed the connection, the answer unsent (printf 'POST … HTTP/1.0 …' | nc -N got nothing).
    async def scenario() -> tuple[bool | None, bytes, bool]:
        protocol, transport = await _connect(5, app=_read_body_slowly)
        protocol.data_received(head + b"Content-Length: 2\r\n\r\nhi")
        await asyncio.sleep(0.02)
        kept = protocol.eof_received()
        if not kept:  # what asyncio does then
            transport.close()
            protocol.connection_lost(None)
        await asyncio.sleep(0.2)
        return kept, transport.written, transport.closed

    kept, written, closed = asyncio.run(scenario())
    assert kept and written.startswith(b"HTTP/1.1 200") and written.endswith(b"ok") and closed


def _chunked_upload(chunks: list[bytes]) -> tuple[bytes, bool]:
    """What the server writes for a chunked POST of ``chunks``, fed in 64 KiB reads; and whether it closed."""

    async def scenario() -> tuple[bytes, bool]:
        config = Config(app=_read_body, timeout_keep_alive=5, log_config=None)
        protocol = H11Protocol(
            config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
        )
        transport = _Transport()
        protocol.connection_made(transport)
        wire = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
        for start in range(0, len(wire), 65536):
            if not transport.closed:
                protocol.data_received(wire[start : start + 65536])
            for _ in range(5):
                await asyncio.sleep(0)  # the app reads what came
        closed = transport.closed
        protocol.connection_lost(None)
        return transport.written, closed

    return asyncio.run(scenario())


def test_a_body_in_many_tiny_chunks_is_refused_before_it_stalls_the_server() -> None:
    # h11 spends ~15 us of the event loop per chunk: 1-byte chunks made every other client wait seconds.
    written, closed = _chunked_upload([b"x"] * 5000)
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and closed
    error = json.loads(body)["error"]
    assert error["code"] == "bad_http" and "chunks" in error["message"]


def test_chunked_bodies_in_buffer_sized_chunks_are_read() -> None:
    # As many small chunks as allowed, then many of a usual buffer's size: the whole body reaches the app.
    chunks = [b"x"] * 1024 + [b"y" * 1024] * 2000
    written, closed = _chunked_upload(chunks)
    assert written.startswith(b"HTTP/1.1 200") and not closed
    assert written.endswith(str(sum(map(len, chunks))).encode())


class _HalfClosing(_Transport):
    def __init__(self) -> None:
        super().__init__()
        self.eof = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True


async def _refuse_unread(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"error": {"code": "body_too_large"}}'
    headers = [(b"content-length", b"%d" % len(body)), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _preflight(scope: Any, receive: Any, send: Any) -> None:
    # As Starlette's CORS middleware answers one: neither the body read nor "Connection: close".
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def _lingering(
    monkeypatch: pytest.MonkeyPatch, app: Any = _refuse_unread
) -> Callable[[], Awaitable[tuple[H11Protocol, _HalfClosing]]]:
    """Connects a client whose 413 went out before its body was read: lingering 1 s, 0.4 s idle, 1000 B."""
    monkeypatch.setattr("runtime.protocol.LINGER_IDLE_S", 0.4)

    async def connect() -> tuple[H11Protocol, _HalfClosing]:
        config = Config(app=app, timeout_keep_alive=5, log_config=None)
        protocol = H11Protocol.with_head_timeout(1.0, linger_bytes=1000)(
            config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
        )
        transport = _HalfClosing()
        protocol.connection_made(transport)
        protocol.data_received(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)  # the app's task answers
        return protocol, transport

    return connect


def test_a_body_sent_after_its_answer_is_read_and_dropped_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Closing with the body unread made the kernel reset the connection: clients saw that, not the 413.
    connect = _lingering(monkeypatch)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        protocol, transport = await connect()
        seen["answer"] = transport.written
        seen["at_answer"] = (transport.eof, transport.closed)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not transport.closed and loop.time() - started < 3:  # never idle: the total bound (1 s) ends it
            protocol.data_received(b"x" * 10)
            await asyncio.sleep(0.1)
        seen["closed_after"] = loop.time() - started
        protocol.connection_lost(None)

        protocol, idle = await connect()
        await asyncio.sleep(0.7)
        seen["idle"] = idle.closed
        protocol.connection_lost(None)

        protocol, flood = await connect()
        protocol.data_received(b"x" * 900)
        seen["under_the_cap"] = flood.closed
        protocol.data_received(b"x" * 200)
        seen["over_the_cap"] = flood.closed
        protocol.connection_lost(None)

        protocol, stopping = await connect()
        protocol.shutdown()
        seen["shutdown"] = stopping.closed
        protocol.connection_lost(None)
        return seen

    seen = asyncio.run(scenario())
    assert seen.pop("answer").startswith(b"HTTP/1.1 413")
    assert 0.9 < seen.pop("closed_after") < 1.6
    assert seen == {
        "at_answer": (True, False),  # the answer, then a FIN; still reading
        "idle": True,
        "under_the_cap": False,
        "over_the_cap": True,
        "shutdown": True,
    }


def test_an_answer_kept_alive_with_its_body_unread_closes_as_an_early_answer_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvicorn kept such a connection and dropped the body (an endless chunked one: for ever, no timer).
    connect = _lingering(monkeypatch, app=_preflight)

    async def scenario() -> tuple[bytes, bool, bool]:
        protocol, transport = await connect()
        for _ in range(8):  # the body keeps coming, never idle for long
            protocol.data_received(b"x" * 10)
            await asyncio.sleep(0.1)
        lingering = transport.eof and not transport.closed  # the answer, a FIN; the body read and dropped
        await asyncio.sleep(0.6)  # idle past 0.4 s
        protocol.connection_lost(None)
        return transport.written, lingering, transport.closed

    written, lingering, closed = asyncio.run(scenario())
    assert written.startswith(b"HTTP/1.1 200") and lingering and closed


def test_a_client_that_resets_as_its_early_answer_ends_is_no_server_error() -> None:
    # Its RST came between the answer's last write and the FIN after it: shutdown() raised ENOTCONN into the
    # app's send, logged as an "unhandled error" with a traceback (5 in 300 PUTs with a body, reset at once).
    class _Reset(_HalfClosing):
        def write_eof(self) -> None:
            raise OSError(107, "Transport endpoint is not connected")

    raised: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await _refuse_unread(scope, receive, send)
        except BaseException as exc:
            raised.append(exc)

    async def scenario() -> _Reset:
        config = Config(app=app, timeout_keep_alive=5, log_config=None)
        protocol = H11Protocol(
            config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
        )
        transport = _Reset()
        protocol.connection_made(transport)
        protocol.data_received(b"PUT /api/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)  # the app's task answers
        protocol.connection_lost(None)
        return transport

    transport = asyncio.run(scenario())
    assert raised == [] and transport.written.startswith(b"HTTP/1.1 413") and transport.closed


def _skin_serve(tiny_bundle: Path, **env: str) -> tuple[str, Any]:
    command = [sys.executable, "-m", "runtime", "--bundle", str(tiny_bundle), "--port", "{port}"]
    return start_server(tiny_bundle, command=command, env={"SKIN_MAX_BODY_MB": "4", **env})


def _head(url: str, path: str, length: int) -> tuple[socket.socket, bytes]:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    return sock, f"{head}Content-Length: {length}\r\n\r\n".encode()


def test_an_answer_before_the_body_reaches_the_client_not_a_reset(tiny_bundle: Path) -> None:
    # 12 MB, 3x the 4 MB limit: more than the sockets' buffers hold, so the server's close came mid-upload.
    url, proc = _skin_serve(tiny_bundle)
    body = b"x" * (12 * 1024 * 1024)
    try:
        request = urllib.request.Request(
            url + "/api/predict", data=body, headers={"content-type": "image/jpeg"}
        )
        with pytest.raises(
            urllib.error.HTTPError
        ) as refused:  # not URLError: "connection reset", "broken pipe"
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        assert json.loads(refused.value.read())["error"]["code"] == "body_too_large"
        # A raw client that writes all of its body first, for a 413 and for an early answer of the app's own.
        for path, length, status in (
            ("/api/predict", len(body), b"413"),
            ("/api/info", 3 * 1024 * 1024, b"405"),
        ):
            sock, head = _head(url, path, length)
            with sock:
                sock.sendall(head + body[:length])
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            top, _, content = answer.partition(b"\r\n\r\n")
            assert top.split(b" ")[1] == status and b"\r\nconnection: close" in top.lower()
            assert json.loads(content)["error"]["code"] in ("body_too_large", "method_not_allowed")
    finally:
        assert stop_server(proc) == 0


@pytest.mark.slow
def test_a_lingering_close_is_bounded_and_holds_up_neither_others_nor_a_shutdown(tiny_bundle: Path) -> None:
    url, proc = _skin_serve(tiny_bundle, SKIN_BODY_TIMEOUT_S="3")
    try:
        sock, head = _head(url, "/api/predict", 10**12)
        with sock:
            sock.sendall(head)
            answer = b""
            while chunk := sock.recv(65536):  # the answer, then the server's FIN
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 413")
            started = time.monotonic()
            # A byte every 0.2 s, never idle for long: the server drops them until its bound (3 s in all).
            closed = False
            while not closed and time.monotonic() - started < 10:
                try:
                    sock.sendall(b"x")
                except OSError:  # reset: the server has closed
                    closed = True
                # others are served meanwhile
                with urllib.request.urlopen(url + "/healthz", timeout=2) as other:
                    assert other.status == 200
                time.sleep(0.2)
            assert closed and 2.5 < time.monotonic() - started < 5
        # A server told to stop waits for no lingering client (uvicorn waits for every connection).
        sock, head = _head(url, "/api/predict", 10**12)
        with sock:
            sock.sendall(head)
            assert sock.recv(65536).startswith(b"HTTP/1.1 413")
            started = time.monotonic()
            assert stop_server(proc) == 0
            assert time.monotonic() - started < 2.5
    finally:
        stop_server(proc)


def test_a_client_that_half_closes_after_its_request_gets_its_answer(tiny_bundle: Path) -> None:
    # shutdown(SHUT_WR) once the request is out (nc -N, some HTTP/1.0 tools): uvicorn closed at the client's
    # FIN, its answer unsent. Two pipelined requests: both answered, then the server closes at once.
    url, proc = _skin_serve(tiny_bundle)
    try:
        host, port = url.removeprefix("http://").split(":")
        upload = solid("red", fmt="PNG")
        head = (
            "POST /api/predict?heatmap=false HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
        )
        part = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + upload + b"\r\n--b--\r\n"
        )
        requests = [
            f"{head}Content-Length: {len(part)}\r\n\r\n".encode() + part,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        for sent in (requests[:1], requests):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(b"".join(sent))
                sock.shutdown(socket.SHUT_WR)
                started, answer = time.monotonic(), b""
                while chunk := sock.recv(65536):
                    answer += chunk
                closed_after = time.monotonic() - started
            assert answer.count(b"HTTP/1.1 200 OK") == len(sent), answer[:300]
            assert b'"primary"' in answer
            assert closed_after < 2  # closed once answered, not at the 5 s keep-alive timeout
        # A FIN before the request is whole still just closes (nothing to answer).
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(requests[0][:-10])
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(65536) == b""
    finally:
        assert stop_server(proc) == 0


async def _in_uvicorn(app: Any, request: bytes, stop_after_s: float | None = None, **config: Any) -> bytes:
    """What a client that sends ``request`` reads, until the server closes, from ``app`` served in-process by
    uvicorn with skin-serve's protocol; told to stop ``stop_after_s`` after the request, if given."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = Server(Config(app=app, http=H11Protocol, log_config=None, **config))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(request)
        if stop_after_s is not None:
            await asyncio.sleep(stop_after_s)
            server.should_exit = True
        answer = await asyncio.wait_for(reader.read(), 10)  # not a hang: the server closes
        writer.close()
        return answer
    finally:
        server.should_exit = True
        await serving


def test_an_error_after_the_answer_started_is_logged_once_and_cuts_the_answer_short(
    tiny_bundle: Path,
    runtime_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvicorn logged it a second time, "Exception in ASGI application" with the same traceback.
    served = BodyLimitMiddleware.__call__

    async def late(self: BodyLimitMiddleware, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await served(self, scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        raise RuntimeError("after the start")

    monkeypatch.setattr(BodyLimitMiddleware, "__call__", late)
    app = create_app(Settings(bundle=str(tiny_bundle), threads=1))
    server_log = logging.getLogger("uvicorn.error")  # skin-serve's config stops it propagating to caplog
    server_log.addHandler(runtime_log.handler)
    try:
        answer = asyncio.run(_in_uvicorn(app, b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n"))
    finally:
        server_log.removeHandler(runtime_log.handler)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n12345")  # 5 of 10 bytes
    errors = [r for r in runtime_log.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage()) for r in errors] == [("runtime", "unhandled error")]


@pytest.mark.parametrize("gather", [pytest.param(1, id="alone"), pytest.param(2, id="gathered")])
def test_a_request_cancelled_at_shutdown_while_its_image_is_classified_gets_a_json_503(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, gather: int
) -> None:
    settings = Settings(bundle=str(tiny_bundle), threads=1, gather=gather)
    engine = Engine.from_settings(settings)
    engine.warmup()
    release, run = threading.Event(), engine.run

    def stuck(images: Any) -> Any:  # a model run that outlasts the shutdown grace
        release.wait(10)
        return run(images)

    monkeypatch.setattr(engine, "run", stuck)
    part = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        + solid("red", fmt="PNG")
        + b"\r\n--b--\r\n"
    )
    head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    request = head + b"Content-Length: %d\r\n\r\n" % len(part) + part
    app = create_app(settings, engine=engine)
    try:
        answer = asyncio.run(_in_uvicorn(app, request, stop_after_s=0.5, timeout_graceful_shutdown=1))
    finally:
        release.set()
    top, _, body = answer.partition(b"\r\n\r\n")
    assert top.startswith(b"HTTP/1.1 503") and b"\r\nretry-after: 1" in top
    assert json.loads(body)["error"]["code"] == "shutting_down"
    assert [
        r.getMessage() for r in runtime_log.records if r.name == "runtime" and r.levelno >= logging.WARNING
    ] == []


def test_an_answer_cancelled_at_shutdown_after_its_start_is_cut_short_and_logged_once(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = BodyLimitMiddleware.__call__

    async def stalled(self: BodyLimitMiddleware, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await served(self, scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        await asyncio.Event().wait()  # the rest never comes within the grace

    monkeypatch.setattr(BodyLimitMiddleware, "__call__", stalled)
    app = create_app(Settings(bundle=str(tiny_bundle), threads=1))
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(runtime_log.handler)
    try:
        request = b"GET /api/info HTTP/1.1\r\nHost: x\r\n\r\n"
        answer = asyncio.run(_in_uvicorn(app, request, stop_after_s=0.3, timeout_graceful_shutdown=1))
    finally:
        server_log.removeHandler(runtime_log.handler)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n12345")
    assert not [r for r in runtime_log.records if r.exc_info]  # no traceback, uvicorn's or ours
    assert "answer cut short: the server is shutting down" in runtime_log.messages
