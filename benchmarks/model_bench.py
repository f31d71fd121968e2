"""Model-level benchmark, in one process: every way this machine can run the exported model, side by side.

Paths: torch eager fp32 (what the reference serves), onnxruntime fp32 as the runtime configures it (and with
other thread settings), static int8 (the exporter's recipe and a Conv-only variant), and OpenVINO f32 and
bf16 as SKIN_OPENVINO runs them when installed, plus bf16 with a fp32 re-check of the images whose answer bf16
could have changed (measured here before any runtime carries it). For each: median latency at batch 1 and 8,
load time, and top-1 agreement with onnxruntime fp32 on generated test images. Also answers whether batching
concurrent requests would raise throughput on this machine, for onnxruntime fp32 and (openvino installed) for
SKIN_OPENVINO=bf16: the measurement behind SKIN_GATHER. And how near onnxruntime fp32 runs to this CPU's
fp32 floor (benchmarks/floor.py).

    python -m benchmarks.model_bench                 # writes benchmarks/results/model.json and model.md
                                                     # (stopped part-way: what it measured, model-stopped.*)
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import floor
from benchmarks.machine import OtherCpu, cpus, load1, machine, wait_for_cpu, wait_until_quiet
from benchmarks.run import (
    BenchError,
    check_out,
    describe_model,
    keep_stopped,
    model_files,
    quiet_machine_options,
    row,
    run_cli,
    save_summary,
    stopped_heading,
    stopped_note,
    threads_or_cpus,
)
from benchmarks.words import count
from runtime import bundle as contract
from runtime import int8
from runtime.cli import OneLineParser
from runtime.engine import first_line, openvino_session, session_options
from training.synthetic import MAX_PER_CLASS

Runner = Callable[[np.ndarray], np.ndarray]  # uint8 [n, H, W, 3] → probabilities [n, classes]
BATCHING_GAIN = 1.10  # batching is worth building only if it raises img/s by at least this factor
GOALS = {"batch1_ms": 20.0, "agreement": 0.99}
RECHECK_NOTE = (
    "bf16; images whose top-2 logit gap is within bf16's largest error on the calibration images run again "
    "in onnxruntime fp32 (measured here, not in the runtime)"
)


@dataclass
class Candidate:
    name: str
    note: str
    make: Callable[[], Runner]  # builds the session (timed as load time)


# ---- paths


def ort_session(
    model: Path, *, threads: int, spinning: bool = True, arena: bool = True, fast_int8: bool = False
) -> Any:
    """onnxruntime set up as the runtime sets it up, but for the settings given. ``fast_int8``: onnxruntime's
    own default int8 kernels, which clip sums on x86 without VNNI (the runtime never uses them there)."""
    import onnxruntime as ort

    options = session_options(
        threads=threads, memory_arena=arena, spinning=spinning, exact_int8=not fast_int8
    )
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def ort_runner(
    model: Path, *, threads: int, spinning: bool = True, arena: bool = True, fast_int8: bool = False
) -> Runner:
    return probabilities(
        ort_session(model, threads=threads, spinning=spinning, arena=arena, fast_int8=fast_int8)
    )


def probabilities(session: Any) -> Runner:
    return lambda x: session.run([contract.PROBS_OUTPUT], {contract.INPUT_NAME: x})[0]


def torch_runner(checkpoint: Path, *, threads: int, temperature: float = 1.0) -> Runner:
    """The reference's way: eager fp32, normalization in torch, softmax of the logits. ``temperature``: the
    bundle's, as its graph applies it (the reference's T = 1 costs the same): without it, max |Δp| against
    onnxruntime measured calibration (0.3 on the demo model), not the engines."""
    import torch

    from training.model import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(threads)
    ckpt = load_checkpoint(checkpoint)
    net = model_from_checkpoint(ckpt)
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
            return torch.softmax(net(t) / temperature, dim=1).numpy()

    return run


def openvino_runner(model: Path, *, threads: int, precision: str) -> Runner:
    """OpenVINO's CPU plugin, set up as the runtime does (SKIN_OPENVINO)."""
    return probabilities(openvino_session(str(model), threads=threads, precision=precision))


