"""deploy/nginx/skin-runtime.conf: limits that agree with the app, checked by a real nginx in front of it."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runtime.settings import MB, Settings
from tests.deploy import dockerfile
from tests.images import solid
from tests.server import ROOT, free_port, start_server, stop_server

CONF = ROOT / "deploy" / "nginx" / "skin-runtime.conf"


def _directives(name: str) -> list[str]:
    text = re.sub(r"#.*", "", CONF.read_text(encoding="utf-8"))
    return [m.strip() for m in re.findall(rf"^\s*{name}\s+([^;{{}}]*);", text, flags=re.MULTILINE)]


def test_body_cap_matches_the_apps_limit() -> None:
    (cap,) = _directives("client_max_body_size")
    assert cap.endswith("m") and int(cap[:-1]) * MB == Settings().max_body_bytes


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


def test_nginx_answers_its_own_refusals_in_the_apps_json_shape() -> None:
    text = re.sub(r"#.*", "", CONF.read_text(encoding="utf-8"))
    pages = dict(reversed(d.split()) for d in _directives("error_page"))  # location -> status
    assert {"404", "413", "429", "502", "504"} <= set(pages.values())
    for location, status in pages.items():
        block = re.search(rf"location {location} \{{(.*?)^\s*\}}", text, flags=re.DOTALL | re.MULTILINE)
        assert block is not None, location
        (answer,) = re.findall(r"return (\d+) '(.*)';", block.group(1))
        assert answer[0] == status
        assert set(json.loads(answer[1])["error"]) == {"code", "message"}
    # the app's message for the same refusal, so a client sees one wording whichever answered
    assert f"larger than {Settings().max_body_bytes // MB} MB" in text


def _site_for_test(tmp: Path, app_port: int, http_port: int, https_port: int) -> Path:
    """The shipped file with test ports and a throw-away certificate (IPv6 listeners dropped)."""
    text = CONF.read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:8000", f"127.0.0.1:{app_port}")
    text = re.sub(r"^\s*listen \[::\].*$", "", text, flags=re.MULTILINE)
    text = re.sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", text)
    text = re.sub(r"listen 443 ", f"listen 127.0.0.1:{https_port} ", text)
    text = text.replace("/etc/nginx/tls/", f"{tmp}/")
    # one request a minute past the burst: the 429 comes after a known number of requests, however slow
    text = re.sub(r"rate=\d+r/s", "rate=1r/m", text)
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


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (apt-get install nginx)")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_nginx_terminates_tls_caps_bodies_and_hides_metrics(tiny_bundle: Path, tmp_path: Path) -> None:
    nginx = shutil.which("nginx")
    assert nginx is not None
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"]
        + ["-keyout", str(tmp_path / "tls.key"), "-out", str(tmp_path / "tls.crt")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    command = [sys.executable, "-m", "uvicorn", "runtime.app:app", "--host", "127.0.0.1", "--port", "{port}"]
    app_url, app = start_server(tiny_bundle, command=command)
    http_port, https_port = free_port(), free_port()
    main = _site_for_test(tmp_path, int(app_url.rsplit(":", 1)[1]), http_port, https_port)
    check = subprocess.run([nginx, "-t", "-c", str(main)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proxy = subprocess.Popen([nginx, "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    base = f"https://127.0.0.1:{https_port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", context=context, timeout=2) as response:
                    assert response.status == 200
                    assert response.headers["strict-transport-security"].startswith("max-age=")
                    assert response.headers["x-request-id"]
                break
            except OSError:
                if time.monotonic() > deadline or proxy.poll() is not None:
                    raise
                time.sleep(0.1)
        # the client's own request id reaches the app and comes back (to find the request in the logs)
        mine = urllib.request.Request(base + "/healthz", headers={"X-Request-ID": "client-id-42"})
        with urllib.request.urlopen(mine, context=context, timeout=5) as response:
            assert response.headers["x-request-id"] == "client-id-42"
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
        assert json.loads(body)["error"]["code"] == "rate_limited"
        # the app gone: 502 in JSON, not nginx's HTML page
        stop_server(app)
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, context=context, timeout=10)
        conn.request("GET", "/api/info")
        gone = conn.getresponse()
        assert gone.status == 502 and json.loads(gone.read())["error"]["code"] == "bad_gateway"
        conn.close()
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        stop_server(app)
