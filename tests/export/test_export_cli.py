"""skin-export's arguments, defaults and exit statuses, with the export itself replaced (no model built)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from export import cli
from export.errors import ExportError
from training.stop import Terminated

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import export.bundle

    seen: list[dict[str, Any]] = []

    def fake(checkpoint: str, out: str, **kwargs: Any) -> None:
        seen.append({"checkpoint": checkpoint, "out": out, **kwargs})
        kwargs["log"]("a progress line")

    monkeypatch.setattr(export.bundle, "export_bundle", fake)
    return seen


def test_defaults_reach_the_export(calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run/best.pt", "--out", "b"]) == 0
    (call,) = calls
    call.pop("log")
    assert call == {
        "checkpoint": "run/best.pt",
        "out": "b",
        "data": None,
        "no_data": False,
        "report": None,
        "parity_images": 16,
        "int8": "auto",
        "opset": 18,
        "target_precision": 0.9,
        "ood_acceptance": 0.95,
        "overwrite": False,
    }
    # The last line says what to do next, in words a shell takes as they are.
    assert capsys.readouterr().err == "a progress line\nserve it: skin-serve --bundle b\n"
    assert cli.main(["run/best.pt", "--out", "my bundles/b"]) == 0
    assert capsys.readouterr().err.endswith("serve it: skin-serve --bundle 'my bundles/b'\n")


def test_every_flag_reaches_the_export(
    calls: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "c.pt", "--out", "b", "--no-data", "--report", "r.json", "--parity-images", "4", "--int8", "off",
        "--opset", "19", "--target-precision", "0.8", "--ood-acceptance", "0.9", "--overwrite", "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    (call,) = calls
    call.pop("log")
    assert call == {
        "checkpoint": "c.pt",
        "out": "b",
        "data": None,
        "no_data": True,
        "report": "r.json",
        "parity_images": 4,
        "int8": "off",
        "opset": 19,
        "target_precision": 0.8,
        "ood_acceptance": 0.9,
        "overwrite": True,
    }
    assert capsys.readouterr().err == ""  # --quiet: no progress lines
    assert cli.main(["c.pt", "--out", "b", "--data", "ds", "--quiet"]) == 0
    assert calls[-1]["data"] == "ds" and calls[-1]["no_data"] is False


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        pytest.param(ExportError("no such thing"), 2, "skin-export: error: no such thing", id="export-error"),
        pytest.param(
            OSError(28, "No space left on device", "b/model.onnx"),
            2,
            "skin-export: error: No space left on device: b/model.onnx",
            id="os-error",
        ),
        pytest.param(
            OSError(13, "Permission denied"), 2, "skin-export: error: Permission denied: b", id="no-file"
        ),
        pytest.param(KeyboardInterrupt(), 130, "skin-export: interrupted; nothing was written", id="ctrl-c"),
        pytest.param(Terminated(), 143, "skin-export: stopped by SIGTERM; nothing was written", id="sigterm"),
        pytest.param(
            Terminated(signal.SIGHUP), 129, "skin-export: stopped by SIGHUP; nothing was written", id="sighup"
        ),
    ],
)
def test_failures_are_one_line_and_an_exit_status(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    code: int,
    line: str,
) -> None:
    import export.bundle

    def failing(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(export.bundle, "export_bundle", failing)
    assert cli.main(["c.pt", "--out", "b", "--quiet"]) == code
    assert capsys.readouterr().err == line + "\n"


def test_a_real_sigterm_during_the_export_is_one_line_and_143(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import export.bundle
    from tests.export.conftest import terminate_self

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(export.bundle, "export_bundle", terminate_self)
    assert cli.main(["c.pt", "--out", "b", "--quiet"]) == 143
    assert capsys.readouterr().err == "skin-export: stopped by SIGTERM; nothing was written\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_data_and_no_data_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["c.pt", "--out", "b", "--data", "ds", "--no-data"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "not allowed with argument" in err


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        pytest.param("export.cli", ["c.pt", "--out", "b"], id="skin-export"),
        pytest.param("export.demo", ["--no-serve", "--bundle-dir", "b"], id="skin-demo"),
    ],
)
def test_without_the_train_extra_it_says_what_to_install(
    module: str, argv: list[str], tmp_path: Path
) -> None:
    """Both are installed with the package, also where only the runtime extra is (the serving image)."""
    blocked = ("torch", "timm", "onnxsim")  # None in sys.modules: the import fails as if not installed
    code = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); from {module} import main; "
    code += f"sys.exit(main({argv!r}))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    prog = "skin-export" if module == "export.cli" else "skin-demo"
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith(f"{prog}: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert " is not installed; " in done.stderr and "pip install -e '.[train,runtime]'" in done.stderr
    assert not (tmp_path / "b").exists()


def test_a_missing_module_of_its_own_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only export's dependencies get the install line: a broken import of ours stays a traceback."""
    import export.bundle

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ModuleNotFoundError("No module named 'export.nothing'", name="export.nothing")

    monkeypatch.setattr(export.bundle, "export_bundle", broken)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["c.pt", "--out", "b", "--quiet"])
