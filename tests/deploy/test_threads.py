"""uvicorn workers × onnxruntime threads stay within the CPU quota the container really has."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

from runtime import engine
from runtime.settings import Settings, threads_per_worker
from tests.server import start_server, stop_server


@pytest.mark.parametrize(
    ("workers", "cpus", "threads"),
    [
        pytest.param(1, 8, 8, id="one-worker-takes-all"),
        pytest.param(2, 8, 4, id="split-evenly"),
        pytest.param(3, 8, 2, id="rounds-down"),
        pytest.param(4, 4, 1, id="one-each"),
        pytest.param(0, 2, 2, id="zero-workers-is-one"),
    ],
)
def test_threads_per_worker(workers: int, cpus: int, threads: int) -> None:
    assert threads_per_worker(workers, cpus) == threads
    assert max(1, workers) * threads <= cpus


@pytest.mark.parametrize(
    ("quota", "affinity", "cpus"),
    [
        pytest.param(None, 8, 8, id="no-quota"),
        pytest.param(2.0, 64, 2, id="whole-quota"),
        pytest.param(1.5, 64, 1, id="fraction-rounds-down"),
        pytest.param(2.5, 64, 2, id="two-and-a-half"),
        pytest.param(0.5, 64, 1, id="below-one-is-one"),
        pytest.param(4.0, 2, 2, id="affinity-smaller"),
    ],
)
def test_available_cpus_never_exceeds_the_quota(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, affinity: int, cpus: int
) -> None:
    monkeypatch.setattr(engine, "_cgroup_quota", lambda: quota)
    monkeypatch.setattr(engine.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert engine.available_cpus() == cpus
    if quota is not None and quota >= 1:
        assert engine.available_cpus() <= quota


@pytest.mark.parametrize(
    ("env", "threads"),
    [
        pytest.param({}, 0, id="auto-left-to-the-engine"),
        pytest.param({"WEB_CONCURRENCY": "1"}, 0, id="one-worker"),
        pytest.param({"WEB_CONCURRENCY": "2"}, 3, id="two-workers-share-6"),
        pytest.param({"WEB_CONCURRENCY": "4"}, 1, id="four-workers-share-6"),
        pytest.param({"WEB_CONCURRENCY": "2", "SKIN_THREADS": "5"}, 5, id="explicit-threads-win"),
    ],
)
def test_settings_divide_the_quota_among_uvicorn_workers(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], threads: int
) -> None:
    for key in ("WEB_CONCURRENCY", "SKIN_THREADS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(engine, "available_cpus", lambda: 6)
    assert Settings.from_env().threads == threads
    # skin-serve is one process: the whole quota, whatever WEB_CONCURRENCY says.
    assert Settings.from_env(single_process=True).threads == int(env.get("SKIN_THREADS", 0))


def test_uvicorn_workers_each_get_their_share(tiny_bundle: Path) -> None:
    command = [sys.executable, "-m", "uvicorn", "runtime.app:app", "--host", "127.0.0.1", "--port", "{port}"]
    env = {"WEB_CONCURRENCY": "2", "SKIN_THREADS": "0"}
    url, proc = start_server(tiny_bundle, command=command, env=env, timeout=60)
    try:
        seen = set()
        for _ in range(6):
            with urllib.request.urlopen(url + "/api/info", timeout=10) as response:
                seen.add(json.load(response)["onnxruntime"]["threads"])
    finally:
        stop_server(proc)
    assert seen == {threads_per_worker(2, engine.available_cpus())}
