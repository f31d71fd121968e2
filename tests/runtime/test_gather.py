"""SKIN_GATHER: single-image requests waiting for the model run together, each answered with its own row."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from runtime.app import create_app
from runtime.engine import Output
from runtime.gather import Gatherer
from runtime.settings import Settings
from tests.images import solid

CLASSES = 8


def _output(images: np.ndarray) -> Output:
    """Row i is one-hot at the value of image i's first pixel, so each answer shows whose image it was."""
    values = images[:, 0, 0, 0].astype(int)
    probs = np.eye(CLASSES, dtype=np.float32)[values]
    cam = np.repeat(probs[:, :, None, None], 2, axis=2)
    return Output(probs, cam, [{"confidence": f"image {v}"} for v in values])


def _images(n: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), v, dtype=np.uint8) for v in range(n)]


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail

    async def __call__(self, images: np.ndarray) -> Output:
        self.calls.append(images[:, 0, 0, 0].tolist())
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("model failed")
        return _output(images)


def _check(outputs: list[Output]) -> None:
    for value, out in enumerate(outputs):
        assert out.probabilities.shape == (1, CLASSES) and int(out.probabilities[0].argmax()) == value
        assert out.cam is not None and out.cam.shape == (1, CLASSES, 2, 1) and out.cam[0, value, 0, 0] == 1
        assert out.uncertainty == [{"confidence": f"image {value}"}]


def test_a_lone_request_runs_at_once_alone() -> None:
    async def main() -> tuple[Recorder, Output]:
        run = Recorder()
        return run, await Gatherer(run, asyncio.Semaphore(1), 4).infer(_images(1)[0])

    run, out = asyncio.run(main())
    assert run.calls == [[0]]
    _check([out])


def test_requests_queued_while_the_model_is_busy_run_together_up_to_the_limit() -> None:
    async def main() -> tuple[Recorder, list[Output]]:
        run, slot = Recorder(), asyncio.Semaphore(1)
        gatherer = Gatherer(run, slot, 3)
        async with slot:  # the model is busy (say, with a multi-image request) while six requests arrive
            tasks = [asyncio.create_task(gatherer.infer(image)) for image in _images(6)]
            await asyncio.sleep(0.01)
            assert run.calls == []
        return run, list(await asyncio.gather(*tasks))

    run, outputs = asyncio.run(main())
    assert run.calls == [[0, 1, 2], [3, 4, 5]]  # arrival order, at most three per run
    _check(outputs)


def test_a_failed_run_fails_every_request_in_it() -> None:
    async def main() -> list[object]:
        gatherer = Gatherer(Recorder(fail=True), asyncio.Semaphore(1), 4)
        return await asyncio.gather(*(gatherer.infer(image) for image in _images(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_client_that_left_is_not_run() -> None:
    async def main() -> tuple[Recorder, list[Output]]:
        run, slot = Recorder(), asyncio.Semaphore(1)
        gatherer = Gatherer(run, slot, 4)
        async with slot:
            tasks = [asyncio.create_task(gatherer.infer(image)) for image in _images(3)]
            await asyncio.sleep(0.01)
            tasks[1].cancel()  # a disconnect cancels the request's task
            await asyncio.sleep(0.01)
        kept = [await tasks[0], await tasks[2]]
        return run, kept

    run, (first, third) = asyncio.run(main())
    assert run.calls == [[0, 2]]
    assert int(first.probabilities[0].argmax()) == 0 and int(third.probabilities[0].argmax()) == 2


def test_gather_over_http(tiny_bundle: Path) -> None:
    with TestClient(create_app(Settings(bundle=str(tiny_bundle), threads=1, gather=4))) as client:
        for colour, label in (("red", "Acne"), ("green", "Eczema"), ("blue", "Moles")):
            files = {"file": ("x.png", solid(colour, fmt="PNG"), "image/png")}
            answer = client.post("/api/predict", files=files)
            assert answer.status_code == 200 and answer.json()["primary"]["label"] == label
            assert answer.json()["heatmap"]["width"] > 0
        batch = client.post(
            "/api/predict/batch", files=[("files", ("a.png", solid("blue", fmt="PNG"), "image/png"))] * 2
        )
        assert [r["primary"]["label"] for r in batch.json()["results"]] == ["Moles", "Moles"]
        metrics = client.get("/metrics").text
        # the three single-image requests went through the gatherer; the batch request did not
        assert "skin_gathered_images_count 3.0" in metrics


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("4", 4)])
def test_setting(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv("SKIN_GATHER", value)
    assert Settings.from_env().gather == expected


def test_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_GATHER", "0")
    with pytest.raises(ValueError, match="SKIN_GATHER must be at least 1"):
        Settings.from_env()
