"""Prometheus metrics (prometheus-client), one registry per app so tests can build many apps."""

from __future__ import annotations

import errno
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
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(PLATFORM_COLLECTOR)
        return generate_latest(registry)

    def close(self) -> None:
        """This worker's in-flight count leaves the sum when it stops (its counters stay in it)."""
        if MULTIPROCESS_DIR:
            multiprocess.mark_process_dead(os.getpid())
