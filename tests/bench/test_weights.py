"""The benchmark's cached model: reused when it loads, one line (not remade, not silently used) when not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import model_bench, weights


def _work(tmp_path: Path, checkpoint: Path, bundle: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(bundle, work / "bundle")
    shutil.copy(checkpoint, work / "model.pt")
    return work


@pytest.mark.parametrize(
    ("junk", "message"),
    [
        pytest.param("model.pt", "cached checkpoint", id="checkpoint"),
        pytest.param("bundle/model.onnx", "cached bundle", id="bundle"),
    ],
)
def test_a_cached_file_that_does_not_load_is_one_line(
    tiny_bundle: Path,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    junk: str,
    message: str,
) -> None:
    work = _work(tmp_path, checkpoint, tiny_bundle)
    (work / junk).write_bytes(b"\x8f\x00 not a model")
    assert weights.main(["--work", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "delete it" in err[0], err
    assert (work / junk).read_bytes() == b"\x8f\x00 not a model"  # not remade behind the user's back
    # The benchmarks built on it say the same, in one line, before measuring anything.
    argv = ["--work", str(work), "--out", str(tmp_path / "out"), "--max-load", "100", "--max-wait", "0"]
    assert model_bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("benchmarks.model_bench: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_cached_model_that_loads_is_reused(
    tiny_bundle: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = _work(tmp_path, checkpoint, tiny_bundle)
    assert weights.main(["--work", str(work)]) == 0
    assert capsys.readouterr().out.splitlines() == [str(work / "model.pt"), str(work / "bundle")]


def test_model_bench_reads_an_unreadable_graph_as_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"junk")
    with pytest.raises(model_bench.BenchError, match="is not a loadable bundle model") as error:
        model_bench._graph(tmp_path / "model.onnx")
    assert "\n" not in str(error.value)


def test_a_work_folder_that_cannot_be_is_one_line_before_the_model_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def make_checkpoint(*args: object, **kwargs: object) -> None:
        raise AssertionError("minutes of work began before the folder was checked")

    monkeypatch.setattr(weights, "make_checkpoint", make_checkpoint)
    file = tmp_path / "file"
    file.write_text("not a folder")
    assert weights.main(["--work", str(file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"benchmarks.weights: --work {file}: {file} is not a folder"]
