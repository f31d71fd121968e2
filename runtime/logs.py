"""Structured (JSON-lines) logs with the request id. Never log upload contents or client file names."""

from __future__ import annotations

import json
import logging
import time
import warnings
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class Logged(Exception):
    """Raised in place of an error the runtime has logged, where only the server can end the answer (it had
    started): the server closes the connection, and its own line for it is dropped (``setup``)."""


class NotLoggedTwice(logging.Filter):
    """uvicorn logs every exception out of the app ("Exception in ASGI application", with a traceback): the
    same error a second time, where the runtime's line has it already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], Logged))


def setup(level: str | int = "info") -> None:
    """JSON lines on stderr for the runtime's loggers and for Python warnings, and no second line from uvicorn
    for a request or an error the runtime logged (idempotent)."""
    logger = logging.getLogger("runtime")
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    # Library warnings as JSON lines too, not bare text on stderr; none under --log-level error or critical.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logger.level)
    # Pillow warns once per unreadable EXIF tag of an upload ("Corrupt EXIF data", "Skipping tag 41863"), and
    # only its orientation is read: a 0.8 MB PNG of 65,535 such tags logged 65,536 lines (21 MB) in 12 s.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
    # Pillow's debug lines quote an upload's EXIF values (a camera's owner, an image description, the GPS
    # block's bytes): never written, even where the root logger is at debug (a host app, a --log-config).
    logging.getLogger("PIL").setLevel(logging.INFO)
    for name in ("runtime", "py.warnings"):
        target = logging.getLogger(name)
        if not any(getattr(h, "_skin_json", False) for h in target.handlers):
            handler = logging.StreamHandler()
            handler.setFormatter(JsonFormatter())
            handler._skin_json = True  # type: ignore[attr-defined]
            target.addHandler(handler)
            target.propagate = False
    # The runtime writes one JSON line per request: uvicorn's plain-text access line for the same request
    # (plain `uvicorn runtime.app:app` without --no-access-log) would be a second, without the request id.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    server = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, NotLoggedTwice) for f in server.filters):
        server.addFilter(NotLoggedTwice())
    # python-multipart warns about malformed bodies with bytes of the body in the message: uploads are health
    # data, and the client already gets a 400 for it.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)


class OncePerSecond(logging.Filter):
    """asyncio's "out of system resource" (no file descriptor left for a new connection) once a second, not
    ~3,000 times: CPython's accept loop goes on after the error, logging it up to the listen backlog (2048
    under uvicorn) times per try."""

    message = "socket.accept() out of system resource"

    def __init__(self) -> None:
        super().__init__()
        self.last = float("-inf")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.message):
            return True
        if record.created - self.last < 1.0:
            return False
        self.last = record.created
        return True


def uvicorn_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's own messages as JSON lines too (logging.config.dictConfig form). Its access log stays off:
    the runtime writes one line per request itself, with the request id."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"once_per_second": {"()": OncePerSecond}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        # Any other library's warnings and errors (asyncio's "socket.accept() out of system resource" when the
        # process is out of file descriptors) went to Python's last-resort handler: plain-text tracebacks.
        # At most warnings, fewer where --log-level asks for fewer.
        "root": {"handlers": ["stderr"], "level": max(logging.WARNING, logging.getLevelName(level.upper()))},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper()},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "asyncio": {"filters": ["once_per_second"]},
        },
    }
