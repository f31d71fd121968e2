"""Stopping a command cleanly: SIGTERM (docker stop, Kubernetes, torchrun passing it on) raises as Ctrl-C
does, so one ``except KeyboardInterrupt`` cleans up and says one line for both. Stdlib only: skin-export and
skin-demo use it too; ``stopped`` words the line skin-train prints."""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
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


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the block to end, then stop as they would have; a second one stops at once
    (a write that hangs). In the main thread; a signal mask would not do: the kernel hands a blocked signal
    to another of the process's threads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if caught:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        caught.append(signum)

    stops = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    earlier = {signum: signal.signal(signum, hold) for signum in stops}  # an ignored one stays ignored
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if caught:
        raise Terminated if caught[0] == signal.SIGTERM else KeyboardInterrupt


def how(stop: KeyboardInterrupt) -> tuple[str, int]:
    """Interrupted or stopped by SIGTERM, in words, and the exit status (128 + the signal, as shells give)."""
    signum = int(getattr(stop, "signum", signal.SIGINT))
    return ("stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"), 128 + signum


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run; ``run_dir`` is where it can be resumed from, None before a last.pt
    exists; ``previous`` is set when an --overwrite run stops while the earlier run's files are still there.
    """

    def __init__(
        self, run_dir: Path | None, *, signum: int = signal.SIGINT, previous: Path | None = None
    ) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.signum = signum
        self.previous = previous


def stopped(stop: KeyboardInterrupt) -> tuple[str, int]:
    """The one line for people on a stopped run, and the exit status (128 + the signal, as shells report)."""
    what, status = how(stop)
    if not isinstance(stop, Interrupted):
        line = f"{what} before training started"
    elif stop.previous is not None:
        line = (
            f"{what} before the new run's first epoch ended; {stop.previous} still holds the earlier run "
            "(the same command starts the new one again)"
        )
    elif stop.run_dir is not None:
        line = f"{what}; continue with --resume {shlex.quote(str(stop.run_dir))}"
    else:
        line = f"{what} before the first epoch ended"
    return line, status
