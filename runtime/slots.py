"""The model's run slots (SKIN_INFERENCE_CONCURRENCY), handed out in arrival order.

A run takes one slot per image, at most all of them. Two single images at once fill the gaps each leaves on
the cores; two 16-image batches at once only doubled the memory peak (0.98 to 1.88 GB on B3) for no more
answers, since one batch already fills every core.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator


class Slots:
    def __init__(self, total: int) -> None:
        self.total = max(1, total)
        self.free = self.total
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def take(self, count: int = 1) -> AsyncIterator[None]:
        """Hold ``count`` slots (at most all) for the block. First come, first served: a run that needs
        more slots than are free is not overtaken by smaller ones, so a batch cannot starve under steady
        single images."""
        count = min(max(1, count), self.total)
        if self._waiting or self.free < count:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (count, waiter)
            self._waiting.append(entry)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(count)  # granted just as the request was cancelled
                else:
                    if entry in self._waiting:  # else _grant() already dropped it, seeing it cancelled
                        self._waiting.remove(entry)
                    self._grant()  # it may have been the head that held the others back
                raise
        else:
            self.free -= count
        try:
            yield
        finally:
            self._release(count)

    def _release(self, count: int) -> None:
        self.free += count
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._waiting[0][0] <= self.free:
            count, waiter = self._waiting.popleft()
            if waiter.cancelled():  # cancelled in this loop step, its task not yet unwound: skip it
                continue
            self.free -= count
            waiter.set_result(None)
