"""The stop line when the terminal that would show it is gone: the exit status stays 128 + the signal."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training.stop import say_stopped

ROOT = Path(__file__).resolve().parents[2]
# Each command's work replaced by the terminal closing on it.
HANG_UP = "import os, signal, sys\ndef hang_up(*args, **kwargs):\n    os.kill(os.getpid(), signal.SIGHUP)\n"


class ClosedTerminal(io.TextIOBase):
    def write(self, text: str) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_stop_line_that_cannot_be_written_is_left_unsaid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", ClosedTerminal())
    say_stopped("skin-train: stopped by SIGHUP")


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(
            "from training import cli\ncli._train = hang_up\nsys.exit(cli.main([]))", id="skin-train"
        ),
        pytest.param(
            "from export import cli\ncli._export = hang_up\nsys.exit(cli.main(['c.pt', '--out', 'b']))",
            id="skin-export",
        ),
        pytest.param(
            "from export import demo\ndemo.build = hang_up\nsys.exit(demo.main(['--no-serve']))",
            id="skin-demo",
        ),
        pytest.param(
            "from training import synthetic\nsynthetic.generate = hang_up\nsys.exit(synthetic.main(['d']))",
            id="synthetic",
        ),
        pytest.param(
            "from benchmarks import run\nsys.exit(run.run_cli('benchmarks.x', hang_up))", id="benchmarks"
        ),
    ],
)
@pytest.mark.usefixtures("sighup_heard")  # the child inherits it: under nohup SIGHUP would stay ignored
def test_a_hang_up_whose_line_cannot_be_written_still_exits_129(code: str, tmp_path: Path) -> None:
    """stderr a pipe no one reads any more (EPIPE; a closed terminal gives EIO), buffered as by default."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = str(ROOT)
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-c", HANG_UP + code],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=writer,
            timeout=120,
        )
    finally:
        os.close(writer)
    assert done.returncode == 128 + signal.SIGHUP
