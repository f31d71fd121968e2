"""README.md against the repository: the flags its command lines give (and the values of those with a list of
choices), the files its Layout and lists name."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
COMMAND = re.compile(
    r"(skin-serve|skin-train|skin-export|skin-demo|-m training|python -m benchmarks\.[a-z_]+)\b([^#]*)"
)


def _section(title: str) -> str:
    body = README.split(title, 1)[1].split("\n", 1)[1]
    return re.split(r"\n#{2,3} ", body, maxsplit=1)[0]  # up to the next heading


def _help(command: str) -> str:
    from benchmarks import floor, model_bench, overload, run, weights
    from export import cli as export_cli
    from export import demo
    from runtime import cli as runtime_cli
    from training import cli as training_cli

    mains: dict[str, Callable[[list[str]], object]] = {
        "skin-serve": runtime_cli.main,
        "skin-train": training_cli.main,
        "-m training": training_cli.main,
        "skin-export": export_cli.main,
        "skin-demo": demo.main,
        "python -m benchmarks.run": run.main,
        "python -m benchmarks.model_bench": model_bench.main,
        "python -m benchmarks.overload": overload.main,
        "python -m benchmarks.weights": weights.main,
        "python -m benchmarks.floor": floor.main,
    }
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        mains[command](["--help"])
    return out.getvalue()


def _command_lines() -> list[str]:
    """Each command line of the README's code blocks (continuations joined), and each inline code span."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", README, flags=re.MULTILINE | re.DOTALL))
    lines = [re.sub(r"(^|\s)#.*", "", line) for line in lines]  # a comment is prose
    return [part for line in lines for part in line.split("&&")]


def test_every_flag_a_readme_command_line_gives_exists() -> None:
    given: dict[str, set[str]] = {}
    for line in _command_lines():
        for command, rest in COMMAND.findall(line):
            given.setdefault(command, set()).update(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", rest))
    assert {"skin-serve", "skin-train", "skin-export", "skin-demo", "python -m benchmarks.run"} <= set(given)
    missing = {
        f"{command} {flag}"
        for command, flags in given.items()
        for flag in flags
        if not re.search(rf"{flag}(?![\w-])", _help(command))
    }
    assert not missing


@pytest.mark.parametrize(
    ("title", "command"),
    [("## The demo", "skin-demo"), ("## Training", "skin-train"), ("## Export", "skin-export")],
)
def test_every_flag_a_section_names_is_its_commands(title: str, command: str) -> None:
    prose = re.sub(r"^```.*?^```", "", _section(title), flags=re.MULTILINE | re.DOTALL)
    flags = set(re.findall(r"`(--[a-z0-9][a-z0-9-]*)", prose))
    assert flags
    assert not {flag for flag in flags if not re.search(rf"{flag}(?![\w-])", _help(command))}


def _choices(command: str) -> dict[str, set[str]]:
    """The flags of ``command`` that take one of a list of values, as --help shows them: --int8 {auto,off}."""
    return {
        flag: set(values.split(","))
        for flag, values in re.findall(r"(--[a-z0-9-]+) \{([^}]*)\}", _help(command))
    }


def _values(flag: str, text: str) -> list[str]:
    """The values ``text`` gives ``flag``: several for --servers a b, each of --int8 auto|off."""
    given = re.findall(rf"(?<![\w-]){flag}[ =]((?:(?!-)[\w.-]+(?:\|[\w.-]+)* ?)+)", text)
    return [value for words in given for word in words.split() for value in word.split("|")]


def test_every_value_a_readme_command_line_gives_a_flag_of_choices_is_one_of_them() -> None:
    wrong = set()
    for line in _command_lines():
        for command, rest in COMMAND.findall(line):
            for flag, allowed in _choices(command).items():
                wrong |= {f"{command} {flag} {v}" for v in _values(flag, rest) if v not in allowed}
    for title, command in (
        ("## The demo", "skin-demo"),
        ("## Training", "skin-train"),
        ("## Export", "skin-export"),
    ):
        spans = re.findall(r"`(--[^`]+)`", _section(title))
        for flag, allowed in _choices(command).items():
            wrong |= {
                f"{command} {flag} {v}" for span in spans for v in _values(flag, span) if v not in allowed
            }
    assert not wrong


def test_the_layout_names_every_module() -> None:
    layout = _section("## Layout")
    for package in ("runtime", "training", "export", "benchmarks"):
        row = re.search(rf"^{package}/ (.*)$", layout, flags=re.MULTILINE)
        assert row is not None, package
        named = set(re.findall(r"[\w.]+\.py", row[1]))
        modules = {p.name for p in (ROOT / package).glob("*.py") if not p.name.startswith("__")}
        assert named == modules, package
    tests = re.search(r"^tests/ (.*)$", layout, flags=re.MULTILINE)
    assert tests is not None
    named = set(re.findall(r"(\w+)/", tests[1])) | set(re.findall(r"\w+\.py", tests[1]))
    found = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    helpers = {p.name for p in (ROOT / "tests").glob("*.py") if p.name not in ("__init__.py", "conftest.py")}
    assert named == found | helpers
    webui = re.search(r"^webui/ (.*)$", layout, flags=re.MULTILINE)
    assert webui is not None
    assert set(webui[1].split()) == {p.name for p in (ROOT / "webui").iterdir() if p.is_file()}


def test_the_deploy_tests_are_all_described() -> None:
    described = set(re.findall(r"`(test_\w+\.py)`", _section("### What the deploy tests check")))
    assert described == {p.name for p in (ROOT / "tests" / "deploy").glob("test_*.py")}
