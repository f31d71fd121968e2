"""SKIN_GATHER: single-image requests waiting for the model run together, each answered with its own row."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from runtime.app import create_app
from runtime.engine import Engine, Output
from runtime.gather import Gatherer
from runtime.settings import Settings
from runtime.slots import Slots
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
    """The model: records each run's images; fails runs that hold any image in ``bad``."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.calls: list[list[int]] = []
        self.bad = bad

    async def __call__(self, images: np.ndarray) -> Output:
        values = images[:, 0, 0, 0].tolist()
        self.calls.append(values)
        await asyncio.sleep(0.01)
        if self.bad & set(values):
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
        return run, await Gatherer(run, Slots(1), 4).infer(_images(1)[0])

    run, out = asyncio.run(main())
    assert run.calls == [[0]]
    _check([out])


def test_requests_queued_while_the_model_is_busy_run_together_up_to_the_limit() -> None:
    async def main() -> tuple[Recorder, list[Output]]:
        run, slot = Recorder(), Slots(1)
        gatherer = Gatherer(run, slot, 3)
        async with slot.take():  # the model is busy (say, with a batch request) while six requests arrive
            tasks = [asyncio.create_task(gatherer.infer(image)) for image in _images(6)]
            await asyncio.sleep(0.01)
            assert run.calls == []
        return run, list(await asyncio.gather(*tasks))

    run, outputs = asyncio.run(main())
    assert run.calls == [[0, 1, 2], [3, 4, 5]]  # arrival order, at most three per run
    _check(outputs)


def test_a_failed_batch_is_rerun_one_by_one_so_only_the_bad_image_fails() -> None:
    async def main() -> tuple[Recorder, list[object]]:
        run = Recorder(bad=frozenset({1}))
        gatherer = Gatherer(run, Slots(1), 4)
        results = await asyncio.gather(*(gatherer.infer(i) for i in _images(3)), return_exceptions=True)
        return run, list(results)

    run, results = asyncio.run(main())
    assert run.calls == [[0, 1, 2], [0], [1], [2]]
    assert isinstance(results[1], RuntimeError)
    ok = [r for i, r in enumerate(results) if i != 1]
    assert all(isinstance(r, Output) for r in ok)
    assert [int(r.probabilities[0].argmax()) for r in ok] == [0, 2]  # type: ignore[union-attr]


def test_a_lone_failure_fails_its_request_only_once() -> None:
    async def main() -> tuple[Recorder, object]:
        run = Recorder(bad=frozenset({0}))
        result = await asyncio.gather(Gatherer(run, Slots(1), 4).infer(_images(1)[0]), return_exceptions=True)
        return run, result[0]

    run, result = asyncio.run(main())
    assert run.calls == [[0]] and isinstance(result, RuntimeError)


def test_a_gathered_run_takes_every_slot() -> None:
    # It runs alone on the model: with two slots, a single run that comes meanwhile waits for it to end.
    async def main() -> list[str]:
        events, slots, release = [], Slots(2), asyncio.Event()

        async def run(images: np.ndarray) -> Output:
            events.append("gathered run starts")
            await release.wait()
            events.append("gathered run ends")
            return _output(images)

        async def single() -> None:
            async with slots.take(1):
                events.append("single run")

        gathered = asyncio.create_task(Gatherer(run, slots, 4).infer(_images(1)[0]))
        await asyncio.sleep(0.01)
        other = asyncio.create_task(single())
        await asyncio.sleep(0.01)
        assert events == ["gathered run starts"] and slots.free == 0
        release.set()
        await asyncio.gather(gathered, other)
        return events

    assert asyncio.run(main()) == ["gathered run starts", "gathered run ends", "single run"]


def test_shutdown_answers_whoever_still_waits() -> None:
    async def main() -> list[object]:
        run, slot = Recorder(), Slots(1)
        gatherer = Gatherer(run, slot, 4)
        await slot.take().__aenter__()  # the model stays busy until shutdown
        tasks = [asyncio.create_task(gatherer.infer(image)) for image in _images(2)]
        await asyncio.sleep(0.01)
        await gatherer.close()
        return list(await asyncio.gather(*tasks, return_exceptions=True))

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) and "server stopped" in str(r) for r in results)


