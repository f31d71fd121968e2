"""The runtime's log lines: JSON, one per line, with the request's fields (runtime/logs.py)."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import warnings

import pytest
from PIL import Image

from runtime import logs
from runtime.preprocess import preprocess
from tests.images import encode
from tests.server import ROOT


def _record(exc_info: object = None, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("runtime.app", logging.WARNING, __file__, 1, "hello %s", ("there",), exc_info)  # type: ignore[arg-type]
    if fields:
        record.fields = fields
    return record


def test_a_log_line_is_json_with_the_request_fields() -> None:
    entry = json.loads(logs.JsonFormatter().format(_record(request_id="abc", status=200)))
    assert entry["level"] == "warning" and entry["logger"] == "runtime.app"
    assert entry["message"] == "hello there"
    assert (entry["request_id"], entry["status"]) == ("abc", 200)
    assert entry["time"].endswith("Z") and "exception" not in entry


def test_the_time_is_utc_to_the_millisecond() -> None:
    record = _record()
    record.created, record.msecs = 1767225600.005, 5.0  # 2026-01-01 00:00:00.005 UTC
    assert json.loads(logs.JsonFormatter().format(record))["time"] == "2026-01-01T00:00:00.005Z"


def test_uvicorns_second_line_for_an_error_the_runtime_logged_is_dropped_and_no_other() -> None:
    def failed(error: Exception) -> logging.LogRecord:
        try:
            raise error
        except Exception:
            return _record(sys.exc_info())

    keep = logs.NotLoggedTwice()
    assert keep.filter(failed(logs.Logged())) is False
    assert keep.filter(failed(ValueError("boom"))) is True and keep.filter(_record()) is True


def test_an_exception_is_logged_with_its_traceback_in_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = logs.JsonFormatter().format(_record(sys.exc_info()))
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_setup_sends_runtime_logs_and_warnings_as_json_once(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: list[bool] = []
    monkeypatch.setattr(logging, "captureWarnings", captured.append)
    logs.setup("info")
    logs.setup("info")  # idempotent: one handler each, not two
    for name in ("runtime", "py.warnings"):
        target = logging.getLogger(name)
        json_handlers = [h for h in target.handlers if isinstance(h.formatter, logs.JsonFormatter)]
        assert len(json_handlers) == 1 and target.propagate is False, name
    assert logging.getLogger("runtime").level == logging.INFO
    # uvicorn's second line for an error the runtime logged is dropped, by one filter however often set up
    assert sum(isinstance(f, logs.NotLoggedTwice) for f in logging.getLogger("uvicorn.error").filters) == 1
    assert captured == [True, True]  # Python warnings go to py.warnings, not bare text on stderr
    # python-multipart's warnings quote the (health-data) body: only its errors are logged
    assert logging.getLogger("python_multipart").level == logging.ERROR


def test_pillows_warnings_about_an_uploads_exif_tags_are_not_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    # One warning per bad tag: a 0.8 MB PNG of 65,535 logged 65,536 lines (21 MB) and held its request 12 s.
    monkeypatch.setattr(logging, "captureWarnings", lambda capture: None)
    tags = b"".join(struct.pack(">HHII", tag, 7, 1 << 30, 8) for tag in range(1000))  # data past the end
    exif = b"MM\0*" + struct.pack(">IH", 8, 1000) + tags + b"\0\0\0\0"
    data = encode(Image.new("RGB", (8, 8)), "PNG", exif=exif)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        logs.setup("info")
        assert preprocess(data, (8, 8)).shape == (8, 8, 3)
    assert seen == []


def test_pillows_debug_lines_about_an_uploads_exif_are_not_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Pillow logs each EXIF tag it reads at debug, with its value; a host app may run the root logger so.
    monkeypatch.setattr(logging, "captureWarnings", lambda capture: None)
    monkeypatch.setattr(logging.getLogger("PIL"), "level", logging.NOTSET)  # restored after the test
    exif = Image.Exif()
    exif[0x010E] = "Jane Doe, left forearm"  # ImageDescription
    data = encode(Image.new("RGB", (8, 8)), "JPEG", exif=exif.tobytes())
    caplog.set_level(logging.DEBUG)
    logs.setup("info")
    assert preprocess(data, (8, 8)).shape == (8, 8, 3)
    assert not [r for r in caplog.records if "Jane" in r.getMessage()]


def test_plain_uvicorns_access_line_is_not_written_beside_the_runtimes() -> None:
    # `uvicorn runtime.app:app` (README's WEB_CONCURRENCY command) sets its access logger to --log-level:
    # every request was logged twice, once in plain text without the request id.
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.setLevel(logging.INFO)
    try:
        logs.setup("info")
        assert not access.isEnabledFor(logging.INFO)
    finally:
        access.setLevel(level)


def test_warnings_are_not_logged_under_log_level_error() -> None:
    # `--log-level error` still wrote library warnings (Python's, asyncio's) to the log.
    assert logs.uvicorn_config("error")["root"]["level"] == logging.ERROR
    assert logs.uvicorn_config("debug")["root"]["level"] == logging.WARNING  # never every library's debug
    loggers = [logging.getLogger(name) for name in ("runtime", "py.warnings")]
    levels = [logger.level for logger in loggers]
    try:
        logs.setup("error")
        assert not logging.getLogger("py.warnings").isEnabledFor(logging.WARNING)
        logs.setup("info")
        assert logging.getLogger("py.warnings").isEnabledFor(logging.WARNING)
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def test_uvicorn_logs_json_without_its_own_access_log() -> None:
    config = logs.uvicorn_config("debug")
    loggers = config["loggers"]
    assert loggers["uvicorn"]["level"] == "DEBUG" and loggers["uvicorn"]["handlers"] == ["stderr"]
    assert loggers["uvicorn.access"] == {"handlers": [], "level": "WARNING", "propagate": False}
    assert config["formatters"]["json"]["()"] is logs.JsonFormatter


def _stderr_under_skin_serve(code: str) -> list[str]:
    """The stderr lines of ``code`` run in a fresh interpreter with skin-serve's logging configuration."""
    setup = "import logging.config, logging\nfrom runtime import logs\n"
    setup += "logging.config.dictConfig(logs.uvicorn_config('info'))\n"
    run = [sys.executable, "-c", setup + code]
    return subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT).stderr.splitlines()


