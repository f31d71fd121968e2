"""How the engine runs onnxruntime: what a server does between requests matters as much as during them."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime.engine import Engine
from tests.server import ROOT

# In a process of its own: other tests' threads (servers, data loaders) would count in this one's CPU time.
IDLE_CPU = """
import sys, time
import numpy as np
from runtime.engine import Engine

engine = Engine(sys.argv[1], threads=2, spinning=sys.argv[2] == "1")
images = np.zeros((1, *engine.meta.input_size, 3), dtype=np.uint8)
idle = []
for _ in range(3):
    for _ in range(20):
        engine.run(images)
    before = time.process_time() - time.thread_time()  # onnxruntime's worker threads, not this one
    time.sleep(0.5)
    idle.append(time.process_time() - time.thread_time() - before)
print(min(idle))
"""


@pytest.mark.parametrize("spinning", [True, False])
def test_an_idle_engine_burns_no_cpu(tiny_bundle: Path, spinning: bool) -> None:
    # Spinning threads make a run faster, but if they kept spinning after it they would take a core from the
    # next upload's decoding, and from every other process on an idle server.
    done = subprocess.run(
        [sys.executable, "-c", IDLE_CPU, str(tiny_bundle), "1" if spinning else "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Spinning on after the last run costs 0.04-0.05 s in every window here, not spinning 0.000 s. The least
    # of three windows, because a busy machine once put 0.015 s into one window of an engine that never spins.
    assert float(done.stdout) < 0.02


def test_spinning_is_a_setting(tiny_bundle: Path) -> None:
    assert Engine(tiny_bundle, threads=1).spinning
    assert not Engine(tiny_bundle, threads=1, spinning=False).spinning


def test_concurrent_runs_with_spinning_threads_keep_their_own_answers(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, threads=2)
    h, w = engine.meta.input_size
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    expected = {
        name: engine.run(np.full((1, h, w, 3), rgb, dtype=np.uint8)).probabilities
        for name, rgb in colours.items()
    }
    wrong: list[str] = []

    def loop(name: str) -> None:
        image = np.full((1, h, w, 3), colours[name], dtype=np.uint8)
        for _ in range(30):
            if not np.allclose(engine.run(image).probabilities, expected[name], atol=1e-6):
                wrong.append(name)

    workers = [threading.Thread(target=loop, args=(name,)) for name in colours]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert wrong == []
