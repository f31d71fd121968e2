"""Settings from the environment: every value is checked at start-up, with one line naming the variable."""

from __future__ import annotations

import ast
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import logs
from runtime.settings import MB, Settings
from tests.server import ROOT, free_port, start_server, stop_server


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SKIN_TOP_K", "0"),
        ("SKIN_TOP_K", "-1"),
        ("SKIN_THREADS", "-2"),
        ("SKIN_THREADS", "100000"),  # onnxruntime would start them all
        ("SKIN_INFERENCE_CONCURRENCY", "0"),
        ("SKIN_MAX_QUEUE", "-1"),
        ("SKIN_MAX_UPLOADS", "0"),
        ("SKIN_MAX_BATCH_FILES", "0"),
        ("SKIN_GATHER", "0"),
        ("SKIN_MAX_PIXELS", "0"),
        ("SKIN_MAX_PIXELS", "89478486"),  # Pillow refuses larger images as decompression bombs
        ("SKIN_MAX_IMAGE_MB", "0"),
        ("SKIN_MAX_IMAGE_MB", "-1"),
        ("SKIN_MAX_IMAGE_MB", "inf"),
        ("SKIN_MAX_IMAGE_MB", "1e-7"),
        ("SKIN_MAX_BODY_MB", "nan"),
        ("SKIN_MAX_BODY_MB", "1e305"),  # finite, but not in bytes
        ("SKIN_MAX_IMAGE_MB", "1048577"),
        ("SKIN_BODY_TIMEOUT_S", "0"),
        ("SKIN_TOP_K", "abc"),
        ("WEB_CONCURRENCY", "abc"),
        ("WEB_CONCURRENCY", "0"),
        ("SKIN_ORT_SPINNING", "maybe"),
        ("SKIN_MODEL_VARIANT", "int4"),
        ("SKIN_ALLOWED_FORMATS", "gif"),
        ("SKIN_ALLOWED_FORMATS", " , "),  # nothing allowed: every upload would be refused
        ("SKIN_PROVIDERS", "NoSuchExecutionProvider"),
        ("SKIN_PROVIDERS", " , "),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env()


@pytest.mark.parametrize(
    ("name", "most"),
    [
        ("SKIN_THREADS", "1,024"),
        ("SKIN_INFERENCE_CONCURRENCY", "64"),
        ("SKIN_GATHER", "64"),
        ("SKIN_MAX_BATCH_FILES", "64"),
        ("SKIN_MAX_QUEUE", "1,024"),
        ("SKIN_MAX_UPLOADS", "1,024"),
        ("WEB_CONCURRENCY", "64"),  # uvicorn's workers, each with its own model
    ],
)
def test_counts_past_their_bound_are_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, name: str, most: str
) -> None:
    # Each unit holds memory (a run's buffers, a decoded image, a body): a typo would be met only under load.
    monkeypatch.setenv(name, "100000")
    with pytest.raises(ValueError, match=f"^{name} must be at most {most}, not 100000$"):
        Settings.from_env()
    monkeypatch.setenv(name, most.replace(",", ""))
    Settings.from_env()  # the bound itself is taken


def test_the_largest_values_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_THREADS", "1024")
    monkeypatch.setenv("SKIN_MAX_BODY_MB", "1048576")
    monkeypatch.setenv("SKIN_MAX_PIXELS", "89478485")
    settings = Settings.from_env()
    assert (settings.threads, settings.max_body_bytes) == (1024, 1 << 40)
    assert settings.max_pixels == 89_478_485


def test_an_empty_environment_gives_the_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env() == Settings()  # the dataclass's defaults are what the README lists
    assert Settings().memory_arena
    monkeypatch.setenv("SKIN_ORT_MEMORY_ARENA", "false")
    assert not Settings.from_env().memory_arena


def test_the_smallest_size_limit_is_one_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_MAX_IMAGE_MB", "0.00000096")  # 1.007 bytes
    assert Settings.from_env().max_image_bytes == 1


def test_the_callers_bundle_is_taken_over_skin_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_BUNDLE", "from-env")
    assert Settings.from_env().bundle == "from-env"
    assert Settings.from_env(bundle="from-cli").bundle == "from-cli"  # skin-serve --bundle


