"""/metrics with several uvicorn workers (WEB_CONCURRENCY): the whole server, or a warning that it is not."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
from starlette.testclient import TestClient

from runtime import metrics
from runtime.app import create_app
from runtime.settings import Settings
from tests.server import ROOT, free_port

# One worker process: serves `requests` GETs of /healthz, then prints its own scrape of /metrics.
WORKER = """
import sys
from starlette.testclient import TestClient
from runtime.app import create_app
from runtime.settings import Settings

with TestClient(create_app(Settings(bundle=sys.argv[1], threads=1, workers=2))) as client:
    for _ in range(int(sys.argv[2])):
        client.get("/healthz")
    print(client.get("/metrics").text)
"""


# A worker killed outright (SIGKILL, the OOM killer) in the middle of a request: here, its scrape of /metrics.
KILLED = """
import os, signal, sys
from starlette.testclient import TestClient
from runtime.app import create_app
from runtime.settings import Settings

with TestClient(create_app(Settings(bundle=sys.argv[1], threads=1, workers=2))) as client:
    client.get("/healthz")
    client.app.state.metrics.exposition = lambda: os.kill(os.getpid(), signal.SIGKILL)
    client.get("/metrics")
"""

# A worker whose scrape of /metrics is held, in flight, until a line comes on its stdin.
HELD = KILLED.replace("os.kill(os.getpid(), signal.SIGKILL)", "print(flush=True) or sys.stdin.readline()")


def _worker(bundle: Path, requests: int, folder: Path, script: str = WORKER, returncode: int = 0) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(bundle), str(requests)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == returncode, done.stderr[-2000:]
    return done.stdout


def test_a_scrape_adds_up_every_workers_counters(tiny_bundle: Path, tmp_path: Path) -> None:
    # Each worker answered a scrape with its own counters alone: 3, 1, 2 between scrapes of one server.
    _worker(tiny_bundle, 3, tmp_path)
    text = _worker(tiny_bundle, 2, tmp_path)
    assert 'skin_requests_total{route="/healthz",status="200"} 5.0' in text
    # the first worker's scrape, and this one's, which is still being served
    assert 'skin_requests_total{route="/metrics",status="200"} 1.0' in text
    assert "\nskin_in_flight_requests 1.0" in text
    assert text.count("\nskin_model_info{") == 1  # one model, however many workers load it
    # the process's own would be one worker's, passed off as the server's
    assert "process_resident_memory_bytes" not in text and "python_info" in text


def test_a_worker_killed_outright_leaves_the_in_flight_sum(tiny_bundle: Path, tmp_path: Path) -> None:
    # Its request stayed in skin_in_flight_requests for ever: 3.0 here, with two requests running.
    _worker(tiny_bundle, 0, tmp_path, KILLED, -signal.SIGKILL)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", HELD, str(tiny_bundle)], cwd=ROOT, env=env, stdin=PIPE, stdout=PIPE, text=True
    ) as held:  # a live worker's request, which stays in the sum
        assert held.stdout is not None and held.stdin is not None
        assert held.stdout.readline() == "\n"
        text = _worker(tiny_bundle, 0, tmp_path)
        held.stdin.write("\n")
        held.stdin.close()
        assert held.wait(timeout=60) == 0
    assert "\nskin_in_flight_requests 2.0" in text  # the held request and this scrape
    assert 'skin_requests_total{route="/healthz",status="200"} 2.0' in text  # what the gone one served stays
    assert list(tmp_path.glob("gauge_live*")) == list(tmp_path.glob("*.lock")) == []  # none runs now


def test_several_workers_without_a_shared_folder_say_what_a_scrape_shows(
    tiny_bundle: Path, runtime_log: pytest.LogCaptureFixture
) -> None:
    with TestClient(create_app(Settings(bundle=str(tiny_bundle), threads=1, workers=2))):
        pass
    warned = [r.getMessage() for r in runtime_log.records if r.levelno == logging.WARNING]
    assert any("PROMETHEUS_MULTIPROC_DIR" in line for line in warned), warned


def test_workers_are_read_from_web_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert Settings.from_env().workers == 3
    assert Settings.from_env(single_process=True).workers == 1  # skin-serve runs one process


def test_a_shared_folder_that_is_not_there_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(metrics, "MULTIPROCESS_DIR", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR .* is not a folder"):
        metrics.Metrics()


def _serve(bundle: Path, folder: Path, command: list[str] | None = None, **kwargs: Any) -> Any:
    """skin-serve with ``folder`` as PROMETHEUS_MULTIPROC_DIR; it stops before it listens when that fails."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    serve = [sys.executable, "-m", "runtime", "--bundle", str(bundle), "--port", str(free_port())]
    run = [*(command or []), *serve]
    return subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kwargs)


def test_a_shared_folder_that_cannot_take_the_files_is_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    # Writes past 32 KB fail (EFBIG, as a full disk or a quota would): prometheus-client's 64 KB file was a
    # traceback from its mmap_dict.
    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = _serve(tiny_bundle, tmp_path, preexec_fn=small_files)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr == (
        f"skin-serve: PROMETHEUS_MULTIPROC_DIR {str(tmp_path)!r} cannot take the metrics' files (File too "
        "large): give a writable folder with 1 MiB free (a tmpfs), or unset it with one process\n"
    )
    assert list(tmp_path.iterdir()) == []


def _can_mount() -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=10).returncode == 0


@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare -m (a mount namespace) for a real tmpfs")
@pytest.mark.parametrize(
    ("mount", "why"),
    [
        pytest.param(
            'mount -t tmpfs -o size=8k none "$0" && head -c 8192 /dev/zero > "$0/x"',
            "No space left on device",
            id="full",
        ),
        pytest.param('mount -t tmpfs -o ro none "$0"', "Read-only file system", id="read-only"),
    ],
)
def test_a_full_or_read_only_tmpfs_is_one_line_not_a_silent_sigbus_or_a_traceback(
    tiny_bundle: Path, tmp_path: Path, mount: str, why: str
) -> None:
    # A full tmpfs ended skin-serve with SIGBUS (exit 135, nothing said) when prometheus-client first wrote
    # to its mmap; a read-only one was a traceback.
    script = f'{mount} && shift && exec "$@"'
    done = _serve(
        tiny_bundle,
        tmp_path,
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(tmp_path), "-"],
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith(f"skin-serve: PROMETHEUS_MULTIPROC_DIR {str(tmp_path)!r} cannot take")
    assert f"({why})" in done.stderr and done.stderr.count("\n") == 1


def test_a_request_that_meets_the_upload_deadline_is_in_a_bucket_of_its_own() -> None:
    # A 408 after SKIN_BODY_TIMEOUT_S (30 s) fell past the top bucket (10.24 s): no quantile could be told.
    counted = metrics.Metrics()
    counted.latency.labels("/api/predict").observe(Settings().body_timeout_s)
    buckets = [
        (float(sample.labels["le"]), sample.value)
        for family in counted.registry.collect()
        if family.name == "skin_request_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket")
    ]
    assert any(value == 1 and le < float("inf") for le, value in buckets), buckets
