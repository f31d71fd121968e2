"""Stopping a command cleanly: SIGTERM (docker stop, Kubernetes, torchrun passing it on) raises as Ctrl-C
does, so one ``except KeyboardInterrupt`` cleans up and says one line for both. Stdlib only: skin-export and
skin-demo use it too."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    signum = signal.SIGTERM


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM raises Terminated while the block runs (in the main thread: handlers belong there; elsewhere
    nothing changes), then the earlier handler is back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    earlier = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, earlier if earlier is not None else signal.SIG_DFL)


def how(stop: KeyboardInterrupt) -> tuple[str, int]:
    """ "interrupted" or "stopped by SIGTERM", and the exit status (128 + the signal, as shells report)."""
    signum = int(getattr(stop, "signum", signal.SIGINT))
    return ("stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"), 128 + signum
