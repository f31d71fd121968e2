"""The model benchmark's pieces on stand-in models (numpy only: no OpenVINO needed): the bf16 path with its
fp32 re-check, timing in rounds, the batching check and its line in model.md; and how both benchmarks take a
model of your own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import model_bench, run
from benchmarks.model_bench import Recheck, batch1_rounds, batching_check, best_path, gap_error, markdown
from tests.server import ROOT


def test_gap_error_is_the_error_in_the_fast_top_two_gap() -> None:
    fast = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5]])
    exact = np.array([[2.5, 1.5, 9.0], [0.0, 2.2, 2.0]])
    # image 0: fast's top two are classes 0, 1 (gap 2.0); exact's gap between them 1.0 (class 2 is ignored)
    # image 1: fast's top two are classes 2, 1 (gap 0.5); exact's gap between them -0.2: the order flips
    np.testing.assert_allclose(gap_error(fast, exact), [1.0, 0.7])


def _model(shift: float) -> object:
    """Logits from the first pixel: class 0 leads by the image's value, plus ``shift`` (a stand-in error)."""

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lead = x[:, 0, 0, 0].astype(np.float64) / 100 + shift
        logits = np.stack([lead, np.zeros_like(lead)], axis=1)
        probs = np.full_like(logits, shift)  # marks which model answered
        return probs, logits

    return run


