from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.bundle_factory import make_bundle
from tests.images import solid
from tests.server import ROOT, free_port, post_file, server_output, start_server, stop_server


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_help() -> None:
    out = _run("--help")
    assert out.returncode == 0 and "--bundle" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "no bundle given", id="no-bundle"),
        pytest.param(["--bundle", "/nonexistent/bundle"], "does not exist", id="missing-dir"),
        pytest.param(["--bundle", __file__], "is a file, not a directory", id="a-file"),
        pytest.param(["--bundle", str(ROOT / "runtime")], "has no model.onnx", id="not-a-bundle"),
        # stat() fails on it (as on a folder that may not be searched): pathlib raises, not answers False
        pytest.param(["--bundle", "/" + "a" * 300], "cannot be read: File name too long", id="name-too-long"),
        pytest.param(["--bundle", str(ROOT / "runtime"), "--port", "70000"], "out of range", id="bad-port"),
    ],
)
def test_bad_bundle_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    # A free port: the default 8000 may be taken (a demo running), which is said before the bundle is read.
    out = _run(*args, *([] if "--port" in args else ["--port", str(free_port())]))
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("threads", ["-5", "abc", "1025"])
def test_bad_threads_is_one_line_and_exit_2(tiny_bundle: Path, threads: str) -> None:
    out = _run("--bundle", str(tiny_bundle), "--threads", threads)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--threads" in out.stderr and "from 0 to 1024" in out.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("100000", "WEB_CONCURRENCY must be at most 64, not 100000", id="huge"),
        pytest.param("-1", "WEB_CONCURRENCY must be at least 1, not -1", id="negative"),
        pytest.param("abc", "WEB_CONCURRENCY", id="not-a-number"),
    ],
)
def test_a_bad_web_concurrency_is_one_line_and_exit_2(tiny_bundle: Path, value: str, message: str) -> None:
    # skin-serve runs one process, but the same environment may start uvicorn's workers: it was taken as
    # a worker count "for uvicorn --workers N" and served.
    out = subprocess.run(
        [sys.executable, "-m", "runtime", "--bundle", str(tiny_bundle), "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**os.environ, "WEB_CONCURRENCY": value},
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("skin-serve: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_model_that_fails_its_warm_up_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # It loads and keeps the contract, then answers NaN (logits / 1e-45 overflow, as damaged weights would):
    # warmed up in uvicorn's lifespan, that was two log lines and exit 3.
    make_bundle(tmp_path, temperature=1e-45)
    out = _run("--bundle", str(tmp_path), "--port", str(free_port()))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        "skin-serve: the model fails on a blank image: the model returned malformed probabilities"
    )


def test_busy_port_is_one_line_and_exit_2(tiny_bundle: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        out = _run("--bundle", str(tiny_bundle), "--port", str(busy.getsockname()[1]))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "cannot listen on 127.0.0.1:" in out.stderr


@pytest.mark.slow
def test_skin_serve_serves_a_bundle_and_stops_on_sigterm(tiny_bundle: Path) -> None:
    command = [sys.executable, "-m", "runtime", "--bundle", str(tiny_bundle), "--port", "{port}"]
    url, proc = start_server(tiny_bundle, command=command)
    try:
        with urllib.request.urlopen(url + "/api/info") as response:
            assert json.load(response)["model_name"] == "tiny-test-model"
        answer = post_file(url + "/api/predict", solid("green"))
        assert answer["primary"]["label"] == "Eczema"  # type: ignore[index]
        # HTTP that h11 cannot parse never reaches the app; uvicorn's 400 is JSON like the app's errors.
        for framing in (b"Content-Length: abc\r\n", b"Content-Length: 5\r\nContent-Length: 6\r\n"):
            head, body = _raw(url, b"POST /api/predict HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
            assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert b"content-type: application/json" in head.lower()
            assert json.loads(body)["error"]["code"] == "bad_http"
        # Framing that breaks mid-body (a bad chunk size): the same 400, and the app, which sees only the
        # connection close, logs the 400 rather than a client that went away (499).
        head, body = _raw(
            url,
            b"POST /api/predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: bad-chunk\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\n--b\r\n\r\nzz\r\n",
        )
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert json.loads(body)["error"]["code"] == "bad_http"
        assert b"\r\nx-request-id: bad-chunk\r\n" in head.lower()  # the id its access line carries
        # No WebSocket route: an Upgrade request is answered by the app like any other, and not logged.
        upgrade = (
            b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        head, body = _raw(url, b"GET /api/nowhere" + upgrade)
        assert head.startswith(b"HTTP/1.1 404 Not Found\r\n") and b"x-request-id: " in head.lower()
        assert json.loads(body)["error"]["code"] == "not_found"
        head, _ = _raw(url, b"GET /" + upgrade)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert 'skin_rejected_total{reason="bad_http"} 1.0' in metrics
    finally:
        assert stop_server(proc) == 0
    # Every log line is JSON (uvicorn's own ones too); the one line per request carries the request id.
    lines = [line for line in server_output(proc).splitlines() if line.strip()]
    banner = [line for line in lines if line.startswith("skin-serve: ")]
    entries = [json.loads(line) for line in lines if line not in banner]
    assert len(banner) == 1 and entries
    requests = [e for e in entries if e.get("message") == "request"]
    assert {e["route"] for e in requests} >= {"/api/info", "/api/predict"}
    assert all(len(e["request_id"]) == 32 for e in requests if e["request_id"] != "bad-chunk")
    broken = [e for e in requests if e["request_id"] == "bad-chunk"]
    assert [(e["status"], e["error"]) for e in broken] == [(400, "bad_http")]
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    noise = ("upgrade", "websocket")  # uvicorn's "Unsupported upgrade request", "No supported WebSocket …"
    assert not [e for e in entries if any(word in e["message"].lower() for word in noise)]


def _raw(url: str, request: bytes) -> tuple[bytes, bytes]:
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.slow
def test_a_request_head_that_never_completes_is_dropped(tiny_bundle: Path) -> None:
    # uvicorn alone holds such a connection for ever; skin-serve gives the head SKIN_BODY_TIMEOUT_S too.
    import socket
    import time

    command = [sys.executable, "-m", "runtime", "--bundle", str(tiny_bundle), "--port", "{port}"]
    url, proc = start_server(tiny_bundle, command=command, env={"SKIN_BODY_TIMEOUT_S": "1"})
    host, port = url.removeprefix("http://").split(":")
    try:
        for sent in (b"", b"POST /api/predict HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(sent)
                started = time.monotonic()
                assert sock.recv(4096) == b""  # closed by the server, without an answer
                assert 0.8 < time.monotonic() - started < 5
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            # a whole request is answered; the next, half-sent head on the same connection is timed too
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):  # head and JSON body may come in separate packets
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            assert sock.recv(4096) == b""
            assert 0.8 < time.monotonic() - started < 5
        with urllib.request.urlopen(url + "/healthz") as response:  # the server itself is fine
            assert response.status == 200
    finally:
        assert stop_server(proc) == 0


@pytest.mark.slow
def test_uvicorn_app_from_environment_refuses_a_bad_bundle_in_one_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "uvicorn", "runtime.app:app", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"SKIN_BUNDLE": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode != 0
    assert "cannot start: bundle" in out.stderr and "has no model.onnx" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_then_exits_0(tiny_bundle: Path) -> None:
    import socket
    import time

    command = [sys.executable, "-m", "runtime", "--bundle", str(tiny_bundle), "--port", "{port}"]
    url, proc = start_server(tiny_bundle, command=command)
    host, port = url.removeprefix("http://").split(":")
    image = solid("blue")
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
    body = head + image + b"\r\n--b--\r\n"
    try:
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:50]
            )
            time.sleep(0.3)
            proc.terminate()  # SIGTERM while the upload is still arriving
            time.sleep(0.5)
            assert proc.poll() is None  # still draining
            with pytest.raises(OSError):  # and no longer accepting
                socket.create_connection((host, int(port)), timeout=2).close()
            sock.sendall(body[50:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b'"label":"Moles"' in answer
        assert proc.wait(timeout=20) == 0
    finally:
        stop_server(proc)


def test_threads_0_is_the_cpu_quota_not_an_error() -> None:
    from runtime.cli import build_parser

    assert build_parser().parse_args(["--threads", "0"]).threads == 0
    assert build_parser().parse_args([]).threads is None  # SKIN_THREADS decides


@pytest.mark.parametrize("port", [0, 65536])
def test_ports_outside_1_to_65535_are_refused(port: int) -> None:
    from runtime.cli import check_port

    with pytest.raises(ValueError, match="out of range"):
        check_port("127.0.0.1", port)


def test_a_busy_port_says_what_to_do() -> None:
    import socket

    from runtime.cli import check_port

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ValueError, match=r"pass --port N"):
            check_port("127.0.0.1", busy.getsockname()[1])


def test_serve_hands_uvicorn_what_skin_serve_promises(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    import uvicorn

    from runtime import app, cli

    served: dict[str, Any] = {}
    real_create_app = app.create_app

    def create_app(settings: Any, *, engine: Any) -> Any:
        served["settings"], served["engine"] = settings, engine
        return real_create_app(settings, engine=engine)

    monkeypatch.setattr(app, "create_app", create_app)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(kwargs))
    handlers: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.update({signum: handler}))
    from runtime.engine import Engine

    real_load = Engine.from_settings

    def load(settings: Any) -> Any:
        served["stoppable while loading"] = signal.SIGTERM in handlers  # a container's PID 1 drops it else
        return real_load(settings)

    monkeypatch.setattr(Engine, "from_settings", load)
    monkeypatch.setenv("SKIN_THREADS", "2")
    monkeypatch.setenv("SKIN_BODY_TIMEOUT_S", "7")
    monkeypatch.setenv("SKIN_MAX_BODY_MB", "2")
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    cli.serve(bundle=str(tiny_bundle), host="127.0.0.1", port=free_port(), threads=1, log_level="warning")
    assert served["engine"].threads == 1  # --threads over SKIN_THREADS
    assert served["http"].head_timeout_s == 7.0  # the head's limit too
    assert served["http"].linger_bytes == 4 * 2 * 1024 * 1024  # an early answer's lingering close: 4 bodies
    assert (served["workers"], served["access_log"]) == (1, False)
    assert served["log_level"] == "warning"
    assert served["log_config"]["loggers"]["uvicorn"]["level"] == "WARNING"  # JSON lines at that level
    assert signal.SIGTERM in handlers and served["stoppable while loading"]  # exit 0 either way
    with pytest.raises(SystemExit) as stopped:
        handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert stopped.value.code == 0
    err = capsys.readouterr().err
    assert "WEB_CONCURRENCY=4" in err and "runs one process" in err


def test_a_bundles_name_reaches_the_terminal_without_its_control_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal

    import uvicorn

    from runtime import cli

    # A bundle from someone else: an escape sequence retitles the terminal, a line break forges a line.
    name = 'tiny\x1b]0;owned\x07\n{"level": "error"}'
    bundle = make_bundle(tmp_path / "b", metadata={"skin.model_name": name, "skin.model_version": "1\x1b[2J"})
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # pytest's own SIGTERM stays
    cli.serve(bundle=str(bundle), host="127.0.0.1", port=free_port(), threads=1, log_level="warning")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and out.count("\n") == 1
    assert out.startswith('skin-serve: tiny\\x1b]0;owned\\x07\\n{"level": "error"} 1\\x1b[2J on http://')


def test_ctrl_c_is_a_clean_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime import cli

    def interrupted(**kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "serve", interrupted)
    assert cli.main(["--bundle", "anywhere"]) == 0


def test_a_request_still_running_when_the_shutdown_grace_ends_gets_a_json_503(tiny_bundle: Path) -> None:
    # uvicorn cancels it: a plain-text "500 Internal Server Error" (no request id, no security headers), and
    # "Exception in ASGI application" with a CancelledError traceback in the log.
    serving = "import sys; from runtime.cli import serve; "
    serving += "serve(bundle=sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), grace_s=1)"
    url, proc = start_server(tiny_bundle, command=[sys.executable, "-c", serving, str(tiny_bundle), "{port}"])
    try:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            # An upload that stalls: its body never all arrives within the grace.
            head = (
                "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            )
            head += "X-Request-ID: stalled\r\nContent-Length: 100000\r\n\r\n"
            part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\nPIXELS'
            sock.sendall(head.encode() + part)
            time.sleep(0.5)
            proc.terminate()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert proc.wait(timeout=15) == 0
    finally:
        stop_server(proc)
    top, _, body = answer.partition(b"\r\n\r\n")
    headers = top.lower().split(b"\r\n")
    assert headers[0] == b"http/1.1 503 service unavailable"
    assert {
        b"retry-after: 1",
        b"x-request-id: stalled",
        b"x-frame-options: deny",
        b"connection: close",
    } <= set(headers)
    assert json.loads(body)["error"]["code"] == "shutting_down"
    # Logged once, in its access line; no traceback, and nothing of the upload.
    output = server_output(proc)
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert not [e for e in entries if "exception" in e or e["level"] == "error" and "ASGI" in e["message"]]
    mine = [e for e in entries if e.get("request_id") == "stalled"]
    assert [(e["message"], e["status"], e["error"]) for e in mine] == [("request", 503, "shutting_down")]
    assert b"PIXELS" not in output.encode()
