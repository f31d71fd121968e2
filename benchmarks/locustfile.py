"""Locust users for the skin-lesion API: uploads of a realistic image mix, now and then /api/info and
/api/report.

Closed loop with no think time: each user sends its next request as soon as the last one is answered, so
the number of users is the concurrency (the overload run paces each user instead: SKIN_LOCUST_RATE, below).
Works against the runtime and against the reference-style baseline (both speak the reference API). Every
prediction is checked: HTTP 200 and a ``predictions`` object whose probabilities sum to 1; anything else
counts as a failure.

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 4 -r 4 --run-time 30s \\
        --csv runs/bench/locust/runtime-c4 --html runs/bench/locust/runtime-c4.html
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import gevent
from locust import FastHttpUser, constant, constant_throughput, events

from benchmarks import images

# Built once per Locust process: the load generator then only sends bytes (little CPU on a shared machine).
BODIES = {
    kind.name: images.multipart(data, f"upload.{images.EXTENSION[kind.fmt]}", images.MIME[kind.fmt])
    for kind, data in zip(images.KINDS, images.mix().values(), strict=True)
}
# That took a second or two during which gevent's cached clock stood still; without a refresh, Locust's
# --run-time timer (armed on that stale clock) fires at once and the run ends before it starts.
gevent.get_hub().loop.update_now()


def check_prediction(response: Any) -> None:
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}")
        return
    try:
        predictions = response.json()["predictions"]
        total = sum(float(p) for p in predictions.values())
    except Exception:  # any malformed answer is a failed request, whatever its shape
        response.failure("no predictions object in the answer")
        return
    if not predictions or abs(total - 1.0) > 1e-3:
        response.failure(f"{len(predictions)} predictions summing to {total:.4f}")


def check_json(response: Any, key: str | None = None) -> None:
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}")
        return
    try:
        body = response.json()
    except Exception:
        response.failure("the answer is not JSON")
        return
    if not isinstance(body, dict) or (key is not None and key not in body):
        response.failure(f"the answer lacks {key!r}")


def upload(kind: images.Kind) -> Callable[[FastHttpUser], None]:
    body, content_type = BODIES[kind.name]

    def task(user: FastHttpUser) -> None:
        with user.client.post(
            "/api/predict",
            data=body,  # type: ignore[arg-type]  # bytes are sent as they are
            headers={"content-type": content_type},
            name=f"predict {kind.name}",
            catch_response=True,
        ) as response:
            check_prediction(response)

    task.__name__ = "predict_" + kind.name.split()[0]
    return task


def info(user: FastHttpUser) -> None:
    with user.client.get("/api/info", name="info", catch_response=True) as response:
        check_json(response, "model_name")


def report(user: FastHttpUser) -> None:
    with user.client.get("/api/report", name="report", catch_response=True) as response:
        if response.status_code == 404 and error_code(response) == "no_report":
            response.success()  # the runtime's answer for a bundle without report.json, not a failure
            return
        check_json(response)


def error_code(response: Any) -> str | None:
    """The runtime's error code ({"error": {"code": …}}), or None."""
    try:
        return str(response.json()["error"]["code"])
    except Exception:  # any other body has no code
        return None


# Open-ish load for the overload run (benchmarks/overload.py): each user paces itself to this many tasks per
# second, so refused requests (fast 503s) do not turn into a flood, nor slow answers into less load.
RATE = float(os.environ.get("SKIN_LOCUST_RATE", "0"))
# Where to write every prediction's latency by HTTP status (Locust's own statistics mix 200s with 503s).
BY_STATUS_OUT = os.environ.get("SKIN_LOCUST_BY_STATUS")
by_status: dict[str, list[float]] = defaultdict(list)


@events.request.add_listener
def record_status(name: str, response_time: float, response: Any = None, **_: Any) -> None:
    if BY_STATUS_OUT and name.startswith("predict"):
        status = str(getattr(response, "status_code", None) or 0)  # 0: no answer (connection error)
        if status == "503" and not response.headers.get("retry-after"):
            status = "503 without Retry-After"
        by_status[status].append(response_time)


@events.quitting.add_listener
def write_by_status(**_: Any) -> None:
    if BY_STATUS_OUT:
        with open(BY_STATUS_OUT, "w") as f:
            json.dump(by_status, f)


class ImageMixUser(FastHttpUser):
    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    network_timeout = 120.0  # the baseline can queue a 12 MP photo behind many others
    connection_timeout = 10.0
    tasks = {**{upload(kind): kind.weight for kind in images.KINDS}, info: 1, report: 1}  # type: ignore[assignment]

    def on_start(self) -> None:
        # Paced users started together stay in lockstep: bursts of N requests, then silence (measured: a
        # 9-slot server then serves 9 requests a second, whatever its speed). A random phase spreads them.
        if RATE > 0:
            gevent.sleep(random.uniform(0, 1 / RATE))
