"""Stopping a command cleanly: SIGTERM (docker stop, Kubernetes, torchrun passing it on) and SIGHUP (the
terminal closed) raise as Ctrl-C does, so one ``except KeyboardInterrupt`` cleans up and says one line for
all. Stdlib only: skin-export and skin-demo use it too; ``stopped`` words the line skin-train prints."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def _stop(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _on_signal(signum: int, frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_stop() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated while the block runs (in the main thread: handlers belong there;
    elsewhere nothing changes), then the earlier handlers are back. An ignored SIGHUP stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup's: the command outlives its terminal
        stops.append(signal.SIGHUP)
    earlier = {signum: signal.signal(signum, _on_signal) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait for the block to end, then stop as they would have; a second one stops
    at once (a write that hangs). In the main thread; a signal mask would not do: the kernel hands a blocked
    signal to another of the process's threads."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if caught:
            raise _stop(signum)
        caught.append(signum)

    stops = [
        s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN
    ]
    earlier = {signum: signal.signal(signum, hold) for signum in stops}  # an ignored one stays ignored
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if caught:
        raise _stop(caught[0])


def how(stop: KeyboardInterrupt) -> tuple[str, int]:
    """Interrupted, or stopped by SIGTERM or SIGHUP, in words, and the exit status (128 + the signal, as
    shells give)."""
    signum = int(getattr(stop, "signum", signal.SIGINT))
    what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    return what, 128 + signum


def say_stopped(line: str) -> None:
    """The stop line on stderr. Where it cannot be written (the closed terminal was stderr: EIO; a pipe's
    reader gone: EPIPE), nothing is said: the exit status still tells, and what was written is safe. stderr
    then goes to os.devnull, or the interpreter's flush of the line at exit would fail too (exit 120)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # ValueError: a closed stream; no file number
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP during a run; ``run_dir`` is where it can be resumed from, None before a
    last.pt exists; ``previous`` is set when an --overwrite run stops while the earlier run's files are still
    there."""

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