def test_good_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    given = {
        "SKIN_TOP_K": "3",
        "SKIN_MAX_IMAGE_MB": "0.5",
        "SKIN_MAX_QUEUE": "0",
        "SKIN_ORT_SPINNING": "true",
    }
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.top_k, settings.max_image_bytes, settings.max_queue) == (3, MB // 2, 0)
    assert settings.spinning


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("SKIN_ALLOWED_FORMATS", "png", "allowed_formats", ("PNG",)),
        ("SKIN_ALLOWED_FORMATS", " jpeg, WebP ,", "allowed_formats", ("JPEG", "WEBP")),
        ("SKIN_MODEL_VARIANT", " FP32 ", "model_variant", "fp32"),
        ("SKIN_OPENVINO", " BF16 ", "openvino", "bf16"),
    ],
)
def test_names_are_read_whatever_their_case_and_spaces(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(Settings.from_env(), field) == expected


def test_web_concurrency_divides_the_threads_only_among_uvicorn_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("runtime.engine.available_cpus", lambda: 8)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert Settings.from_env().threads == 2  # uvicorn --workers 4: a quarter of the CPUs each
    assert Settings.from_env(single_process=True).threads == 0  # skin-serve: one process, all of them
    monkeypatch.setenv("WEB_CONCURRENCY", " ")  # set but blank: one worker
    assert Settings.from_env().threads == 0


def test_threads_spin_only_with_one_inference_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Overlapping runs whose threads spin take the cores from each other (a quarter fewer answers served).
    default = Settings.from_env()
    assert (
        (default.inference_concurrency, default.spinning)
        == (2, False)
        == (
            Settings().inference_concurrency,
            Settings().spinning,
        )
    )
    monkeypatch.setenv("SKIN_INFERENCE_CONCURRENCY", "1")
    assert Settings.from_env().spinning
    monkeypatch.setenv("SKIN_ORT_SPINNING", "false")
    assert not Settings.from_env().spinning
    monkeypatch.setenv("SKIN_INFERENCE_CONCURRENCY", "2")
    monkeypatch.setenv("SKIN_ORT_SPINNING", "true")
    assert Settings.from_env().spinning  # asked for: the measurement is the user's to make


def test_openvino_runs_one_inference_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_OPENVINO", "bf16")
    assert Settings.from_env().inference_concurrency == 1  # two at once gained nothing on OpenVINO
    monkeypatch.setenv("SKIN_INFERENCE_CONCURRENCY", "2")
    assert Settings.from_env().inference_concurrency == 2


def test_uvicorn_app_reads_the_environment_only_when_served() -> None:
    env = {"SKIN_TOP_K": "0", "PATH": "/usr/bin:/bin"}
    imported = subprocess.run(
        [sys.executable, "-c", "import runtime.app"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert imported.returncode == 0  # skin-serve and the tests import the module with their own settings
    served = subprocess.run(
        [sys.executable, "-m", "uvicorn", "runtime.app:app", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 3 and "Traceback" not in served.stderr  # uvicorn's: the app cannot start
    assert served.stderr.strip().splitlines() == ["runtime.app: SKIN_TOP_K must be at least 1, not 0"]


def test_uvicorn_workers_with_a_bad_setting_stop_instead_of_restarting() -> None:
    # Exit 2 was a worker that "died": uvicorn started another, for ever (5 rounds in 15 s, still going).
    env = {"SKIN_TOP_K": "0", "WEB_CONCURRENCY": "2", "PATH": "/usr/bin:/bin"}
    served = subprocess.run(
        [sys.executable, "-m", "uvicorn", "runtime.app:app", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in served.stderr and "died" not in served.stderr
    assert "runtime.app: SKIN_TOP_K must be at least 1, not 0" in served.stderr


@pytest.mark.slow
def test_skin_serve_runs_one_process_whatever_web_concurrency_says(tiny_bundle: Path) -> None:
    # Platforms set WEB_CONCURRENCY; uvicorn would take it and refuse an app object (exit 3).
    command = [sys.executable, "-m", "runtime", "--bundle", str(tiny_bundle), "--port", "{port}"]
    url, proc = start_server(tiny_bundle, command=command, env={"WEB_CONCURRENCY": "4"})
    assert stop_server(proc) == 0


def test_library_warnings_are_json_and_multipart_parser_chatter_is_off() -> None:
    logs.setup()
    handlers = logging.getLogger("py.warnings").handlers
    assert any(isinstance(h.formatter, logs.JsonFormatter) for h in handlers)
    record = logging.LogRecord(
        "py.warnings", logging.WARNING, "x.py", 1, "UserWarning: Corrupt EXIF", None, None
    )
    assert json.loads(handlers[0].format(record))["logger"] == "py.warnings"
    # python-multipart puts bytes of the (health-data) body into its warnings; the client gets a 400 anyway.
    assert logging.getLogger("python_multipart").getEffectiveLevel() >= logging.ERROR


def _readme_settings() -> dict[str, str]:
    """The README's Configuration table: variable → its default cell."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Configuration (environment)", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([A-Z_0-9]+)` \| ([^|]*) \|", section, flags=re.MULTILINE))


def test_the_readme_lists_every_setting_the_code_reads() -> None:
    read = {
        node.value
        for module in ("settings.py", "metrics.py")  # metrics.py: PROMETHEUS_MULTIPROC_DIR
        for node in ast.walk(ast.parse((ROOT / "runtime" / module).read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"SKIN_[A-Z_0-9]+|WEB_CONCURRENCY|PROMETHEUS_MULTIPROC_DIR", node.value)
    }
    assert read == set(_readme_settings())
    # and every name its prose gives is one of them: a misspelt one (SKIN_MAX_UPLOAD) would be set in vain
    named = set(re.findall(r"SKIN_[A-Z_0-9]*[A-Z0-9]", (ROOT / "README.md").read_text(encoding="utf-8")))
    assert named - read == set()


def test_the_readmes_defaults_are_the_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = []
    for name, cell in _readme_settings().items():
        # A plain value, perhaps explained ("0 = CPU quota", "2 (1 with …)"); "–" and conditions are words.
        plain = re.fullmatch(r"`?([^` ]+)`?(?: = .*| \(.*\))?", cell.strip())
        if plain is None or plain.group(1) == "–":
            continue
        with monkeypatch.context() as env:
            env.setenv(name, plain.group(1))
            assert Settings.from_env() == Settings(), f"{name}={plain.group(1)} is not the default"
        checked.append(name)
    assert len(checked) > len(_readme_settings()) // 2  # the table was read
