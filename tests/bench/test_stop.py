"""Ctrl-C and SIGTERM during a benchmark: one line, exit 130 / 143, and no server or Locust left running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from benchmarks import run, weights

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """Ctrl-C (KeyboardInterrupt in the main thread) ``seconds`` into the block."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    earlier = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, earlier)


@pytest.fixture
def no_leftovers() -> Iterator[set[int]]:
    """The children this process had before the test (another test's server, say); those it started are
    ended after it, so a failing test leaves none behind."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    yield before
    for child in psutil.Process().children(recursive=True):
        if child.pid not in before:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _alive_children(before: set[int]) -> list[str]:
    alive = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(" ".join(child.cmdline()))
    return alive


def test_ctrl_c_while_locust_runs_stops_locust(tmp_path: Path, no_leftovers: set[int]) -> None:
    # Nothing listens there: Locust would go on failing requests for its 60 s.
    with pytest.raises(KeyboardInterrupt), interrupted_after(1.0):
        run.locust(f"http://127.0.0.1:{run.free_port()}", 1, 60, tmp_path / "x")
    assert _alive_children(no_leftovers) == []


def test_ctrl_c_while_a_server_starts_stops_it(tmp_path: Path, no_leftovers: set[int]) -> None:
    server = run.Server("sleeper", SLEEPER, "/readyz")
    with pytest.raises(KeyboardInterrupt), interrupted_after(0.5):
        run.start(server, run.free_port(), tmp_path / "sleeper.log")
    assert _alive_children(no_leftovers) == []


def test_a_locust_run_that_does_not_end_is_stopped_and_one_line(
    tmp_path: Path, no_leftovers: set[int]
) -> None:
    proc = subprocess.Popen(SLEEPER)
    with pytest.raises(run.BenchError, match=r"Locust did not end within 0 s; see .*x\.log"):
        run.wait_locust(proc, 0.2, tmp_path / "x")
    assert proc.poll() is not None


def _signal_self(signum: int) -> Callable[[object], None]:
    """A real signal to this process, as `kill`, `timeout` or a closed terminal sends it; without a handler it
    would end pytest itself: check there is one first."""

    def call(log: object) -> None:
        assert signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signum)
        time.sleep(5)
        raise AssertionError(f"signal {signum} did not stop the command")

    return call


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("call", "status", "line"),
    [
        pytest.param(_interrupt, 130, "benchmarks.x: interrupted", id="ctrl-c"),
        pytest.param(_signal_self(signal.SIGTERM), 143, "benchmarks.x: stopped by SIGTERM", id="sigterm"),
        pytest.param(_signal_self(signal.SIGHUP), 129, "benchmarks.x: stopped by SIGHUP", id="sighup"),
    ],
)
@pytest.mark.usefixtures("sighup_heard")
def test_a_stopped_benchmark_says_so_in_one_line(
    capsys: pytest.CaptureFixture[str], call: object, status: int, line: str
) -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert run.run_cli("benchmarks.x", call) == status  # type: ignore[arg-type]
    assert capsys.readouterr().err.splitlines() == [line]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_ctrl_c_while_the_weights_are_made_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights, "prepare", _interrupt)
    assert weights.main(["--work", str(tmp_path)]) == 130
    assert capsys.readouterr().err.splitlines() == ["benchmarks.weights: interrupted"]


@pytest.mark.slow
def test_sigterm_mid_run_stops_the_servers_and_locust(
    bench_bundle: Path, checkpoint: Path, tmp_path: Path
) -> None:
    argv = ["--bundle", str(bench_bundle), "--checkpoint", str(checkpoint), "--servers", "runtime"]
    argv += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--concurrency", "1"]
    argv += ["--run-time", "60", "--cold-starts", "1", "--max-load", "100", "--max-other", "100"]
    bench = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.run", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    left: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while not any("locust" in _command(c) for c in _children_of(bench.pid)):
            assert bench.poll() is None and time.monotonic() < deadline, "Locust never started"
            time.sleep(0.2)
        left += _children_of(bench.pid)
        bench.terminate()
        _, err = bench.communicate(timeout=60)
        assert bench.returncode == 143
        assert err.splitlines()[-1] == "benchmarks.run: stopped by SIGTERM"
        gone, alive = psutil.wait_procs(left, timeout=10)
        assert alive == []
        assert not (tmp_path / "out").exists()
    finally:
        for child in left:
            with contextlib.suppress(psutil.Error):
                child.kill()
        bench.kill()


def _children_of(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def _command(proc: psutil.Process) -> str:
    """Its command line, or "" if it has just ended (a child can go between listing and asking)."""
    with contextlib.suppress(psutil.Error):
        return " ".join(proc.cmdline())
    return ""


def test_a_second_stop_signal_while_servers_stop_leaves_none_running(no_leftovers: set[int]) -> None:
    # The first server does not exit on SIGTERM, and a second Ctrl-C comes while it is waited for: the others
    # must have had their SIGTERM already (stopped one at a time, they were left running).
    stubborn = "import signal as s, time; s.signal(s.SIGTERM, s.SIG_IGN); print(flush=True); time.sleep(99)"
    first = subprocess.Popen([sys.executable, "-c", stubborn], stdout=subprocess.PIPE)
    assert first.stdout is not None and first.stdout.readline()  # its handler is in place
    others = [subprocess.Popen(SLEEPER) for _ in range(2)]
    with pytest.raises(KeyboardInterrupt), interrupted_after(0.5):
        run.stop(first, *others)
    first.kill()
    first.communicate()
    for proc in others:
        assert proc.wait(timeout=10) == -signal.SIGTERM
