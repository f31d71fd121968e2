"""Run an exported graph on image files exactly as the runtime does: runtime preprocessing → onnxruntime."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.preprocess import ImageError, preprocess

BATCH = 16


def session(model: bytes | str | Path, *, threads: int = 0) -> Any:
    import onnxruntime as ort

    from runtime.engine import session_options

    # As the runtime's engine sets it up, so timings match serving (threads 0: onnxruntime's default).
    options = session_options(threads=threads)
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def pixels(files: Sequence[Path], size: tuple[int, int], resize: str, resize_filter: str) -> np.ndarray:
    """uint8 [n, H, W, 3], the graph's input, made by the runtime's own preprocessing."""
    return np.stack([preprocess(f, size, resize_mode=resize, resize_filter=resize_filter) for f in files])


def readable(
    files: Sequence[Path], size: tuple[int, int], resize: str, resize_filter: str
) -> tuple[np.ndarray, list[int]]:
    """Like ``pixels``, skipping files the runtime would refuse; also returns the indices kept. Each is said
    once, as training says it: export left them out in silence ("on 27 test images", 3 of them unreadable)."""
    kept, images = [], []
    for i, f in enumerate(files):
        try:
            images.append(preprocess(f, size, resize_mode=resize, resize_filter=resize_filter))
        except ImageError as exc:
            from training.data import say_skipped  # torch with it: only where a file is skipped

            say_skipped(f, exc)
            continue
        kept.append(i)
    empty = np.zeros((0, *size, 3), dtype=np.uint8)
    return (np.stack(images) if images else empty), kept


def batches(
    files: Sequence[Path], size: tuple[int, int], resize: str, resize_filter: str, batch: int = BATCH
) -> Iterator[np.ndarray]:
    """Readable images in batches (the last may be short); unreadable files are left out."""
    for start in range(0, len(files), batch):
        x, _ = readable(files[start : start + batch], size, resize, resize_filter)
        if len(x):
            yield x


def run_many(
    sess: Any,
    files: Sequence[Path],
    outputs: list[str],
    *,
    size: tuple[int, int],
    resize: str,
    resize_filter: str,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Several outputs of the graph for every readable file, and the indices of those files."""
    (out,), kept = run_each([sess], files, outputs, size=size, resize=resize, resize_filter=resize_filter)
    return out, kept


def run_each(
    sessions: Sequence[Any],
    files: Sequence[Path],
    outputs: list[str],
    *,
    size: tuple[int, int],
    resize: str,
    resize_filter: str,
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    """``run_many`` for several graphs (fp32 and int8, fp32 and bf16) on one decode of each file: decoding
    the test split once per graph was a third of an export's time with a small model."""
    parts: list[dict[str, list[np.ndarray]]] = [{name: [] for name in outputs} for _ in sessions]
    inputs = [sess.get_inputs()[0].name for sess in sessions]
    kept: list[int] = []
    for start in range(0, len(files), BATCH):
        x, idx = readable(files[start : start + BATCH], size, resize, resize_filter)
        if len(x):
            for sess, input_name, part in zip(sessions, inputs, parts, strict=True):
                for name, value in zip(outputs, sess.run(outputs, {input_name: x}), strict=True):
                    part[name].append(value)
            kept += [start + i for i in idx]
    empty = np.zeros((0,))
    return [{name: np.concatenate(v) if v else empty for name, v in part.items()} for part in parts], kept


def run_pixels(sess: Any, x: np.ndarray, outputs: list[str], batch: int = BATCH) -> dict[str, np.ndarray]:
    """Several outputs of the graph for images already preprocessed (uint8 [n, H, W, 3])."""
    input_name = sess.get_inputs()[0].name
    parts = [sess.run(outputs, {input_name: x[i : i + batch]}) for i in range(0, len(x), batch)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(outputs)}


def latency_ms(sess: Any, x: np.ndarray, *, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of one run on ``x``, in milliseconds."""
    input_name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {input_name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {input_name: x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