def test_a_client_that_left_is_not_run() -> None:
    async def main() -> tuple[Recorder, list[Output]]:
        run, slot = Recorder(), Slots(1)
        gatherer = Gatherer(run, slot, 4)
        async with slot.take():
            tasks = [asyncio.create_task(gatherer.infer(image)) for image in _images(3)]
            await asyncio.sleep(0.01)
            tasks[1].cancel()  # its request was cancelled (at shutdown, say)
            await asyncio.sleep(0.01)
        kept = [await tasks[0], await tasks[2]]
        return run, kept

    run, (first, third) = asyncio.run(main())
    assert run.calls == [[0, 2]]
    assert int(first.probabilities[0].argmax()) == 0 and int(third.probabilities[0].argmax()) == 2


def test_a_request_after_the_model_went_idle_runs_too() -> None:
    async def main() -> tuple[Recorder, list[Output]]:
        run = Recorder()
        gatherer = Gatherer(run, Slots(1), 4)
        first = await gatherer.infer(_images(1)[0])
        await asyncio.sleep(0.01)  # the model idle: its worker has ended, with nothing left waiting
        second = await asyncio.wait_for(gatherer.infer(_images(2)[1]), timeout=5)
        return run, [first, second]

    run, outputs = asyncio.run(main())
    assert run.calls == [[0], [1]]
    _check(outputs)


def test_a_request_its_check_refuses_gets_that_error_and_is_not_run() -> None:
    class Left(Exception):
        pass

    async def wanted() -> None:
        return None

    async def gone() -> None:
        raise Left

    async def main() -> tuple[Recorder, list[object]]:
        run, slot = Recorder(), Slots(1)
        gatherer = Gatherer(run, slot, 4)
        async with slot.take():  # they queue while the model is busy; the second one's client leaves
            checks = [wanted, gone, wanted]
            tasks = [
                asyncio.create_task(gatherer.infer(image, checks[i])) for i, image in enumerate(_images(3))
            ]
            await asyncio.sleep(0.01)
        return run, list(await asyncio.gather(*tasks, return_exceptions=True))

    run, results = asyncio.run(main())
    assert run.calls == [[0, 2]]
    assert isinstance(results[1], Left)
    assert [int(r.probabilities[0].argmax()) for r in (results[0], results[2])] == [0, 2]  # type: ignore[union-attr]


class SlowEngine(Engine):
    """The tiny bundle's engine, slow enough that requests queue behind each run."""

    def run(self, images: np.ndarray) -> Output:
        time.sleep(0.4)
        return super().run(images)


def test_gather_over_http(tiny_bundle: Path) -> None:
    engine = SlowEngine(tiny_bundle, threads=1)
    settings = Settings(bundle=str(tiny_bundle), threads=1, gather=4)
    colours = [("red", "Acne"), ("green", "Eczema"), ("blue", "Moles"), ("red", "Acne"), ("blue", "Moles")]
    with TestClient(create_app(settings, engine=engine)) as client:
        start = threading.Barrier(len(colours))

        def ask(colour: str) -> str:
            start.wait()
            files = {"file": ("x.png", solid(colour, fmt="PNG"), "image/png")}
            answer = client.post("/api/predict", files=files)
            assert answer.status_code == 200 and answer.json()["heatmap"]["width"] > 0
            return str(answer.json()["primary"]["label"])

        with ThreadPoolExecutor(len(colours)) as pool:
            labels = list(pool.map(ask, [c for c, _ in colours]))
        assert labels == [label for _, label in colours]  # every request got its own image's answer
        batch = client.post(
            "/api/predict/batch", files=[("files", ("a.png", solid("blue", fmt="PNG"), "image/png"))] * 2
        )
        assert [r["primary"]["label"] for r in batch.json()["results"]] == ["Moles", "Moles"]
        metrics = client.get("/metrics").text
    runs = float(re.search(r"^skin_gathered_images_count (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    images = float(re.search(r"^skin_gathered_images_sum (\S+)", metrics, re.M).group(1))  # type: ignore[union-attr]
    # five single-image requests went through the gatherer (the batch request did not), in fewer runs
    assert images == 5 and runs < 5


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("4", 4)])
def test_setting(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv("SKIN_GATHER", value)
    assert Settings.from_env().gather == expected


def test_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_GATHER", "0")
    with pytest.raises(ValueError, match="SKIN_GATHER must be at least 1"):
        Settings.from_env()
