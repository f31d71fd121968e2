"""Prometheus metrics (prometheus-client), one registry per app so tests can build many apps."""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process's memory, CPU and open files (process_*), Python's version and GC: what sizing needs.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.requests = Counter(
            "skin_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "skin_request_seconds", "Total request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=r
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
        self.in_flight = Gauge("skin_in_flight_requests", "Requests being served now", registry=r)
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
        self.model = Info("skin_model", "The served model", registry=r)
