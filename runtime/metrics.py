"""Prometheus metrics (prometheus-client), one registry per app so tests can build many apps."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
# A whole request also holds a slow upload, up to SKIN_BODY_TIMEOUT_S (30 s; then 408), and is cancelled after
# the 30 s shutdown grace: with 10.24 s at the top, all of those were one +Inf.
_REQUEST_BUCKETS = (*_LATENCY_BUCKETS, 20.48, 40.96)
# Read once, as prometheus-client reads it when first imported: with it set, each value lives in a file there,
# so a scrape answered by any uvicorn worker adds up all of them (one worker's counters alone went 3, 1, 2
# between scrapes, which Prometheus reads as resets).
MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


# prometheus-client's files there start at 64 KiB each (four here) and double as they fill.
MULTIPROCESS_ROOM = 1 << 20


def _check_room(folder: Path) -> None:
    """OSError unless ``folder`` can take the metrics' files: they are written through mmap, and a page that
    a full tmpfs cannot give ends the process with SIGBUS, no word said."""
    with tempfile.TemporaryFile(dir=folder) as fh:  # unnamed: nothing is left there, however it ends
        try:
            os.posix_fallocate(fh.fileno(), 0, MULTIPROCESS_ROOM)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            # a file system that cannot reserve space (EOPNOTSUPP, EINVAL): not a reason to refuse


def _lock_file(folder: Path, pid: int | str) -> Path:
    """The file a worker holds locked while it lives, named by its PID as prometheus-client names its own."""
    return folder / f"worker_{pid}.lock"


# This process's lock, by folder: tests build many apps in one process, and a second lock on the same file
# from the same process would be refused.
_held: dict[tuple[int, Path], int] = {}


def _hold(folder: Path) -> None:
    """Lock this worker's file before its first value file exists: the kernel lets go of the lock however the
    process ends, SIGKILL and the OOM killer too."""
    key = (os.getpid(), folder)
    if key not in _held:
        fd = os.open(_lock_file(folder, os.getpid()), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        _held[key] = fd


def _let_go(folder: Path) -> None:
    fd = _held.pop((os.getpid(), folder), None)
    if fd is not None:
        with contextlib.suppress(FileNotFoundError):
            _lock_file(folder, os.getpid()).unlink()
        os.close(fd)


def forget_gone(folder: Path) -> None:
    """Take out of the sum the live gauges (skin_in_flight_requests) of workers gone without a word (SIGKILL,
    the OOM killer): their requests no longer exist. A worker is gone when its lock can be taken: unlike a
    PID, a lock is not fooled by a zombie, a PID used again or another PID namespace."""
    for gauge in folder.glob("gauge_live*_*.db"):
        pid = gauge.stem.rsplit("_", 1)[-1]
        lock = _lock_file(folder, pid)
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # none: not one of ours (each worker locks before it writes), left in the sum
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # its values, then its lock: a scrape stopped in between leaves the next one an unheld lock
            multiprocess.mark_process_dead(pid, str(folder))
            lock.unlink()
        except OSError:
            pass  # held: the worker runs; or another worker's scrape took the files out first
        finally:
            os.close(fd)


class Metrics:
    def __init__(self) -> None:
        if MULTIPROCESS_DIR and not Path(MULTIPROCESS_DIR).is_dir():
            raise ValueError(f"PROMETHEUS_MULTIPROC_DIR {MULTIPROCESS_DIR!r} is not a folder")
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's memory, CPU and open files (process_*), Python's version and GC: what sizing needs.
        # Across workers they would be one worker's, whichever took the scrape: then only Python's version.
        collectors = (
            (PLATFORM_COLLECTOR,)
            if MULTIPROCESS_DIR
            else (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR)
        )
        for collector in collectors:
            r.register(collector)
        try:
            if MULTIPROCESS_DIR:
                _check_room(Path(MULTIPROCESS_DIR))
                _hold(Path(MULTIPROCESS_DIR))
            self._define(r)
        except OSError as exc:  # each value is a file there: a read-only folder was a traceback
            raise ValueError(
                f"PROMETHEUS_MULTIPROC_DIR {MULTIPROCESS_DIR!r} cannot take the metrics' files "
                f"({exc.strerror or exc}): give a writable folder with 1 MiB free (a tmpfs), or unset it "
                "with one process"
            ) from None

    def _define(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            "skin_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "skin_request_seconds", "Total request latency", ["route"], buckets=_REQUEST_BUCKETS, registry=r
        )
        self.decode = Histogram(
            "skin_decode_seconds",
            "Image decode + resize time per image (not the wait for a decoding slot)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "skin_inference_seconds",
            "Model run time per batch (not the wait for a slot or for other images to gather)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "skin_in_flight_requests", "Requests being served now", registry=r, multiprocess_mode="livesum"
        )
        self.rejected = Counter(
            "skin_rejected",
            "Error answers (an error code in the body) by code, and each refused file of a batch's 200",
            ["reason"],
            registry=r,
        )
        self.images = Counter("skin_images", "Images classified", registry=r)
        self.gathered = Histogram(
            "skin_gathered_images",
            "Single-image requests run together per model run (SKIN_GATHER)",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16),
            registry=r,
        )
        # A gauge of 1, as prometheus-client writes an Info, which it cannot share between workers.
        self.model = Gauge(
            "skin_model_info",
            "The served model",
            ["name", "version", "sha256"],
            registry=r,
            multiprocess_mode="max",
        )

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's added up."""
        if not MULTIPROCESS_DIR:
            return generate_latest(self.registry)
        forget_gone(Path(MULTIPROCESS_DIR))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(PLATFORM_COLLECTOR)
        return generate_latest(registry)

    def close(self) -> None:
        """This worker's in-flight count leaves the sum when it stops (its counters stay in it)."""
        if MULTIPROCESS_DIR:
            multiprocess.mark_process_dead(os.getpid())
            _let_go(Path(MULTIPROCESS_DIR))