def test_other_libraries_errors_are_json_lines_too() -> None:
    # asyncio logs a traceback whenever accept() fails (out of file descriptors): 10,000 plain-text in 4 s.
    lines = _stderr_under_skin_serve(
        "try:\n"
        "    raise OSError(24, 'Too many open files')\n"
        "except OSError:\n"
        "    logging.getLogger('asyncio').error('socket.accept() out of system resource', exc_info=True)\n"
    )
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["logger"] == "asyncio" and entry["level"] == "error"
    assert "Too many open files" in entry["exception"]


def test_running_out_of_file_descriptors_is_logged_once_a_second_not_thousands_of_times() -> None:
    # CPython's accept loop goes on after the error: one try logged it 2048 times (uvicorn's backlog), each
    # with its traceback, ~3,000 a second while the process was out of descriptors.
    lines = _stderr_under_skin_serve(
        "try:\n"
        "    raise OSError(24, 'Too many open files')\n"
        "except OSError:\n"
        "    for _ in range(2048):\n"
        "        logging.getLogger('asyncio').error('socket.accept() out of system resource', exc_info=1)\n"
        "logging.getLogger('asyncio').error('Task exception was never retrieved')\n"
    )
    messages = [json.loads(line)["message"] for line in lines]
    # Other errors are not held back.
    assert messages == ["socket.accept() out of system resource", "Task exception was never retrieved"]
