""".ci/floors.py, which turns an extra's `>=` floors into the pins make test-runtime-floors installs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("floors", ROOT / ".ci" / "floors.py")
assert _spec is not None and _spec.loader is not None
floors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floors)


def _pyproject(*requirements: str) -> str:
    listed = ", ".join(f"'{r}'" for r in requirements)
    return f"[project]\nname = 'x'\n[project.optional-dependencies]\nruntime = [{listed}]\ndev = ['pytest']\n"


def test_each_floor_becomes_a_pin_in_order() -> None:
    text = _pyproject("onnxruntime>=1.20", "starlette >= 1.7.0", "uvicorn[standard]>=0.50", "h11>=0.16,<1")
    assert floors.pins(text, "runtime") == [
        "onnxruntime==1.20",
        "starlette==1.7.0",
        "uvicorn[standard]==0.50",
        "h11==0.16",
    ]


def test_an_environment_marker_stays_with_its_pin() -> None:
    text = _pyproject('openvino>=2025.0; platform_machine == "x86_64"')
    assert floors.pins(text, "runtime") == ['openvino==2025.0; platform_machine == "x86_64"']


@pytest.mark.parametrize(
    "requirement",
    [
        pytest.param("numpy", id="no-version"),
        pytest.param("numpy==1.26", id="exact"),
        pytest.param("numpy~=1.26", id="compatible"),
        pytest.param("numpy>1.26", id="greater"),
        pytest.param("numpy<2", id="cap-only"),
        pytest.param("numpy>=1.26,>=1.24", id="two-floors"),
        pytest.param("numpy>=1.26,==1.26.4", id="floor-and-exact"),
        pytest.param("numpy>=1.*", id="wildcard"),
        pytest.param("numpy @ https://example.org/numpy.whl", id="url"),
    ],
)
def test_a_requirement_without_one_floor_is_named(requirement: str) -> None:
    with pytest.raises(floors.NoPin, match="^'numpy"):
        floors.pins(_pyproject("pillow>=12.3", requirement), "runtime")


def test_an_extra_that_is_not_there_names_those_that_are() -> None:
    with pytest.raises(floors.NoPin, match=r"^no extra 'runtim' \(there are: dev, runtime\)$"):
        floors.pins(_pyproject("pillow>=12.3"), "runtim")


def test_the_command_prints_the_pins_or_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(_pyproject("pillow>=12.3", "numpy>=1.26"), encoding="utf-8")
    bad.write_text(_pyproject("pillow>=12.3", "numpy"), encoding="utf-8")
    assert floors.main(["runtime", "--pyproject", str(good)]) == 0
    assert capsys.readouterr().out == "pillow==12.3\nnumpy==1.26\n"
    assert floors.main(["runtime", "--pyproject", str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"floors.py: {bad}: 'numpy': has no single '>=' floor to pin\n"
    assert floors.main(["runtime", "--pyproject", str(tmp_path / "none.toml")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_every_runtime_requirement_has_a_floor() -> None:
    # else make test-runtime-floors stops before installing; here it fails in a second
    assert floors.pins((ROOT / "pyproject.toml").read_text(encoding="utf-8"), "runtime")
