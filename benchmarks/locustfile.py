"""Locust users for the skin-lesion API: uploads of a realistic image mix, now and then /api/info and
/api/report.

Closed loop with no think time: each user sends its next request as soon as the last one is answered, so
the number of users is the concurrency. Works against the runtime and against the reference-style baseline
(both speak the reference API). Every prediction is checked: HTTP 200 and a ``predictions`` object whose
probabilities sum to 1; anything else counts as a failure.

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 4 -r 4 --run-time 30s \\
        --csv runs/bench/locust/runtime-c4 --html runs/bench/locust/runtime-c4.html
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from locust import FastHttpUser, constant

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
        check_json(response)


class ImageMixUser(FastHttpUser):
    wait_time = constant(0)
    network_timeout = 120.0  # the baseline can queue a 12 MP photo behind many others
    connection_timeout = 10.0
    tasks = {**{upload(kind): kind.weight for kind in images.KINDS}, info: 1, report: 1}  # type: ignore[assignment]