Outputs = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 images → (probabilities, logits)


def probabilities_and_logits(session: Any) -> Outputs:
    names = [contract.PROBS_OUTPUT, contract.LOGITS_OUTPUT]
    return lambda x: tuple(session.run(names, {contract.INPUT_NAME: x}))


class Recheck:
    """bf16 on OpenVINO, with fp32 (onnxruntime, as the runtime runs it) asked again for the images whose two
    best classes are closer than bf16's error could reach: bf16's speed where the answer is clear, fp32's
    answer where it is close. The reach is the largest error bf16 made in that gap (its top two classes'
    logit difference) on the calibration images, so the test images judge it out of sample.

    Top-1 only: the uncertainty flags (confidence, out-of-distribution) have thresholds of their own that this
    does not guard. Counts the images it sees and the ones it re-ran (``images``, ``rechecked``)."""

    def __init__(self, fast: Outputs, exact: Outputs, *, calibration: np.ndarray, batch: int = 8) -> None:
        self.fast, self.exact = fast, exact
        chunks = [calibration[i : i + batch] for i in range(0, len(calibration), batch)]
        fast_logits = np.concatenate([fast(c)[1] for c in chunks])
        exact_logits = np.concatenate([exact(c)[1] for c in chunks])
        self.margin = float(gap_error(fast_logits, exact_logits).max())
        self.images = self.rechecked = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        probs, logits = self.fast(x)
        top2 = np.sort(logits, axis=1)[:, -2:]
        close = top2[:, 1] - top2[:, 0] <= self.margin
        if close.any():
            probs[close] = self.exact(x[close])[0]
        self.images += len(x)
        self.rechecked += int(close.sum())
        return probs


