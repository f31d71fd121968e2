"""Dockerfile.train's entry point, run as the container runs it: 2 CPU processes under torchrun (gloo).

On a GPU box the same script, with NPROC=auto, starts one process per GPU (nccl); only the device differs.
What DDP computes (sharded validation, one writer) is tested in tests/training/test_loop.py; this file tests
the container's command line: the script, NPROC, torchrun's console script and the process count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import dockerfile
from tests.server import ROOT

SCRIPT = ROOT / "deploy" / "train-entrypoint.sh"
BIN = str(Path(sys.executable).parent)  # torchrun and python of this environment, as on the image's PATH


def _entrypoint(*args: str, nproc: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    (stage,) = dockerfile.stages(ROOT / "Dockerfile.train")
    env = {**os.environ, **stage.env(), "NPROC": nproc, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env["XDG_CACHE_HOME"] = str(cwd / "cache")
    env["MPLCONFIGDIR"] = str(cwd / "mpl")
    env["TMPDIR"] = str(cwd)  # torchrun leaves a torchelastic_* folder there on every run
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["/bin/sh", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_no_arguments_prints_the_training_help(tmp_path: Path) -> None:
    out = _entrypoint(nproc="auto", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: skin-train")


def test_a_command_runs_as_it_is(tmp_path: Path) -> None:
    out = _entrypoint("python", "-c", "import sys; print('ran', sys.argv[1:])", "x", nproc="2", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "ran ['x']"


@pytest.mark.slow  # imports torch (NPROC=auto counts the GPUs; none here)
@pytest.mark.parametrize("nproc", ["1", "auto"])
def test_one_process_runs_without_torchrun_so_its_line_and_status_are_the_containers(
    tmp_path: Path, nproc: str
) -> None:
    out = _entrypoint("--data", str(tmp_path / "missing"), "--out", "r", nproc=nproc, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("skin-train: error: ") and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_under_torchrun_train_one_run(tmp_path: Path) -> None:
    from training.synthetic import generate

    data = generate(
        tmp_path / "data",
        class_names=["Acne", "Eczema", "Moles"],
        train_per_class=12,
        test_per_class=4,
        size_range=(64, 96),
    )
    run = tmp_path / "runs" / "ddp"
    args = [
        "--data", str(data), "--out", str(run), "--arch", "test_efficientnet", "--no-pretrained",
        "--img-size", "64", "--batch-size", "4", "--accum-steps", "1", "--workers", "0",
        "--epochs", "1", "--device", "cpu", "--no-plots", "--model-version", "ddp-test",
    ]  # fmt: skip
    out = _entrypoint(*args, nproc="2", cwd=tmp_path, timeout=280)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # rank 0 alone speaks, and it reports a world of two
    banner = [line for line in out.stdout.splitlines() if "test_efficientnet @ 64px" in line]
    assert len(banner) == 1 and "device cpu x2" in banner[0]
    assert {"best.pt", "last.pt", "metrics.csv", "report.json", "config.yaml"} <= {
        p.name for p in run.iterdir()
    }
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 1  # header + one epoch, written once
