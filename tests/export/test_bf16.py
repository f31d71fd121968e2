"""The bf16 verdict export writes (report.json → openvino_bf16 → safe), which SKIN_OPENVINO=auto serves on."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from export import bf16, infer
from runtime import bundle

N = 100  # test images: one disagreement is 0.99, at the bound


class Session:
    """fp32 ranks class 0 first on every image; bf16 ranks class 1 first on the first ``flipped`` images and
    draws another class-0 map on the first ``moved`` ones. The image's number is in its first pixel."""

    def __init__(self, name: str, flipped: int = 0, moved: int = 0) -> None:
        self.name, self.flipped, self.moved = name, flipped, moved

    def get_inputs(self) -> list[Any]:
        return [SimpleNamespace(name=bundle.INPUT_NAME)]

    def get_outputs(self) -> list[Any]:
        return [SimpleNamespace(name=bundle.PROBS_OUTPUT), SimpleNamespace(name=bundle.CAM_OUTPUT)]

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        numbers = feed[bundle.INPUT_NAME][:, 0, 0, 0].astype(int)
        probs = np.tile([0.7, 0.3], (len(numbers), 1))
        probs[numbers < self.flipped] = [0.3, 0.7]
        cam = np.tile(np.eye(2), (len(numbers), 2, 1, 1))
        cam[numbers < self.moved, 0] = np.fliplr(np.eye(2))
        results = {bundle.PROBS_OUTPUT: probs, bundle.CAM_OUTPUT: cam}
        return [results[name] for name in outputs]


@pytest.mark.parametrize(
    ("flipped", "moved", "flags", "safe"),
    [
        pytest.param(1, 1, {"confident": 0.99}, True, id="99-percent-everywhere-is-within"),
        pytest.param(2, 0, None, False, id="98-percent-top-1"),
        pytest.param(0, 2, None, False, id="98-percent-heatmaps"),
        pytest.param(0, 0, {"confident": 1.0, "in_distribution": 0.98}, False, id="98-percent-one-flag"),
    ],
)
def test_bf16_is_safe_only_with_every_agreement_at_99_percent_or_more(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flipped: int,
    moved: int,
    flags: dict[str, float] | None,
    safe: bool,
) -> None:
    import importlib.util

    import runtime.bf16
    import runtime.engine

    real = importlib.util.find_spec  # the openvino extra need not be installed: no OpenVINO runs here
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == bf16.PACKAGE else real(name, *a)
    )
    monkeypatch.setattr(runtime.bf16, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(infer, "session", lambda model, **kw: Session("fp32"))
    monkeypatch.setattr(runtime.engine, "openvino_session", lambda *a, **kw: Session("bf16", flipped, moved))
    test = [tmp_path / f"{i}.png" for i in range(N)]

    def readable(files: list[Path], *a: Any) -> tuple[np.ndarray, list[int]]:
        x = np.zeros((len(files), 2, 2, 3), np.uint8)
        x[:, 0, 0, 0] = [int(f.stem) for f in files]
        return x, list(range(len(files)))

    monkeypatch.setattr(infer, "readable", readable)
    monkeypatch.setattr(infer, "pixels", lambda files, *a: readable(files)[0])
    monkeypatch.setattr(infer, "latency_ms", lambda sess, x, **kw: {"fp32": 10.0, "bf16": 4.0}[sess.name])
    view = {"size": (2, 2), "resize": "stretch", "resize_filter": "bilinear"}
    entry = bf16.measure(b"fp32", test=test, flags=None if flags is None else lambda *s: flags, **view)  # type: ignore[arg-type]
    assert entry["measured"] is True and entry["n_test"] == N
    assert entry["agreement"] == pytest.approx(1 - flipped / N)
    assert entry["heatmap_agreement"] == pytest.approx(1 - moved / N)
    assert entry.get("flag_agreement") == flags
    assert entry["speedup_batch1"] == 2.5  # fp32 time over bf16 time
    assert entry["safe"] is safe