def gap_error(fast: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per image: how far ``fast`` is off in the logit gap between its own two best classes. fp32 can rank
    those two the other way only when fast's gap is no larger than this."""
    order = np.argsort(fast, axis=1)
    first, second, rows = order[:, -1], order[:, -2], np.arange(len(fast))
    return np.abs((fast[rows, first] - fast[rows, second]) - (exact[rows, first] - exact[rows, second]))


def quantized(
    fp32: Path, out: Path, calibration: Sequence[Path], *, conv_only: bool, meta: contract.BundleMeta
) -> Path:
    """Static int8: the exporter's recipe (all ops), or Conv weights and inputs only (cached in ``out``)."""
    if out.is_file():
        return out
    from export.onnx import to_bytes
    from export.quantize import quantize

    with tempfile.TemporaryDirectory(prefix="skin-bench-int8-") as scratch:
        size, resize, resize_filter = meta.input_size, meta.resize, meta.resize_filter
        model = quantize(
            fp32.read_bytes(),
            calibration=calibration,
            workdir=Path(scratch),
            size=size,
            resize=resize,
            resize_filter=resize_filter,
            # Conv only: Sigmoid, Mul (SiLU, squeeze-excite) and Add stay float, with no Q/DQ around them.
            op_types=["Conv"] if conv_only else None,
        )
        out.write_bytes(to_bytes(model))
    return out


def candidates(
    checkpoint: Path,
    fp32: Path,
    work: Path,
    calibration: Sequence[Path],
    meta: contract.BundleMeta,
    threads: int,
    calibration_pixels: np.ndarray | None = None,
) -> list[Candidate]:
    exporter_int8 = partial(quantized, fp32, work / "int8-all.onnx", calibration, conv_only=False, meta=meta)
    # As the runtime runs int8 here: without VNNI, on onnxruntime's exact kernels, not its clipping fast ones.
    clips = int8.clips_sums()
    kernels = {True: "; exact u8 x u8 kernels (no VNNI here)", None: "; exact u8 x u8 kernels"}.get(clips, "")
    found = [
        Candidate(
            "torch eager fp32",
            "what the reference serves",
            lambda: torch_runner(checkpoint, threads=threads, temperature=meta.temperature),
        ),
        Candidate(
            "onnxruntime fp32",
            f"{count(threads, 'thread')} busy-waiting between ops, not between runs: the runtime with "
            "SKIN_INFERENCE_CONCURRENCY=1",
            lambda: ort_runner(fp32, threads=threads),
        ),
        Candidate(
            "onnxruntime fp32, no spinning",
            "threads sleep between ops: the runtime's default, which runs two images at once",
            lambda: ort_runner(fp32, threads=threads, spinning=False),
        ),
        Candidate(
            "onnxruntime fp32, no memory arena",
            "onnxruntime's CPU memory arena off (SKIN_ORT_MEMORY_ARENA=false)",
            lambda: ort_runner(fp32, threads=threads, arena=False),
        ),
        Candidate("onnxruntime fp32, 1 thread", "one core", lambda: ort_runner(fp32, threads=1)),
        Candidate(
            "onnxruntime int8 QDQ (exporter)",
            "export.quantize: static, per-channel, u8/s8, all ops" + kernels,
            lambda: ort_runner(exporter_int8(), threads=threads),
        ),
        Candidate(
            "onnxruntime int8 QDQ, Conv only",
            "static, per-channel, u8/s8; SiLU, squeeze-excite and adds stay float" + kernels,
            lambda: ort_runner(
                quantized(fp32, work / "int8-conv.onnx", calibration, conv_only=True, meta=meta),
                threads=threads,
            ),
        ),
    ]
    if clips:  # what onnxruntime would do here by default, and why the runtime does not
        found.append(
            Candidate(
                "onnxruntime int8 QDQ (exporter), clipping kernels",
                "the same graph on onnxruntime's default u8 x s8 kernels, which clip sums without VNNI",
                lambda: ort_runner(exporter_int8(), threads=threads, fast_int8=True),
            )
        )
    if _importable("openvino"):
        for precision in ("f32", "bf16"):
            found.append(
                Candidate(
                    f"OpenVINO {precision}",
                    f"the runtime with SKIN_OPENVINO={precision}: OpenVINO's CPU plugin, the same ONNX file",
                    lambda p=precision: openvino_runner(fp32, threads=threads, precision=p),  # type: ignore[misc]
                )
            )
        if calibration_pixels is not None:  # given when the graph has logits
            found.append(
                Candidate(
                    "OpenVINO bf16, fp32 re-check",
                    RECHECK_NOTE,
                    lambda: Recheck(
                        probabilities_and_logits(
                            openvino_session(str(fp32), threads=threads, precision="bf16")
                        ),
                        probabilities_and_logits(ort_session(fp32, threads=threads)),
                        calibration=calibration_pixels,
                    ),
                )
            )
    return found


def _offered(threads: int) -> list[Candidate]:
    """The paths candidates() offers on this machine, none of them built: their names, before any model."""
    nothing = contract.BundleMeta(
        class_names=[], display_names=[], input_size=(0, 0), model_name="", model_version=""
    )
    return candidates(Path(), Path(), Path(), [], nothing, threads, np.zeros(0))  # the re-check too


def _matching(found: list[Candidate], only: Sequence[str]) -> list[Candidate]:
    """The paths whose name contains one of ``only`` (all when it is empty); BenchError when none does."""
    if only:
        found = [c for c in found if any(o.lower() in c.name.lower() for o in only)]
        if not found:
            raise BenchError(f"no path matches {', '.join(only)}")
    return found


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---- measurements


def latency_ms(run: Runner, x: np.ndarray, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def in_rounds(
    measures: dict[str, Callable[[], float]],
    rounds: int,
    before_round: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Each measure once per round, the order reversed every other round. A slow or fast spell of the machine
    then falls on every measure instead of on the one taken during it. Per measure, its value each round."""
    names = list(measures)
    found: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        before_round()
        for name in names if r % 2 == 0 else reversed(names):
            found[name].append(measures[name]())
    return found


def batch1_rounds(
    runners: dict[str, Runner],
    x: np.ndarray,
    *,
    repeats: int,
    rounds: int,
    before_round: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Batch-1 latency of every path, timed in rounds (``repeats`` runs after a short warm-up in each). Per
    path, the median of each round (ms)."""
    return in_rounds(
        {name: partial(latency_ms, run, x, repeats, warmup=2) for name, run in runners.items()},
        rounds,
        before_round,
    )


def per_image_ms(run: Runner, x: np.ndarray, warmup: int = 3) -> tuple[float, float]:
    """Median and mean latency at batch 1 over the images, each once (for paths whose cost depends on it)."""
    for i in range(warmup):
        run(x[i : i + 1])
    times = []
    for i in range(len(x)):
        start = time.perf_counter()
        run(x[i : i + 1])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000), float(np.mean(times) * 1000)


def batch_of(images: np.ndarray, n: int) -> np.ndarray:
    """``n`` images, the first ones again where there are fewer (a 3-class model at --test-per-class 1 has 3):
    a batch of 3 timed as 8 made its img/s 8/3 too high."""
    return images[np.arange(n) % len(images)]


def predict_all(run: Runner, x: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([run(x[i : i + batch]) for i in range(0, len(x), batch)])


def parallel_img_s(make: Callable[[], Runner], x: np.ndarray, workers: int, seconds: float) -> float:
    """Images per second with ``workers`` threads, each running what ``make`` gives it, at batch 1."""
    runners = [make() for _ in range(workers)]
    for run in runners:
        run(x)
    counts = [0] * workers
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            runners[i](x)
            counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def generated_images(root: Path, *, per_class: int, seed: int, class_names: list[str]) -> list[Path]:
    import shutil

    from training.synthetic import generate

    shutil.rmtree(root, ignore_errors=True)  # a smaller run after a larger one must not keep the extra files
    generate(root, class_names=class_names, train_per_class=0, test_per_class=per_class, seed=seed)
    return sorted((root / "test").glob("*/*"))


def model_benchmark(
    *,
    work: str | Path = "runs/bench",
    out: str | Path = "benchmarks/results",
    only: Sequence[str] = (),
    repeats: int = 30,
    rounds: int = 5,
    test_per_class: int = 10,
    threads: int = 0,
    bundle: str | Path | None = None,
    checkpoint: str | Path | None = None,
    max_load: float = 0.6,
    max_other: float = 0.25,
    max_wait_s: float = 1200.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every available path; write OUT/model.json and OUT/model.md. ``bundle`` and ``checkpoint``: a
    model of your own (the same weights twice) instead of the benchmark's."""
    from runtime.preprocess import preprocess

    threads = threads_or_cpus(threads)
    work, out = Path(work), Path(out)
    check_out(out)
    check_out(work, "--work")
    if only:  # a misspelt path fails now, not after minutes of making the model and its images
        _matching(_offered(threads), only)
    checkpoint, bundle_dir = model_files(work, bundle=bundle, checkpoint=checkpoint, log=log)
    fp32 = bundle_dir / contract.MODEL_FILE
    meta, outputs = _graph(fp32)
    scratch = work / "model_bench"
    scratch.mkdir(parents=True, exist_ok=True)
    names = list(meta.class_names)
    # Seeds unlike the ones weights.py fitted BatchNorm and the head on: these images are new to the model.
    test_files = generated_images(scratch / "test", per_class=test_per_class, seed=101, class_names=names)
    calibration = generated_images(scratch / "calib", per_class=6, seed=202, class_names=names)
    view = {"resize_mode": meta.resize, "resize_filter": meta.resize_filter}
    test = np.stack([preprocess(f, meta.input_size, **view) for f in test_files])  # type: ignore[arg-type]
    one, eight = test[:1], batch_of(test, 8)

    calibration_pixels = np.stack([preprocess(f, meta.input_size, **view) for f in calibration])  # type: ignore[arg-type]
    # The bf16 re-check compares logits, so it is offered only when the graph has them.
    recheck_pixels = calibration_pixels if contract.LOGITS_OUTPUT in outputs else None
    found = _matching(candidates(checkpoint, fp32, scratch, calibration, meta, threads, recheck_pixels), only)
    quiet = wait_until_quiet(max_load, max_wait_s, log)
    test_images = count(len(test), "test image")
    log(f"load average {quiet['load1']:.2f} at the start; {test_images}, {count(threads, 'thread')}")
    reference = predict_all(ort_runner(fp32, threads=threads), test)
    results: dict[str, Any] = {}
    summary: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "load_at_start": quiet,
        "settings": {
            "threads": threads,
            "repeats_batch1": repeats,
            "rounds_batch1": rounds,
            "max_other_cpu_cores": max_other,
            "test_images": len(test),
            "calibration_images": len(calibration),
            "reference": "onnxruntime fp32 (the runtime's graph) on the same images",
            "model": describe_model(meta, bundle_dir, own=bundle is None),
        },
        "paths": results,  # filled path by path: a run stopped part-way keeps the paths it measured
        "batching": None,
        "batching_bf16": None,  # the same question for SKIN_OPENVINO=bf16, when openvino is here
        "floor": None,  # the model's multiply-adds at this CPU's fp32 matrix speed, and a profiled run
    }
    try:
        timed: dict[str, Runner] = {}  # the paths timed at batch 1 in rounds, once all are loaded
        for cand in found:
            wait_for_cpu(max_other, max_wait_s, log)
            load_before = load1()
            try:
                start = time.perf_counter()
                run = cand.make()
                load_s = time.perf_counter() - start
            except Exception as exc:  # a path this machine cannot take is reported, not fatal
                results[cand.name] = {"note": cand.note, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                log(f"{cand.name}: not available ({results[cand.name]['error']})")
                continue
            probs = predict_all(run, test)
            extra: dict[str, Any] = {}
            note = cand.note
            other = OtherCpu()
            if isinstance(run, Recheck):  # its cost depends on the image: batch 1 timed over every test image
                share = run.rechecked / run.images
                extra = {"recheck_margin": round(run.margin, 4), "rechecked_share": round(share, 4)}
                note += f"; gap ≤ {run.margin:.3f} re-run: {share:.0%} of the test images"
                b1, mean = per_image_ms(run, test)
                extra["batch1_ms"] = round(b1, 2)
                extra["batch1_mean_ms"] = round(mean, 2)
                extra["batch1_img_s"] = round(1000 / mean, 1)
                note += f"; batch 1 is the median over the test images, mean {mean:.1f} ms"
            else:
                timed[cand.name] = run
            b8 = latency_ms(run, eight, max(5, repeats // 4))
            results[cand.name] = {
                "note": note,
                "load_s": round(load_s, 3),
                "batch8_ms": round(b8, 2),
                "batch8_img_s": round(8000 / b8, 1),
                "top1_agreement": round(float((probs.argmax(1) == reference.argmax(1)).mean()), 4),
                "max_abs_diff": float(np.abs(probs - reference).max()),
                "load1_before": load_before,
                "other_cpu_cores": other.cores(),
                **extra,
            }
            r = results[cand.name]
            log(
                f"{cand.name}: batch 8 {r['batch8_ms']} ms ({r['batch8_img_s']} img/s), agreement "
                f"{r['top1_agreement']:.2%}, load {r['load_s']} s, others {r['other_cpu_cores']} cores; "
                f"{note}"
            )
            del run

        if all("error" in r for r in results.values()):  # nothing measured: a failure, not a table of gaps
            name, r = next(iter(results.items()))
            first = (r["error"].splitlines() or [""])[0]
            raise BenchError(f"no path could be measured ({name}: {first})")
        if timed:
            log(f"batch 1: {count(rounds, 'round')} over {count(len(timed), 'path')}")
            per_round = batch1_rounds(
                timed,
                one,
                repeats=max(3, repeats // rounds),
                rounds=rounds,
                before_round=lambda: wait_for_cpu(max_other, max_wait_s, log),
            )
            for name, each in per_round.items():
                b1 = float(np.median(each))
                results[name].update(
                    batch1_ms=round(b1, 2),
                    batch1_ms_rounds=[round(v, 2) for v in each],
                    batch1_img_s=round(1000 / b1, 1),
                )
                log(f"{name}: batch 1 {b1:.2f} ms (rounds: {', '.join(f'{v:.1f}' for v in each)})")
            timed.clear()  # the sessions go before the batching checks load their own

        wait_for_cpu(max_other, max_wait_s, log)
        summary["batching"] = batching_check(
            lambda: ort_runner(fp32, threads=threads),
            lambda: ort_runner(fp32, threads=1),
            test,
            repeats,
            log,
            make_shared=lambda: ort_runner(fp32, threads=threads, spinning=False),  # as the runtime serves
            rounds=rounds,
        )
        wait_for_cpu(max_other, max_wait_s, log)
        try:
            summary["floor"] = floor.measure(fp32, one, threads=threads)
        except Exception as exc:  # reported, not fatal: the paths above are measured already
            summary["floor"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        log(floor.markdown(summary["floor"], results.get("onnxruntime fp32", {}).get("batch1_ms")))
        if _importable("openvino") and (not only or any("bf16" in o for o in only)):
            wait_for_cpu(max_other, max_wait_s, log)
            try:
                summary["batching_bf16"] = batching_check(
                    lambda: openvino_runner(fp32, threads=threads, precision="bf16"),
                    lambda: openvino_runner(fp32, threads=1, precision="bf16"),
                    test,
                    repeats,
                    log,
                    make_shared=lambda: openvino_runner(fp32, threads=threads, precision="bf16"),
                    rounds=rounds,
                )
            # OpenVINO could not compile the model here: nothing to measure
            except contract.BundleError as exc:
                log(f"batching with SKIN_OPENVINO=bf16: not available ({exc})")
    except BaseException as exc:  # Ctrl-C, SIGTERM, a path that failed mid-way: the paths measured are kept
        if any("error" not in r for r in results.values()):
            keep_stopped(exc, summary, lambda: write_summary(summary, out, log, name="model-stopped"), log)
        raise
    write_summary(summary, out, log)
    return summary


def write_summary(
    summary: dict[str, Any], out: Path, log: Callable[[str], None], name: str = "model"
) -> None:
    summary["load_at_end"] = load1()
    summary["best"] = best_path(summary["paths"])
    gone = save_summary(out, name, summary, markdown(summary))
    log(f"wrote {out / f'{name}.json'} and {out / f'{name}.md'}{stopped_note(summary)}{gone}")


def _graph(model: Path) -> tuple[contract.BundleMeta, set[str]]:
    import onnxruntime as ort

    try:  # checked before, but a file can change under a long benchmark: one line, not onnxruntime's trace
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        meta = contract.BundleMeta.from_metadata(dict(session.get_modelmeta().custom_metadata_map))
    except Exception as exc:
        raise BenchError(f"{model} is not a loadable bundle model: {first_line(exc)}") from None
    return meta, {o.name for o in session.get_outputs()}


def batching_check(
    make: Callable[[], Runner],
    make_one_thread: Callable[[], Runner],
    test: np.ndarray,
    repeats: int,
    log: Callable[[str], None],
    *,
    make_shared: Callable[[], Runner] | None = None,
    rounds: int = 1,
) -> dict[str, Any]:
    """Would the runtime gain from gathering concurrent requests into one batch? Throughput by batch size,
    two sessions of one thread each running side by side (the other way to use two cores), and
    ``make_shared``'s one session running two images at once (the runtime's SKIN_INFERENCE_CONCURRENCY=2).
    The batch sizes are timed in ``rounds``, the order reversed every other round, and compared by their
    medians: timed once each, one slow spell on batch 1 read as a gain from batching."""
    run = make()
    other = OtherCpu()

    def img_s_at(n: int) -> float:
        return round(n * 1000 / latency_ms(run, batch_of(test, n), max(5, repeats // (n * rounds))), 1)

    each = in_rounds({str(n): partial(img_s_at, n) for n in (1, 2, 4, 8)}, rounds)
    img_s = {n: round(float(np.median(v)), 1) for n, v in each.items()}
    parallel = parallel_img_s(make_one_thread, test[:1], workers=2, seconds=5.0)
    shared = None
    if make_shared is not None:
        session = make_shared()
        shared = round(parallel_img_s(lambda: session, test[:1], workers=2, seconds=5.0), 1)
    best_batch = max(img_s.values())
    gain = best_batch / img_s["1"]
    build = gain >= BATCHING_GAIN
    result = {
        "img_s_by_batch": img_s,  # the median of the rounds
        "img_s_by_batch_rounds": each,
        "two_sessions_one_thread_img_s": round(parallel, 1),
        "one_session_two_runs_img_s": shared,
        "best_batch_gain": round(gain, 3),
        "threshold": BATCHING_GAIN,
        "other_cpu_cores": other.cores(),
        "build_batching": build,
        "verdict": (
            f"batching raises throughput {gain:.2f}x (threshold {BATCHING_GAIN}x): "
            + ("worth building" if build else "not worth building on this machine")
        ),
    }
    log(
        f"batching: {img_s} img/s by batch; two 1-thread sessions {parallel:.1f} img/s; one session, two "
        f"runs at once {shared} img/s; {result['verdict']}"
    )
    return result


def best_path(results: dict[str, Any]) -> dict[str, Any] | None:
    """The fastest path at batch 1 that keeps top-1 agreement at the goal. Paths timed per image are ranked by
    their mean: a median would hide the images they run twice."""
    ok = {k: v for k, v in results.items() if "batch1_ms" in v and v["top1_agreement"] >= GOALS["agreement"]}
    if not ok:
        return None

    def ms(name: str) -> float:
        return float(ok[name].get("batch1_mean_ms", ok[name]["batch1_ms"]))

    name = min(ok, key=ms)
    return {
        "path": name,
        "batch1_ms": ok[name]["batch1_ms"],
        "batch1_mean_ms": ok[name].get("batch1_mean_ms"),  # paths timed per image: the median is batch1_ms
        "meets_20ms": ms(name) <= GOALS["batch1_ms"],
    }


def markdown(summary: dict[str, Any]) -> str:
    m, s = summary["machine"], summary["settings"]
    lines = [
        f"# Model benchmark ({summary['date']})",
        "",
        *stopped_heading(summary, "only what was measured before it is below."),
        f"Machine: {cpus(m)}; "
        f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch')}. {s['model']}; "
        f"{count(s['threads'], 'thread')}.",
        f"Load average (1 min): {summary['load_at_start']['load1']:.2f} at the start, "
        f"{summary['load_at_end']:.2f} at the end. Each path is timed once other processes use "
        f"< {s['max_other_cpu_cores']} cores; what they used while it was timed is shown.",
        f"Agreement: top-1 against {s['reference']}, {s['test_images']} generated images; int8 calibrated on "
        f"{s['calibration_images']} other generated images.",
        f"Batch 1: the median of {count(s.get('rounds_batch1', 1), 'round')}, each timing every path in turn "
        "(the order reversed every other round), so the machine's slow and fast spells fall on every path; "
        "the rounds are listed.",
        "",
        row(
            "path",
            "batch 1 ms",
            "batch 1 ms, each round",
            "batch 8 ms",
            "batch 8 img/s",
            "top-1 agreement",
            "max |Δp|",
            "load s",
            "others' CPU cores",
            "note",
        ),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in summary["paths"].items():
        if "error" in r:
            lines.append(row(name, *[None] * 9, f"not available: {r['error']}"))
            continue
        lines.append(
            row(
                name,
                r.get("batch1_ms"),  # stopped part-way, before the batch-1 rounds: none
                " · ".join(f"{v}" for v in r.get("batch1_ms_rounds", [])) or None,
                r["batch8_ms"],
                r["batch8_img_s"],
                f"{r['top1_agreement']:.2%}",
                f"{r['max_abs_diff']:.1e}",
                r["load_s"],
                r["other_cpu_cores"],
                r["note"],
            )
        )
    for key, label in (("batching", "onnxruntime fp32"), ("batching_bf16", "SKIN_OPENVINO=bf16")):
        b = summary.get(key)
        if b:
            each = b.get("img_s_by_batch_rounds", {})
            rounds = any(len(v) > 1 for v in each.values())
            by_batch = ", ".join(
                f"batch {k}: {v}" + (f" ({' · '.join(map(str, each[k]))})" if rounds else "")
                for k, v in b["img_s_by_batch"].items()
            )
            lines += [
                "",
                f"Batching ({label}, img/s{', the median of the rounds' if rounds else ''}): {by_batch}; "
                "two 1-thread sessions side by side: "
                f"{b['two_sessions_one_thread_img_s']}; one session, two runs at once: "
                f"{b.get('one_session_two_runs_img_s')}. Verdict: {b['verdict']}.",
            ]
    if summary.get("floor"):  # summaries written before it have none
        fp32_ms = summary["paths"].get("onnxruntime fp32", {}).get("batch1_ms")
        lines += ["", floor.markdown(summary["floor"], fp32_ms)]
    best = summary["best"]
    if best:
        met = "met" if best["meets_20ms"] else "not met"
        mean = best.get("batch1_mean_ms")
        median = f"{best['batch1_ms']} ms at batch 1"
        if mean is not None:
            median += f" (median over the test images; mean {mean} ms)"
        lines += [
            "",
            f"Fastest path with ≥ {GOALS['agreement']:.0%} top-1 agreement: {best['path']}, {median} "
            f"(goal ≤ {GOALS['batch1_ms']:.0f} ms: {met}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m benchmarks.model_bench",
        description="Latency and agreement of every way to run the model here (torch, onnxruntime, int8, "
        "OpenVINO), and whether batching would pay.",
    )
    parser.add_argument("--work", default="runs/bench", help="model, bundle and int8 graphs (runs/bench)")
    parser.add_argument("--out", default="benchmarks/results", help="summary folder (benchmarks/results)")
    parser.add_argument("--only", nargs="*", default=[], help="measure only paths whose name contains these")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs at batch 1, over all rounds (30)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="rounds of batch-1 timing, every path in each, and of the batching check (5)",
    )
    parser.add_argument(
        "--test-per-class", type=int, default=10, help="generated test images per class, at most 1000 (10)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads per path, at most the CPUs this process may use (0: all of them)",
    )
    parser.add_argument(
        "--bundle", help="measure this bundle instead of the benchmark's own (with --checkpoint)"
    )
    parser.add_argument("--checkpoint", help="the same model's checkpoint, for torch eager (with --bundle)")
    quiet_machine_options(parser, "path")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.test_per_class < 1 or args.rounds < 1:
        print(
            "benchmarks.model_bench: --repeats, --rounds and --test-per-class must be at least 1",
            file=sys.stderr,
        )
        return 2
    if args.test_per_class > MAX_PER_CLASS:  # generated first (~0.1 MB each): 100000000 filled the disk
        print(
            "benchmarks.model_bench: --test-per-class must be at most "
            f"{MAX_PER_CLASS}, not {args.test_per_class}",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    return run_cli(
        "benchmarks.model_bench",
        lambda log: model_benchmark(
            work=args.work,
            out=args.out,
            only=args.only,
            repeats=args.repeats,
            rounds=args.rounds,
            test_per_class=args.test_per_class,
            threads=args.threads,
            bundle=args.bundle,
            checkpoint=args.checkpoint,
            max_load=args.max_load,
            max_other=args.max_other,
            max_wait_s=args.max_wait,
            log=log,
        ),
    )


if __name__ == "__main__":
    raise SystemExit(main())
