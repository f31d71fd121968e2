"""skin-serve: serve a model bundle over HTTP (uvicorn + the runtime app)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from runtime.bundle import BundleError

if TYPE_CHECKING:
    from runtime.settings import Settings


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one line (``prog: error: …``) and exit 2, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="skin-serve",
        description="Serve a skin-lesion model bundle: the web page at / and the JSON API under /api.",
    )
    parser.add_argument(
        "--bundle", default=os.environ.get("SKIN_BUNDLE", ""), help="bundle directory (SKIN_BUNDLE)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--threads",
        type=_threads,
        default=None,
        help="onnxruntime threads (default: SKIN_THREADS, else 0: the CPU quota)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's and the runtime's log level (default info)",
    )
    return parser


def _threads(value: str) -> int:
    """As SKIN_THREADS: a whole number, 0 for the CPU quota."""
    from runtime.settings import MAX_THREADS  # here: training's and export's CLIs import this module

    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if not 0 <= threads <= MAX_THREADS:
        raise argparse.ArgumentTypeError(
            f"want a whole number from 0 to {MAX_THREADS} (0: the CPU quota), not {value!r}"
        )
    return threads


def check_port(host: str, port: int) -> None:
    """ValueError in one line when a server could not listen on host:port (in use, unknown address)."""
    import errno
    import socket

    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as exc:
            hint = (
                " (is another server running there? pass --port N)" if exc.errno == errno.EADDRINUSE else ""
            )
            raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None


def preflight(host: str, port: int, bundle: str) -> Settings:
    """What serving checks before loading anything, ValueError in one line: the port (a busy one is the
    commonest start-up failure), then the SKIN_* settings."""
    from runtime.settings import Settings

    check_port(host, port)
    return Settings.from_env(single_process=True, bundle=bundle)


def serve(
    *,
    bundle: str,
    host: str,
    port: int,
    threads: int | None = None,
    log_level: str = "info",
    grace_s: int = 30,
) -> None:
    """Check the bundle first (one clear line if it is bad), then run uvicorn until Ctrl-C or SIGTERM, which
    waits ``grace_s`` for running requests before it cancels them (answered 503 shutting_down)."""
    import uvicorn

    from runtime import logs
    from runtime.app import OneLineStartupErrors, create_app
    from runtime.engine import Engine
    from runtime.protocol import H11Protocol

    # First: as a container's PID 1 a signal with no handler is dropped, so a stop while the model loads
    # would wait for SIGKILL. uvicorn drains in-flight requests on SIGTERM, then re-raises the signal: both
    # are a clean exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    settings = preflight(host, port, bundle)
    workers = os.environ.get("WEB_CONCURRENCY", "").strip()
    if workers not in ("", "1"):
        print(
            f"skin-serve: runs one process; WEB_CONCURRENCY={workers[:8]} applies to "
            "`uvicorn runtime.app:app --workers N`, not here",
            file=sys.stderr,
            flush=True,
        )
    if threads is not None:
        settings = dataclasses.replace(settings, threads=threads)
    engine = Engine.from_settings(settings)
    engine.warmup()  # here, not in uvicorn's lifespan: a model that fails is then one line and exit 2
    app = OneLineStartupErrors(create_app(settings, engine=engine))
    served = shown(f"{engine.meta.model_name} {engine.meta.model_version}")
    print(f"skin-serve: {served} on http://{host}:{port}/", flush=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=logs.uvicorn_config(log_level),
        access_log=False,
        timeout_graceful_shutdown=grace_s,
        # JSON when h11 cannot parse a request, a time limit on the request head as on the body, and a
        # lingering close after an answer sent before the body was read, bounded by both limits
        http=H11Protocol.with_head_timeout(settings.body_timeout_s, linger_bytes=4 * settings.max_body_bytes),
        workers=1,  # uvicorn would otherwise take WEB_CONCURRENCY, which needs an import string
        ws="none",  # no WebSocket route: an Upgrade request is an ordinary one (not a bare 403 from wsproto)
    )


def shown(text: str) -> str:
    """Text from a bundle, which may come from anyone, for the terminal: control characters (an escape
    sequence that retitles or clears it, a line break that forges a line) as escapes, not acted on."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.bundle:
        print("skin-serve: no bundle given: pass --bundle DIR or set SKIN_BUNDLE", file=sys.stderr)
        return 2
    try:
        serve(
            bundle=args.bundle, host=args.host, port=args.port, threads=args.threads, log_level=args.log_level
        )
    except (BundleError, ValueError) as exc:
        print(f"skin-serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
