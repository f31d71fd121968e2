"""Start the runtime as a real uvicorn process for end-to-end tests (browser, CLI, signals)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LOGS: dict[int, Path] = {}  # server pid → the file its stdout and stderr go to
# One folder for every server's log, removed when the test run ends (a folder per server was left in /tmp).
_LOG_DIR = tempfile.TemporaryDirectory(prefix="skin-server-")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def answering(path: str, body: bytes) -> Iterator[str]:
    """A stand-in HTTP server on 127.0.0.1 answering GET ``path`` 200 with ``body`` (anything else 404), in a
    thread; yields its base URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == path
            self.send_response(200 if found else 404)
            self.send_header("content-length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def start_server(
    bundle_dir: str | Path,
    *,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[str, subprocess.Popen[bytes]]:
    """Run ``uvicorn runtime.app:app`` (or ``command`` with {port}) on a free port; wait for /readyz."""
    port = free_port()
    args = (
        [a.format(port=port) for a in command]
        if command
        else [
            sys.executable,
            "-m",
            "uvicorn",
            "runtime.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    )
    full_env = {**os.environ, "SKIN_BUNDLE": str(bundle_dir), "SKIN_THREADS": "1", **(env or {})}
    # A file, not a pipe: a chatty server must never block on a full pipe.
    fd, name = tempfile.mkstemp(prefix="server-", suffix=".log", dir=_LOG_DIR.name)
    log_path = Path(name)
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    _LOGS[proc.pid] = log_path
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log_path.read_text(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                if response.status == 200:
                    return url, proc
        except OSError:
            time.sleep(0.1)
    stop_server(proc)
    raise RuntimeError(f"server on {url} was not ready within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, then wait; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def server_output(proc: subprocess.Popen[bytes]) -> str:
    """What the server has printed so far (stdout and stderr together)."""
    return _LOGS[proc.pid].read_text(errors="replace")


def post_file(
    url: str, data: bytes, *, filename: str = "image.jpg", field: str = "file"
) -> dict[str, object]:
    """POST one file as multipart/form-data with the standard library; returns the decoded JSON answer."""
    boundary = "testboundary42"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        url, data=body, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
