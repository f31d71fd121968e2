"""The model's run slots: single images side by side, a multi-image run alone, first come first served."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
from starlette.testclient import TestClient

from runtime.app import create_app
from runtime.settings import Settings
from runtime.slots import Slots
from tests.images import solid


async def _hold(slots: Slots, count: int, name: str, log: list[str], release: asyncio.Event) -> None:
    async with slots.take(count):
        log.append(name)
        await release.wait()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def _start(
    slots: Slots, count: int, name: str, log: list[str], release: asyncio.Event
) -> asyncio.Task[None]:
    """A request that takes ``count`` slots (or waits for them), then holds them until ``release``."""
    task = asyncio.create_task(_hold(slots, count, name, log, release))
    await _settle()
    return task


def test_single_images_run_side_by_side_and_a_batch_runs_alone() -> None:
    async def main() -> list[str]:
        slots, log = Slots(2), []
        first, second, batch = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(_hold(slots, 1, "a", log, first)),
            asyncio.create_task(_hold(slots, 1, "b", log, second)),
            asyncio.create_task(_hold(slots, 16, "batch", log, batch)),  # 16 images: all the slots
        ]
        await _settle()
        assert log == ["a", "b"] and slots.free == 0
        first.set()
        await _settle()
        assert log == ["a", "b"]  # one slot free is not enough for the batch
        second.set()
        await _settle()
        assert log == ["a", "b", "batch"] and slots.free == 0
        late = asyncio.create_task(_hold(slots, 1, "c", log, asyncio.Event()))
        await _settle()
        assert "c" not in log
        batch.set()
        await _settle()
        late.cancel()
        await asyncio.gather(*tasks, late, return_exceptions=True)
        return log

    assert asyncio.run(main()) == ["a", "b", "batch", "c"]


def test_a_waiting_batch_is_not_overtaken_by_later_single_images() -> None:
    # Without arrival order, steady single images would each take the slot freed before them, forever.
    async def main() -> None:
        slots, log = Slots(2), []
        running, batch = asyncio.Event(), asyncio.Event()
        first = await _start(slots, 1, "a", log, running)
        waiting = await _start(slots, 2, "batch", log, batch)
        later = await _start(slots, 1, "b", log, asyncio.Event())
        assert log == ["a"] and slots.free == 1  # the free slot is kept for the batch
        running.set()
        await _settle()
        assert log == ["a", "batch"]
        batch.set()
        await _settle()
        assert log == ["a", "batch", "b"]
        later.cancel()
        await asyncio.gather(first, waiting, later, return_exceptions=True)
        assert slots.free == 2

    asyncio.run(main())


def test_a_request_cancelled_while_waiting_lets_the_next_one_in() -> None:
    async def main() -> None:
        slots, log = Slots(2), []
        running = asyncio.Event()
        first = await _start(slots, 1, "a", log, running)
        batch = await _start(slots, 2, "batch", log, asyncio.Event())
        single = await _start(slots, 1, "b", log, asyncio.Event())
        assert log == ["a"]
        batch.cancel()  # the client left while its batch waited
        await _settle()
        assert log == ["a", "b"] and slots.free == 0
        running.set()
        single.cancel()
        await asyncio.gather(first, batch, single, return_exceptions=True)
        assert slots.free == 2 and not slots._waiting

    asyncio.run(main())


def test_slots_granted_as_the_request_is_cancelled_are_given_back() -> None:
    async def main() -> None:
        slots, log = Slots(1), []
        running = asyncio.Event()
        first = await _start(slots, 1, "a", log, running)
        waiting = await _start(slots, 1, "b", log, asyncio.Event())
        running.set()  # frees the slot and grants it to "b" ...
        await asyncio.sleep(0)
        waiting.cancel()  # ... which is cancelled before it runs
        await asyncio.gather(first, waiting, return_exceptions=True)
        assert slots.free == 1 and log == ["a"]

    asyncio.run(main())


def test_the_server_runs_two_single_images_at_once_and_a_batch_alone(tiny_bundle: Path) -> None:
    settings = Settings(bundle=str(tiny_bundle), threads=1)
    assert settings.inference_concurrency == 2
    both_running = threading.Barrier(2, timeout=10)
    runs: list[tuple[int, float, float]] = []
    with TestClient(create_app(settings)) as client:
        engine = client.app.state.engine  # type: ignore[attr-defined]
        real_run = engine.run

        def recording_run(images: np.ndarray):  # type: ignore[no-untyped-def]
            start = time.monotonic()
            if len(images) == 1 and len(runs) < 2:
                both_running.wait()  # breaks (and the request fails) unless the other single runs too
            time.sleep(0.05)
            out = real_run(images)
            runs.append((len(images), start, time.monotonic()))
            return out

        engine.run = recording_run

        def single() -> int:
            return client.post("/api/predict", files={"file": ("a.jpg", solid())}).status_code

        def batch() -> int:
            files = [("files", (f"{i}.jpg", solid(), "image/jpeg")) for i in range(3)]
            return client.post("/api/predict/batch", files=files).status_code

        results: list[int] = []
        threads = [threading.Thread(target=lambda f=f: results.append(f())) for f in (single, single)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        threads = [threading.Thread(target=lambda f=f: results.append(f())) for f in (batch, single, batch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert results == [200] * 5
    batches = [(s, e) for n, s, e in runs if n > 1]
    assert len(batches) == 2
    for start, end in batches:
        overlapping = [r for r in runs if r[1] < end and r[2] > start and (r[1], r[2]) != (start, end)]
        assert not overlapping, runs


def test_a_waiter_cancelled_as_the_slot_frees_gives_it_back() -> None:
    # In one loop step the holder finishes and the waiter is cancelled (uvicorn cancels the requests left
    # after its drain): the slot must not go to the cancelled future, nor be lost.
    async def scenario() -> tuple[list[str], int]:
        slots = Slots(1)
        release = asyncio.Event()
        outcomes: list[str] = []

        async def holder() -> None:
            async with slots.take():
                await release.wait()

        async def waiter() -> None:
            async with slots.take():
                pass

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiting = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        release.set()
        waiting.cancel()
        for task in (held, waiting):
            try:
                await task
                outcomes.append("done")
            except asyncio.CancelledError:
                outcomes.append("cancelled")
        async with slots.take():  # still there for the next request
            outcomes.append("next")
        return outcomes, slots.free

    assert asyncio.run(scenario()) == (["done", "cancelled", "next"], 1)
