"""Build the serving venv exactly as Dockerfile.runtime does, then run the image's entry point on a bundle.

No Docker engine here, so the test replays the build stage: the same COPY sources (filtered by .dockerignore),
the same RUN line with /opt/venv moved to a temporary folder, the same ENV, ENTRYPOINT and HEALTHCHECK.
It also measures the venv, the figure behind README's image-size estimate.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.images import solid
from tests.server import ROOT, start_server, stop_server

DOCKERFILE = ROOT / "Dockerfile.runtime"
# python:3.11-slim-bookworm, uncompressed, in MB of 10^6 bytes, estimated from its parts (no Docker engine
# here to pull it): debian:bookworm-slim 75 + the shared libraries, tzdata and ca-certificates the python
# image adds 14 (apt Installed-Size) + CPython 3.11 in /usr/local without tests, .pyc and libpython.a 58
# (measured on a 3.11 build here) + pip and setuptools 12 = 159, rounded up.
BASE_IMAGE_MB = 160
IMAGE_BUDGET_MB = 350


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def _copy_context(stage: dockerfile.Stage, workdir: Path) -> None:
    """COPY SRC... DEST for sources in the build context, relative DEST resolved against WORKDIR."""
    rules = dockerfile.ignore_rules(ROOT / ".dockerignore")
    for inst in stage.all("COPY"):
        if "from" in inst.flags():
            continue
        words = [w for w in shlex.split(inst.args) if not w.startswith("--")]
        *sources, dest = words
        target = workdir / dest.lstrip("/")
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                for file in src.rglob("*"):
                    rel = file.relative_to(ROOT).as_posix()
                    if file.is_file() and not dockerfile.ignored(rules, rel):
                        out = target / file.relative_to(src)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, out)
            else:
                out = target / src.name if dest.endswith("/") or len(sources) > 1 else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)


def _snapshot(*folders: Path) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for folder in folders for f in [folder, *folder.rglob("*")]}


def _port_swapped(argv: list[str], port: str) -> list[str]:
    return [a.replace(port, "{port}") for a in argv]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_runtime_extra_in_a_clean_venv_serves_the_image_entrypoint(tiny_bundle: Path, tmp_path: Path) -> None:
    build, final = dockerfile.stages(DOCKERFILE)
    src = tmp_path / "src"
    venv = tmp_path / "opt-venv"
    app = tmp_path / "app"
    # -- the build stage: COPY into WORKDIR, then the RUN line with /opt/venv moved here
    workdir = build.last("WORKDIR")
    assert workdir is not None and workdir.args == "/src"
    _copy_context(build, src)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python").symlink_to(sys.executable)  # the image's `python`
    env = {**os.environ, **build.env(), "PATH": f"{shim}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    for run in build.all("RUN"):  # each needs only files copied before it, and all of them are there
        out = subprocess.run(
            ["/bin/sh", "-c", run.args.replace("/opt/venv", str(venv))],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]

    # -- what went in: the runtime extra, no torch, no pip, no test suites
    python = venv / "bin" / "python"
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not (site / "torch").exists() and not list(site.glob("torch-*.dist-info"))
    assert subprocess.run([python, "-I", "-c", "import torch"], capture_output=True).returncode != 0
    assert subprocess.run([python, "-I", "-c", "import pip"], capture_output=True).returncode != 0
    assert not list(site.rglob("tests"))
    # the pinned layer installed exactly what `.[runtime]` needs: nothing missing, nothing left over
    installed = {d.name.split("-")[0].lower() for d in site.glob("*.dist-info")}  # names as wheels write them
    pins = (src / "deploy" / "runtime-constraints.txt").read_text().splitlines()
    pinned = {re.sub(r"[-.]", "_", p.partition("==")[0].lower()) for p in pins if p and not p.startswith("#")}
    assert installed == pinned | {"skinlesion"}
    check = "import runtime.app, onnxruntime, sys; print(runtime.app.__file__); print('torch' in sys.modules)"
    probe = subprocess.run(
        [python, "-I", "-c", check], capture_output=True, text=True, env={"SKIN_BUNDLE": ""}
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == [str(site / "runtime" / "app.py"), "False"]

    # -- the size estimate README quotes: base image + this venv + the web page
    venv_mb = _du_mb(venv)
    image_mb = BASE_IMAGE_MB + venv_mb + _du_mb(ROOT / "webui")
    print(f"runtime venv {venv_mb:.0f} MB; estimated image {image_mb:.0f} MB")
    assert image_mb < IMAGE_BUDGET_MB

    # -- the final stage: ENV, COPY webui/, ENTRYPOINT, HEALTHCHECK
    _copy_context(final, tmp_path / "root")
    shutil.move(tmp_path / "root" / "app", app)
    image_env = {k: v.replace("/opt/venv", str(venv)) for k, v in final.env().items()}
    image_env["PATH"] = image_env["PATH"].replace("$PATH", "/usr/bin:/bin")
    image_env["SKIN_WEBUI_DIR"] = image_env["SKIN_WEBUI_DIR"].replace("/app", str(app))
    image_env["SKIN_BUNDLE"] = str(tiny_bundle)  # mounted at /models/bundle in the container
    image_env["SKIN_THREADS"] = "0"  # unset in the image: sized from the CPU quota
    expose = final.last("EXPOSE")
    entry, health = final.last("ENTRYPOINT"), final.last("HEALTHCHECK")
    assert expose is not None and entry is not None and health is not None
    port = expose.args.split("/")[0]
    argv = entry.exec_form()
    command = ["env", "-C", str(app), str(venv / "bin" / argv[0]), *_port_swapped(argv[1:], port)]
    health_argv = _port_swapped(health.exec_form(), port)
    assert health_argv[0] == "python"
    # --read-only works: the server writes nothing, not in its venv or /app, not even in the temp folder
    # (onnxruntime's telemetry writes a session file there unless ORT_DISABLE_TELEMETRY=1, as the image sets)
    image_env["TMPDIR"] = str(tmp_path / "tmpdir")
    (tmp_path / "tmpdir").mkdir()
    before = _snapshot(venv, app)
    url, proc = start_server(tiny_bundle, command=command, env=image_env, timeout=60)
    try:
        with urllib.request.urlopen(url + "/", timeout=10) as response:
            assert b"<html" in response.read().lower()
        body, boundary = _multipart(solid("blue"))
        request = urllib.request.Request(
            url + "/api/predict",
            data=body,
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["primary"]["label"] == "Moles"
        health_argv = [a.format(port=url.rsplit(":", 1)[1]) for a in health_argv]
        ok = subprocess.run([python, *health_argv[1:]], capture_output=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
    finally:
        code = stop_server(proc)
    assert code == 0  # STOPSIGNAL SIGTERM: drained and exited cleanly
    assert _snapshot(venv, app) == before
    assert not list((tmp_path / "tmpdir").iterdir())
    failing = subprocess.run([python, *health_argv[1:]], capture_output=True, timeout=10)
    assert failing.returncode != 0  # and the health check notices a dead server


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "deployboundary7"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), boundary
