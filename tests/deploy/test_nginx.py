"""deploy/nginx/skin-runtime.conf: limits that agree with the app, checked by a real nginx in front of it."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from runtime.settings import MB, Settings
from tests.deploy import dockerfile
from tests.images import solid
from tests.server import ROOT, free_port, start_server, stop_server

CONF = ROOT / "deploy" / "nginx" / "skin-runtime.conf"
TLS = ssl.create_default_context()  # for the throw-away certificate: not verified
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE


def _directives(name: str) -> list[str]:
    text = re.sub(r"#.*", "", CONF.read_text(encoding="utf-8"))
    return [m.strip() for m in re.findall(rf"^\s*{name}\s+([^;{{}}]*);", text, flags=re.MULTILINE)]


def test_body_cap_matches_the_apps_limit() -> None:
    (cap,) = _directives("client_max_body_size")
    assert cap.endswith("m") and int(cap[:-1]) * MB == Settings().max_body_bytes


def test_a_stalled_upload_meets_the_apps_deadline_before_nginxs() -> None:
    (timeout,) = _directives("client_body_timeout")
    assert timeout.endswith("s") and int(timeout[:-1]) > Settings().body_timeout_s


def test_idle_upstream_connections_close_before_uvicorn_closes_them() -> None:
    # Else a request sent on a connection uvicorn is closing as idle is a 502 (a POST is never retried).
    from uvicorn.config import Config

    (timeout,) = _directives("keepalive_timeout")  # the upstream block's: the only one in the file
    assert timeout.endswith("s") and int(timeout[:-1]) < Config(app=None).timeout_keep_alive


def test_upstream_is_the_images_port_and_metrics_stay_private() -> None:
    expose = dockerfile.stages(ROOT / "Dockerfile.runtime")[-1].last("EXPOSE")
    assert expose is not None
    (server,) = _directives("server")
    assert server.split()[0] == f"127.0.0.1:{expose.args.split('/')[0]}"
    assert re.search(r"location = /metrics \{\s*return 404;", CONF.read_text())
    # uploads are health data: streamed, never buffered to nginx's temp files
    assert _directives("proxy_request_buffering") == ["off"]
    assert _directives("ssl_protocols") == ["TLSv1.2 TLSv1.3"]


def test_one_client_cannot_hold_every_upload_place() -> None:
    # The app holds SKIN_MAX_UPLOADS full bodies at once, each up to its body deadline: as many slow full-size
    # uploads from one address would shut every other client out.
    (limit,) = _directives("limit_conn")
    assert int(limit.split()[1]) < Settings().max_uploads
    assert _directives("limit_conn_status") == ["429"]


@pytest.mark.parametrize(
    ("server", "refused"),
    [
        pytest.param(0, {"400", "414", "494", "501", "505"}, id="plain-http"),
        pytest.param(
            1, {"400", "404", "413", "414", "429", "494", "497", "500", "501", "502", "504", "505"}, id="tls"
        ),
    ],
)
def test_nginx_answers_its_own_refusals_in_the_apps_json_shape(server: int, refused: set[str]) -> None:
    text = re.sub(r"#.*", "", CONF.read_text(encoding="utf-8")).split("\nserver {")[1 + server]
    table = re.findall(
        r"^\| (\d{3}) \| ([^|]*) \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE
    )
    documented = {(status, code) for status, codes in table for code in re.findall(r"`(\w+)`", codes)}
    pages: dict[str, tuple[str, str]] = {}  # status nginx refuses with -> (status it answers, the page's URI)
    for directive in re.findall(r"^\s*error_page\s+([^;]*);", text, flags=re.MULTILINE):
        *statuses, uri = directive.split()
        answered = statuses.pop().lstrip("=") if statuses[-1].startswith("=") else ""
        if not uri.startswith("https://"):  # not a redirect
            pages.update({status: (answered or status, uri) for status in statuses})
    assert refused <= set(pages)
    for status, (answered, uri) in pages.items():
        block = re.search(rf"location = {uri} \{{(.*?)^\s*\}}", text, flags=re.DOTALL | re.MULTILINE)
        assert block is not None, uri
        assert "internal;" in block.group(1), uri  # no page of its own for the public
        (answer,) = re.findall(r"return (\d+) '(.*)';", block.group(1))
        # nginx answers with the status it refused with, or error_page's =status, whatever return says
        assert answer[0] == answered, status
        error = json.loads(answer[1])["error"]
        assert set(error) == {"code", "message"}
        assert (answered, error["code"]) in documented, "README's error table lacks it"
    # the app's message for the same refusal, so a client sees one wording whichever answered
    assert server == 0 or f"larger than {Settings().max_body_bytes // MB} MB" in text


def _site_for_test(tmp: Path, app_port: int, http_port: int, https_port: int, body_timeout_s: int) -> Path:
    """The shipped file with test ports and a throw-away certificate (IPv6 listeners dropped)."""
    text = CONF.read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{app_port}")
    text = re.sub(r"^\s*listen \[::\].*$", "", text, flags=re.MULTILINE)
    text = re.sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", text)
    text = re.sub(r"listen 443 ", f"listen 127.0.0.1:{https_port} ", text)
    text = text.replace("/etc/nginx/tls/", f"{tmp}/")
    # one request a minute past the burst: the 429 comes after a known number of requests, however slow
    text = re.sub(r"rate=\d+r/s", "rate=1r/m", text)
    text = re.sub(r"client_body_timeout \d+s", f"client_body_timeout {body_timeout_s}s", text)
    # nginx's own 500 (a bug, a full disk) cannot be caused from outside: this stands in for it
    text = text.replace(
        "    location / {", "    location = /_test/500 {\n        return 500;\n    }\n    location / {"
    )
    site = tmp / "site.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    temp = "\n".join(f"    {kind}_temp_path {tmp}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        f"events {{}}\nhttp {{\n    access_log off;\n    client_body_temp_path {tmp}/body;\n{temp}\n"
        f"    include {site};\n}}\n"
    )
    return main


@contextmanager
def _nginx(tmp: Path, app_port: int, app_body_timeout_s: int = 30) -> Iterator[tuple[int, int]]:
    """The shipped file served by a real nginx in front of ``app_port``, its client_body_timeout as far past
    the app's SKIN_BODY_TIMEOUT_S as the shipped one is past the default; yields its HTTP and HTTPS ports."""
    (shipped,) = _directives("client_body_timeout")
    body_timeout_s = int(shipped.removesuffix("s")) - int(Settings().body_timeout_s) + app_body_timeout_s
    nginx = shutil.which("nginx")
    assert nginx is not None
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(tmp / "tls.key"), "-out", str(tmp / "tls.crt")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    http_port, https_port = free_port(), free_port()
    main = _site_for_test(tmp, app_port, http_port, https_port, body_timeout_s)
    check = subprocess.run([nginx, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proxy = subprocess.Popen([nginx, "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", https_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise
                time.sleep(0.05)
        yield http_port, https_port
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def _raw(port: int, request: bytes, *, tls: bool = True) -> tuple[http.client.HTTPResponse, bytes]:
    """Send ``request`` as it is (http.client cannot send a broken one) and read the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with TLS.wrap_socket(sock) if tls else sock as conn:
        conn.sendall(request)
        answer = http.client.HTTPResponse(conn)
        answer.begin()
        return answer, answer.read()


needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None or shutil.which("openssl") is None,
    reason="nginx and openssl are not installed (apt-get install nginx)",
)


@pytest.fixture(scope="module")
def nginx_alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """A real nginx with nothing behind it: what it answers itself. Yields its HTTP and HTTPS ports."""
    with _nginx(tmp_path_factory.mktemp("nginx"), free_port()) as ports:
        yield ports


@pytest.mark.parametrize(
    ("request_bytes", "tls", "status", "code"),
    [
        pytest.param(b"GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n", True, 400, "bad_http", id="bad-request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", True, 400, "bad_http", id="bad-host"),
        pytest.param(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            True,
            400,
            "bad_http",
            id="gzip-te",
        ),
        pytest.param(b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", True, 400, "bad_http", id="http-9.9"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 9000 + b"\r\n\r\n",
            True,
            431,
            "headers_too_large",
            id="cookie-9kb",
        ),
        pytest.param(
            b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", True, 414, "uri_too_long", id="uri-9kb"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, 400, "https_required", id="plain-http"),
        pytest.param(
            b"GET /_nginx/bad_http HTTP/1.1\r\nHost: x\r\n\r\n", True, 404, "not_found", id="page-uri"
        ),
        pytest.param(b"GET /_test/500 HTTP/1.1\r\nHost: x\r\n\r\n", True, 500, "internal_error", id="500"),
    ],
)
@needs_nginx
def test_nginx_refuses_broken_requests_in_json(
    nginx_alone: tuple[int, int], request_bytes: bytes, tls: bool, status: int, code: str
) -> None:
    answer, body = _raw(nginx_alone[1], request_bytes, tls=tls)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    assert json.loads(body)["error"]["code"] == code


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        pytest.param(b"GET\x01 / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_http", id="bad-request-line"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "headers_too_large",
            id="cookie",
        ),
        pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long", id="uri"),
    ],
)
@needs_nginx
def test_the_plain_http_port_refuses_broken_requests_in_json(
    nginx_alone: tuple[int, int], request_bytes: bytes, status: int, code: str
) -> None:
    answer, body = _raw(nginx_alone[0], request_bytes, tls=False)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == code


@needs_nginx
def test_plain_http_redirects_to_the_configured_name_whatever_the_host_header(
    nginx_alone: tuple[int, int],
) -> None:
    name = _directives("server_name")[0].split()[0]  # what $server_name is
    # the error pages' own URIs too: asked for, they redirect as any other
    for host, path in (
        (name, "/api/info?x=1"),
        ("evil.example", "/api/info?x=1"),
        (name, "/_nginx/bad_http"),
    ):
        answer, _ = _raw(nginx_alone[0], f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), tls=False)
        assert answer.status == 301
        assert answer.headers["location"] == f"https://{name}{path}"


@contextmanager
def _app(bundle: Path, body_timeout_s: int = 30) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    command = [sys.executable, "-m", "uvicorn", "runtime.app:app", "--host", "127.0.0.1", "--port", "{port}"]
    url, app = start_server(bundle, command=command, env={"SKIN_BODY_TIMEOUT_S": str(body_timeout_s)})
    try:
        yield url, app
    finally:
        stop_server(app)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        pytest.param("client-id-7", True, id="valid"),
        pytest.param("x" * 65, False, id="too-long"),
        pytest.param("caf\u00e9", False, id="not-ascii"),
    ],
)
@needs_nginx
def test_nginxs_own_answers_carry_the_id_the_app_would_keep(
    nginx_alone: tuple[int, int], sent: str, kept: bool
) -> None:
    # A 502 or 504 had no X-Request-ID: the client could not point at its request in the app's log.
    request = b"GET /api/info HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + sent.encode() + b"\r\n\r\n"
    answer, _ = _raw(nginx_alone[1], request)
    assert answer.status == 502
    ids = answer.headers.get_all("x-request-id") or []
    assert len(ids) == 1, ids
    # the app keeps 1 to 64 printable ASCII characters, else takes its own: here nginx's, passed on to it
    assert ids[0] == sent if kept else re.fullmatch(r"[0-9a-f]{32}", ids[0])


@needs_nginx
def test_nginx_terminates_tls_caps_bodies_and_hides_metrics(tiny_bundle: Path, tmp_path: Path) -> None:
    context = TLS
    with (
        _app(tiny_bundle) as (app_url, app),
        _nginx(tmp_path, int(app_url.rsplit(":", 1)[1])) as (http_port, https_port),
    ):
        base = f"https://127.0.0.1:{https_port}"
        with urllib.request.urlopen(base + "/readyz", context=context, timeout=5) as response:
            assert response.status == 200
            assert response.headers["strict-transport-security"].startswith("max-age=")
            assert response.headers["x-request-id"]
        # the client's own request id reaches the app and comes back (to find the request in the logs)
        mine = urllib.request.Request(base + "/healthz", headers={"X-Request-ID": "client-id-42"})
        with urllib.request.urlopen(mine, context=context, timeout=5) as response:
            assert response.headers.get_all("x-request-id") == [
                "client-id-42"
            ]  # once, not nginx's and the app's
        # a prediction goes through
        boundary = "nginxboundary3"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
        body = head.encode() + solid("red") + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            base + "/api/predict",
            data=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            assert b'"Acne"' in response.read()
        # a 3 MB upload streams through: nginx never writes it to a temporary file (it warns when it does)
        big = head.encode() + b"\0" * (3 * MB) + f"\r\n--{boundary}--\r\n".encode()
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        conn.request(
            "POST",
            "/api/predict",
            body=big,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        assert conn.getresponse().status in (400, 415, 422)
        conn.close()
        assert "buffered to a temporary file" not in (tmp_path / "error.log").read_text()
        # an over-size upload is refused by nginx from its headers alone
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        conn.putrequest("POST", "/api/predict")
        conn.putheader("content-type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("content-length", str(Settings().max_body_bytes + MB))
        conn.endheaders()
        refused = conn.getresponse()
        assert refused.status == 413
        assert json.loads(refused.read())["error"]["code"] == "body_too_large"  # the app's shape and code
        conn.close()
        # metrics: public side 404, the app itself still serves them to Prometheus
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        conn.request("GET", "/metrics")
        hidden = conn.getresponse()
        assert hidden.status == 404 and hidden.headers["content-type"] == "application/json"
        assert json.loads(hidden.read())["error"]["code"] == "not_found"
        conn.close()
        with urllib.request.urlopen(app_url + "/metrics", timeout=5) as response:
            assert b"skin_requests" in response.read()
        # plain HTTP is redirected to HTTPS
        plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        plain.request("GET", "/api/info")
        redirect = plain.getresponse()
        assert redirect.status == 301 and redirect.headers["location"].startswith("https://")
        plain.close()
        # four uploads at once from one address, however slowly they come: a fifth is 429
        held = []
        for _ in range(4):
            conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
            conn.putrequest("POST", "/api/predict")
            conn.putheader("content-type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("content-length", "100000")
            conn.endheaders(head.encode())  # and no more of the body
            held.append(conn)
        for _ in range(10):  # until nginx has taken the four (each try counts towards the rate limit's burst)
            conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
            conn.request("GET", "/api/predict")
            answer = conn.getresponse()
            answer.read()
            conn.close()
            if answer.status == 429:
                break
        for conn in held:
            conn.close()
        assert answer.status == 429 and answer.headers["retry-after"] == "1"
        assert 'limiting connections by zone "skin_uploads"' in (tmp_path / "error.log").read_text()
        # past the burst: 429 in JSON, with Retry-After (and HSTS still)
        for _ in range(25):
            conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
            conn.request("GET", "/api/predict")
            answer = conn.getresponse()
            body = answer.read()
            conn.close()
            if answer.status != 405:
                break
        assert answer.status == 429 and answer.headers["retry-after"] == "1"
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        assert answer.headers["x-request-id"]
        assert json.loads(body)["error"]["code"] == "rate_limited"
        # the app gone: 502 in JSON, not nginx's HTML page
        stop_server(app)
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        conn.request("GET", "/api/info")
        gone = conn.getresponse()
        assert gone.status == 502 and json.loads(gone.read())["error"]["code"] == "bad_gateway"
        conn.close()


@pytest.mark.slow
@needs_nginx
def test_a_stalled_upload_gets_the_apps_408_through_nginx(tiny_bundle: Path, tmp_path: Path) -> None:
    # nginx's own 408 is no answer at all, just a closed connection: the app's deadline has to come first.
    with (
        _app(tiny_bundle, body_timeout_s=1) as (app_url, _),
        _nginx(tmp_path, int(app_url.rsplit(":", 1)[1]), app_body_timeout_s=1) as (_, https_port),
    ):
        head = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        answer, body = _raw(https_port, head + b"Content-Length: 100000\r\n\r\n--b\r\n")  # and no more
    assert answer.status == 408
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["strict-transport-security"].startswith("max-age=")
    assert json.loads(body)["error"]["code"] == "body_timeout"
