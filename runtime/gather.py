"""Single-image requests that wait for the model run together (SKIN_GATHER).

Nobody waits for others to arrive: when the model frees up, the images queued by then (up to ``max_images``)
go in as one batch, so a lone client sees no added latency. It pays only where a batch costs less per image
than single runs: benchmarks/model_bench.py measured no gain for onnxruntime fp32 on two cores, and 1.1-1.4x
for OpenVINO bf16 (SKIN_OPENVINO=bf16), so it is off unless asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import numpy as np

from runtime.engine import Output
from runtime.slots import Slots

RunBatch = Callable[[np.ndarray], Awaitable[Output]]
Check = Callable[[], Awaitable[None]]
Pending = tuple[np.ndarray, asyncio.Future[Output], Check]


async def _no_check() -> None:
    return None


class Gatherer:
    """``await infer(image)`` → that image's Output; ``run`` is called holding every one of the model's
    ``slots``, shared with multi-image requests, so one gathered run goes at a time, alone on the model."""

    def __init__(self, run: RunBatch, slots: Slots, max_images: int) -> None:
        self.run = run
        self.slots = slots
        self.max_images = max(1, max_images)
        self.pending: list[Pending] = []
        self.worker: asyncio.Task[None] | None = None

    async def infer(self, image: np.ndarray, check: Check = _no_check) -> Output:
        """``check`` runs just before the image's run and may refuse it by raising (its client has left)."""
        future: asyncio.Future[Output] = asyncio.get_running_loop().create_future()
        self.pending.append((image, future, check))
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._drain())
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                future.exception()  # answered just as the request was cancelled: nothing left unretrieved
            raise

    async def close(self) -> None:
        """At shutdown: stop the worker; whoever still waits gets an error instead of waiting forever."""
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker

    async def _drain(self) -> None:
        taken: list[Pending] = []
        try:
            while self.pending:
                async with self.slots.take(self.slots.total):
                    # Taken once the model is free: everything that queued meanwhile, in arrival order.
                    taken, self.pending = self.pending[: self.max_images], self.pending[self.max_images :]
                    taken = [entry for entry in taken if not entry[1].done() and await self._wanted(entry)]
                    if taken:
                        await self._run(taken)
                taken = []
        finally:  # cancelled (shutdown) or a bug: never leave a request without an answer
            for _, future, _ in [*taken, *self.pending]:
                if not future.done():
                    future.set_exception(RuntimeError("the server stopped before this image was classified"))
            self.pending = []

    @staticmethod
    async def _wanted(entry: Pending) -> bool:
        try:
            await entry[2]()
        except Exception as exc:
            entry[1].set_exception(exc)
            return False
        return True

    async def _run(self, taken: list[Pending]) -> None:
        try:
            output = await self.run(np.stack([image for image, _, _ in taken]))
        except Exception as exc:
            if len(taken) == 1:
                if not taken[0][1].done():
                    taken[0][1].set_exception(exc)
                return
            # One image can fail a batch (or make it non-finite): each runs alone, so only its request fails.
            for one in taken:
                await self._run([one])
            return
        for row, (_, future, _) in enumerate(taken):
            if not future.done():
                cam = None if output.cam is None else output.cam[row : row + 1]
                rows = output.uncertainty[row : row + 1]
                future.set_result(Output(output.probabilities[row : row + 1], cam, rows))