def test_recheck_reruns_exactly_the_images_bf16_could_have_got_wrong() -> None:
    calibration = np.zeros((5, 2, 2, 3), dtype=np.uint8)
    recheck = Recheck(_model(-0.3), _model(0.0), calibration=calibration)  # type: ignore[arg-type]
    assert recheck.margin == 0.3
    x = np.zeros((4, 2, 2, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = [10, 59, 61, 200]  # fast gaps: 0.2 (class 1 ahead), 0.29, 0.31, 1.7
    probs = recheck(x)
    np.testing.assert_allclose(probs[:, 0], [0.0, 0.0, -0.3, -0.3])  # the first two came from fp32
    assert (recheck.images, recheck.rechecked) == (4, 2)
    recheck(x[3:])  # clear: nothing re-run
    assert (recheck.images, recheck.rechecked) == (5, 2)


def test_batch1_is_timed_in_rounds_across_the_paths_in_alternating_order() -> None:
    calls: list[str] = []

    def path(name: str) -> object:
        return lambda x: calls.append(name) or x

    rounds_begun: list[int] = []
    found = batch1_rounds(
        {"a": path("a"), "b": path("b"), "c": path("c")},  # type: ignore[dict-item]
        np.zeros((1, 2, 2, 3), dtype=np.uint8),
        repeats=3,
        rounds=3,
        before_round=lambda: rounds_begun.append(len(calls)),
    )
    each = 2 + 3  # warm-up, then the timed runs
    order = [calls[i] for i in range(0, len(calls), each)]
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert all(calls[i : i + each] == [calls[i]] * each for i in range(0, len(calls), each))
    assert rounds_begun == [0, 3 * each, 6 * each]  # the quiet-machine check before each round
    assert {name: len(ms) for name, ms in found.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.mark.parametrize(("rounds", "verdict"), [(1, True), (3, False)])
def test_one_slow_spell_on_batch_1_is_not_read_as_a_gain_from_batching(
    monkeypatch: pytest.MonkeyPatch, rounds: int, verdict: bool
) -> None:
    # Every batch size runs at 100 img/s, except the first time batch 1 is timed: a slow spell, at 50.
    timed: list[int] = []

    def latency_ms(run: object, x: np.ndarray, repeats: int, warmup: int = 3) -> float:
        timed.append(len(x))
        slow = 2.0 if timed.count(1) == 1 and len(x) == 1 else 1.0
        return 10.0 * len(x) * slow

    monkeypatch.setattr(model_bench, "latency_ms", latency_ms)
    monkeypatch.setattr(model_bench, "parallel_img_s", lambda *a, **k: 100.0)
    x = np.zeros((8, 2, 2, 3), dtype=np.uint8)
    found = batching_check(lambda: print, lambda: print, x, 30, print, rounds=rounds)
    assert timed == [1, 2, 4, 8, 8, 4, 2, 1, 1, 2, 4, 8][: 4 * rounds]  # the order reversed every other round
    assert found["img_s_by_batch_rounds"]["1"] == [50.0, 100.0, 100.0][:rounds]
    assert found["build_batching"] is verdict
    assert found["img_s_by_batch"] == ({"1": 50.0} if rounds == 1 else {"1": 100.0}) | {
        "2": 100.0,
        "4": 100.0,
        "8": 100.0,
    }


def test_a_batch_holds_as_many_images_as_it_says_with_fewer_test_images(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 3-class model at --test-per-class 1 has 3 test images: "batch 8" ran 3, its img/s 8/3 too high.
    timed: list[int] = []

    def latency_ms(run: object, x: np.ndarray, repeats: int, warmup: int = 3) -> float:
        timed.append(len(x))
        return 10.0 * len(x)

    monkeypatch.setattr(model_bench, "latency_ms", latency_ms)
    monkeypatch.setattr(model_bench, "parallel_img_s", lambda *a, **k: 100.0)
    x = np.arange(3 * 12, dtype=np.uint8).reshape(3, 2, 2, 3)
    found = batching_check(lambda: print, lambda: print, x, 30, print)
    assert timed == [1, 2, 4, 8]
    assert found["img_s_by_batch"] == {"1": 100.0, "2": 100.0, "4": 100.0, "8": 100.0}
    assert model_bench.batch_of(x, 8)[3:6].tolist() == x.tolist()  # the first images again


def test_a_path_timed_per_image_is_ranked_by_its_mean() -> None:
    paths = {
        "fp32": {"batch1_ms": 30.0, "top1_agreement": 1.0},
        "bf16": {"batch1_ms": 19.0, "top1_agreement": 0.97},  # fast, but changes answers
        "re-check": {"batch1_ms": 21.0, "batch1_mean_ms": 32.0, "top1_agreement": 1.0},
    }
    assert best_path(paths) == {
        "path": "fp32",
        "batch1_ms": 30.0,
        "batch1_mean_ms": None,
        "meets_20ms": False,
    }
    paths["re-check"]["batch1_mean_ms"] = 19.5
    assert best_path(paths) == {
        "path": "re-check",
        "batch1_ms": 21.0,
        "batch1_mean_ms": 19.5,
        "meets_20ms": True,
    }


@pytest.mark.parametrize("bench", ["model_bench", "run"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bundle", "BUNDLE"], "pass both --bundle and --checkpoint, or "),
        (["--bundle", "EMPTY", "--checkpoint", "CKPT"], "no model.onnx there"),
        (["--bundle", "BUNDLE", "--checkpoint", "MISSING"], "does not exist"),
        (["--bundle", "BUNDLE", "--checkpoint", "EMPTY"], "is not a regular file"),
        (["--bundle", "CORRUPT", "--checkpoint", "CKPT"], "not a loadable ONNX model"),
        (
            ["--bundle", "BUNDLE", "--checkpoint", "CKPT"],
            "--checkpoint CKPT: checkpoint 'CKPT' is not readable",
        ),
        (["--bundle", "BUNDLE", "--checkpoint", "OTHER"], "model: their classes differ"),
    ],
)
def test_a_model_of_your_own_is_checked_in_one_line(
    tiny_bundle: Path,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bench: str,
    args: list[str],
    message: str,
) -> None:
    import importlib

    def measure(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad model reached the measurements")

    for module in (run, model_bench):  # the first step of measuring, in both benchmarks
        monkeypatch.setattr(module, "wait_until_quiet", measure)
    (tmp_path / "model.pt").write_bytes(b"not read before the checks")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.onnx").write_bytes(b"junk")
    where = {
        "CORRUPT": tmp_path / "corrupt",
        "BUNDLE": tiny_bundle,
        "EMPTY": tmp_path,
        "CKPT": tmp_path / "model.pt",
        "MISSING": tmp_path / "missing.pt",
        "OTHER": checkpoint,  # a model of three classes; the bundle has five
    }
    argv = [str(where.get(a, a)) for a in args] + ["--work", str(tmp_path / "work")]
    assert importlib.import_module(f"benchmarks.{bench}").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0].replace(str(where["CKPT"]), "CKPT"), err
    assert not (tmp_path / "work").exists()  # nothing built: the benchmark's own model is not made instead


def test_a_model_of_your_own_is_used_as_given(bench_bundle: Path, checkpoint: Path, tmp_path: Path) -> None:
    got = run.model_files(tmp_path / "work", bundle=bench_bundle, checkpoint=checkpoint, log=print)
    assert got == (checkpoint, bench_bundle)


def test_torch_eager_applies_the_bundles_temperature(
    bench_bundle: Path, checkpoint: Path, tmp_path: Path
) -> None:
    # The graph's probabilities are softmax(logits / T); torch's at T = 1 differed from them by 0.3 in max
    # |Δp| on the demo model, though both engines computed the same logits.
    import dataclasses

    import torch

    from runtime.engine import Engine
    from training.model import load_checkpoint, model_from_checkpoint

    meta = dataclasses.replace(Engine(bench_bundle, threads=1).meta, temperature=2.0)
    found = model_bench.candidates(checkpoint, bench_bundle / "model.onnx", tmp_path, [], meta, 1)
    (torch_eager,) = [c for c in found if c.name == "torch eager fp32"]
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    ckpt = load_checkpoint(checkpoint)
    mean, std = (torch.tensor(ckpt[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.inference_mode():
        logits = model_from_checkpoint(ckpt)((torch.from_numpy(x).permute(0, 3, 1, 2) / 255 - mean) / std)
    expected = torch.softmax(logits / 2.0, dim=1).numpy()
    np.testing.assert_allclose(torch_eager.make()(x), expected, atol=1e-6)


def test_a_run_that_measures_no_path_fails_in_one_line(
    bench_bundle: Path,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def torch_runner(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no torch here\nsecond line")

    monkeypatch.setattr(model_bench, "torch_runner", torch_runner)
    monkeypatch.setattr(model_bench, "wait_for_cpu", lambda *args, **kwargs: 0.0)  # no 3 s quiet checks
    argv = ["--bundle", str(bench_bundle), "--checkpoint", str(checkpoint), "--only", "torch"]
    argv += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--test-per-class", "1"]
    assert model_bench.main([*argv, "--max-load", "100", "--max-wait", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "benchmarks.model_bench: no path could be measured (torch eager fp32: RuntimeError: no torch here)"
    )
    assert not (tmp_path / "out").exists()  # no table of gaps written as if it were a result


def test_a_run_stopped_part_way_keeps_the_paths_it_measured(
    bench_bundle: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C in the batch-1 rounds, after every path's load, agreement and batch 8: all of it was lost.
    def batch1_rounds(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(model_bench, "batch1_rounds", batch1_rounds)
    monkeypatch.setattr(model_bench, "wait_for_cpu", lambda *args, **kwargs: 0.0)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        model_bench.model_benchmark(
            work=tmp_path / "work",
            out=out,
            only=["1 thread"],
            repeats=3,
            rounds=1,
            test_per_class=1,
            bundle=bench_bundle,
            checkpoint=checkpoint,
            max_load=100.0,
            log=print,
        )
    kept = json.loads((out / "model-stopped.json").read_text())
    assert kept["stopped"] == {"why": "interrupted"}
    (path,) = kept["paths"].values()
    assert path["top1_agreement"] == 1.0 and "batch8_ms" in path and "batch1_ms" not in path
    assert kept["best"] is None and kept["batching"] is None
    md = (out / "model-stopped.md").read_text()
    assert "**Stopped part-way (interrupted)**" in md and "| onnxruntime fp32, 1 thread | – | – | " in md
    assert not (out / "model.json").exists()


def test_the_batching_line_lists_the_rounds_only_when_there_were_several() -> None:
    summary = json.loads((ROOT / "benchmarks/results/amd-avx2/model.json").read_text())
    summary["batching_bf16"] = None
    summary["batching"]["img_s_by_batch"] = {"1": 20.0, "2": 22.0}
    summary["batching"]["img_s_by_batch_rounds"] = {"1": [20.0, 14.5, 21.0], "2": [22.0, 22.5, 21.5]}
    lines = [line for line in markdown(summary).splitlines() if line.startswith("Batching")]
    assert lines[0].startswith(
        "Batching (onnxruntime fp32, img/s, the median of the rounds): batch 1: 20.0 (20.0 · 14.5 · 21.0), "
        "batch 2: 22.0 (22.0 · 22.5 · 21.5); two 1-thread sessions"
    )
    # One round: nothing to list; a summary written before the rounds: no such key.
    for batching in ({"img_s_by_batch_rounds": {"1": [20.0], "2": [22.0]}}, {}):
        summary["batching"].pop("img_s_by_batch_rounds", None)
        summary["batching"].update(batching)
        lines = [line for line in markdown(summary).splitlines() if line.startswith("Batching")]
        assert lines == [lines[0]] and lines[0].startswith(
            "Batching (onnxruntime fp32, img/s): batch 1: 20.0, batch 2: 22.0; two 1-thread sessions"
        )
