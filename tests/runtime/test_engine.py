"""How the engine runs onnxruntime: what a server does between requests matters as much as during them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime import engine as engine_module
from runtime.bundle import MODEL_FILE, BundleError
from runtime.engine import Engine, session_options
from runtime.settings import Settings
from tests.server import ROOT

# In a process of its own: other tests' threads (servers, data loaders) would count in this one's CPU time.
IDLE_CPU = """
import sys, time
import numpy as np
from runtime import engine as engine_module
from runtime.bundle import MODEL_FILE, BundleError
from runtime.engine import Engine, session_options

engine = Engine(sys.argv[1], threads=2, spinning=sys.argv[2] == "1")
images = np.zeros((1, *engine.meta.input_size, 3), dtype=np.uint8)
idle = []
for _ in range(3):
    for _ in range(20):
        engine.run(images)
    before = time.process_time() - time.thread_time()  # onnxruntime's worker threads, not this one
    time.sleep(0.5)
    idle.append(time.process_time() - time.thread_time() - before)
print(min(idle))
"""


@pytest.mark.parametrize("spinning", [True, False])
def test_an_idle_engine_burns_no_cpu(tiny_bundle: Path, spinning: bool) -> None:
    # Spinning threads make a run faster, but if they kept spinning after it they would take a core from the
    # next upload's decoding, and from every other process on an idle server.
    done = subprocess.run(
        [sys.executable, "-c", IDLE_CPU, str(tiny_bundle), "1" if spinning else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Spinning on after the last run costs 0.04-0.05 s in every window here, not spinning 0.000 s. The least
    # of three windows, because a busy machine once put 0.015 s into one window of an engine that never spins.
    assert float(done.stdout) < 0.02


def test_spinning_is_a_setting(tiny_bundle: Path) -> None:
    assert Engine(tiny_bundle, threads=1).spinning
    assert not Engine(tiny_bundle, threads=1, spinning=False).spinning


def test_concurrent_runs_with_spinning_threads_keep_their_own_answers(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, threads=2)
    h, w = engine.meta.input_size
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    expected = {
        name: engine.run(np.full((1, h, w, 3), rgb, dtype=np.uint8)).probabilities
        for name, rgb in colours.items()
    }
    wrong: list[str] = []

    def loop(name: str) -> None:
        image = np.full((1, h, w, 3), colours[name], dtype=np.uint8)
        for _ in range(30):
            if not np.allclose(engine.run(image).probabilities, expected[name], atol=1e-6):
                wrong.append(name)

    workers = [threading.Thread(target=loop, args=(name,)) for name in colours]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert wrong == []


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        pytest.param({"cpu.max": "150000 100000\n"}, 1, id="v2-1.5-cpus-round-down"),
        pytest.param({"cpu.max": "300000 100000\n"}, 3, id="v2-3-cpus"),
        pytest.param({"cpu.max": "max 100000\n"}, 8, id="v2-no-quota"),
        pytest.param({"cpu.max": "20000 100000\n"}, 1, id="v2-under-one-cpu"),
        pytest.param({"cpu.cfs_quota_us": "200000\n", "cpu.cfs_period_us": "100000\n"}, 2, id="v1"),
        pytest.param({"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"}, 8, id="v1-no-quota"),
        pytest.param({}, 8, id="no-cgroup"),
    ],
)
def test_threads_follow_the_cgroup_quota_not_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], cpus: int
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    # /sys/fs/cgroup/cpu.max and /sys/fs/cgroup/cpu/cpu.cfs_*_us, read from tmp_path instead
    monkeypatch.setattr(engine_module, "Path", lambda path: tmp_path / Path(path).name)
    monkeypatch.setattr(engine_module.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert engine_module.available_cpus() == cpus


SERVICE = "system.slice/skin.service"


@pytest.mark.parametrize(
    ("own", "files", "cpus"),
    [
        pytest.param(SERVICE, {SERVICE: "150000 100000\n"}, 1, id="systemd-cpuquota-150%"),
        pytest.param(
            SERVICE, {SERVICE: "max 100000\n", "system.slice": "300000 100000\n"}, 3, id="parent-limit"
        ),
        pytest.param(SERVICE, {SERVICE: "500000 100000\n", "": "200000 100000\n"}, 2, id="tightest-wins"),
        pytest.param(SERVICE, {SERVICE: "max 100000\n"}, 8, id="no-quota"),
        pytest.param("", {"": "300000 100000\n"}, 3, id="container-root"),
        pytest.param(
            "../elsewhere", {"": "200000 100000\n", "elsewhere": "100000 100000\n"}, 2, id="outside-ns"
        ),
        pytest.param(SERVICE, {SERVICE: "150000 0\n"}, 8, id="malformed-period"),
    ],
)
def test_threads_follow_the_quota_of_this_process_own_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own: str, files: dict[str, str], cpus: int
) -> None:
    # cgroup v2 on a host: no cpu.max at the root; the limit sits on the service's cgroup or above it
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(f"0::/{own}\n")
    for directory, text in files.items():
        (tmp_path / "sys/fs/cgroup" / directory).mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys/fs/cgroup" / directory / "cpu.max").write_text(text)
    monkeypatch.setattr(engine_module, "Path", lambda path: tmp_path / str(path).lstrip("/"))
    monkeypatch.setattr(engine_module.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert engine_module.available_cpus() == cpus


def test_session_options_run_one_graph_at_a_time_on_the_threads_given() -> None:
    options = session_options(threads=3, memory_arena=False)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert options.enable_cpu_mem_arena is False
    assert session_options(threads=1).enable_cpu_mem_arena is True


def test_threads_are_the_cpus_this_process_may_run_on_when_fewer_than_the_quota(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # taskset -c 0,1 (or docker --cpuset-cpus) inside a 4-CPU quota: 2 threads, not 4 on 2 cores
    (tmp_path / "cpu.max").write_text("400000 100000\n")
    monkeypatch.setattr(engine_module, "Path", lambda path: tmp_path / Path(path).name)
    monkeypatch.setattr(engine_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert engine_module.available_cpus() == 2


@pytest.mark.parametrize("spinning", [True, False])
def test_session_options_spin_only_when_told(spinning: bool) -> None:
    options = session_options(threads=2, spinning=spinning)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spinning else "0")
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"  # never between runs


@pytest.mark.parametrize("spinning", [True, False])
def test_the_engine_takes_the_settings_threads_arena_and_spinning(tiny_bundle: Path, spinning: bool) -> None:
    settings = Settings(bundle=str(tiny_bundle), threads=1, memory_arena=not spinning, spinning=spinning)
    engine = Engine.from_settings(settings)
    assert (engine.threads, engine.memory_arena, engine.spinning) == (1, not spinning, spinning)


def test_threads_0_means_the_cpu_quota(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, threads=0)
    assert engine.threads == engine_module.available_cpus() >= 1
    assert engine.info()["onnxruntime"]["threads"] == engine.threads
    assert Engine(tiny_bundle, threads=2).info()["onnxruntime"]["threads"] == 2


class _Recording:
    """The engine's session, recording the run options of each run; ``poison`` puts NaN in the answer."""

    def __init__(self, session: object, poison: bool = False) -> None:
        self.session, self.poison = session, poison
        self.run_options: list[object] = []

    def run(
        self, fetch: list[str], feed: dict[str, np.ndarray], run_options: object = None
    ) -> list[np.ndarray]:
        self.run_options.append(run_options)
        fetched = self.session.run(fetch, feed, run_options)  # type: ignore[attr-defined]
        if self.poison:
            fetched[0] = np.full_like(fetched[0], np.nan)
        return fetched


def test_the_arena_shrinks_after_multi_image_runs_only(tiny_bundle: Path) -> None:
    # The arena keeps the peak of every batch size it has seen: a batch's buffers are given back after it.
    engine = Engine(tiny_bundle, threads=1)
    recording = _Recording(engine.session)
    engine.session = recording
    h, w = engine.meta.input_size
    engine.run(np.zeros((1, h, w, 3), dtype=np.uint8))
    engine.run(np.zeros((3, h, w, 3), dtype=np.uint8))
    assert recording.run_options == [None, engine._shrink]
    no_arena = Engine(tiny_bundle, threads=1, memory_arena=False)
    recording = no_arena.session = _Recording(no_arena.session)
    no_arena.run(np.zeros((3, h, w, 3), dtype=np.uint8))
    assert recording.run_options == [None]  # nothing to shrink


def test_probabilities_that_are_not_finite_are_refused(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, threads=1)
    engine.session = _Recording(engine.session, poison=True)
    h, w = engine.meta.input_size
    with pytest.raises(RuntimeError, match="malformed probabilities"):
        engine.run(np.zeros((1, h, w, 3), dtype=np.uint8))


def test_settings_the_engine_cannot_honour_are_one_line_errors(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="execution provider NoSuchProvider is not available"):
        Engine(tiny_bundle, threads=1, providers=("NoSuchProvider",))
    with pytest.raises(BundleError, match="SKIN_OPENVINO must be one of"):
        Engine(tiny_bundle, threads=1, openvino="fp64")
    shutil.copytree(tiny_bundle, tmp_path / "broken")
    (tmp_path / "broken" / MODEL_FILE).write_bytes(b"not\nan\nonnx\nmodel")
    with pytest.raises(BundleError, match="is not a loadable ONNX model") as refused:
        Engine(tmp_path / "broken", threads=1)
    assert "\n" not in str(refused.value)  # onnxruntime's many-line message, cut to its first line


def test_first_line_of_an_error() -> None:
    assert engine_module.first_line(ValueError("  one\ntwo\n")) == "one"
    assert engine_module.first_line(ValueError("")) == "ValueError"
    assert len(engine_module.first_line(ValueError("x" * 1000))) == 300
    openvino = "Exception from src/cpp/core.cpp:105:\nException from src/a.cpp:9:\nUnable to read.\n"
    assert engine_module.first_line(RuntimeError(openvino)) == "Unable to read."
