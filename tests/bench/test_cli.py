"""The benchmark command lines refuse bad flags and values in one line (exit 2), before building anything."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from benchmarks import weights

CLIS = ["model_bench", "run", "overload", "weights", "baseline_server", "floor"]


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching the benchmark's model (minutes to make) means a bad value got through."""

    def prepare(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bad value reached the benchmark")

    monkeypatch.setattr(weights, "prepare", prepare)


def _one_line_exit_2(capsys: pytest.CaptureFixture[str], cli: str, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"benchmarks.{cli}").main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("cli", CLIS)
def test_a_bad_flag_is_one_line_not_the_usage(capsys: pytest.CaptureFixture[str], cli: str) -> None:
    line = _one_line_exit_2(capsys, cli, ["--no-such-flag"])
    assert line.startswith(f"python -m benchmarks.{cli}: error:") and line.endswith("(see --help)")


@pytest.mark.parametrize(
    ("cli", "flag"),
    [
        ("overload", "--factor"),
        *[
            (cli, flag)
            for cli in ("model_bench", "run", "overload")
            for flag in ("--max-load", "--max-other", "--max-wait")
        ],
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "x"])
def test_float_options_must_be_finite_and_positive(
    no_model: None, capsys: pytest.CaptureFixture[str], cli: str, flag: str, value: str
) -> None:
    line = _one_line_exit_2(capsys, cli, [flag, value])
    assert f"argument {flag}: want a finite number" in line and repr(value) in line


@pytest.mark.parametrize(
    ("cli", "flag"),
    [
        ("overload", "--duration"),
        ("overload", "--saturation-time"),
        ("run", "--run-time"),
        ("run", "--cold-starts"),
    ],
)
def test_a_count_below_one_is_refused_naming_its_flag(
    no_model: None, capsys: pytest.CaptureFixture[str], tmp_path: Path, cli: str, flag: str
) -> None:
    # It was "concurrency, rounds, run time and cold starts must be at least 1", whichever was given.
    argv = [flag, "0", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert importlib.import_module(f"benchmarks.{cli}").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"benchmarks.{cli}: {flag} must be at least 1, not 0"]


@pytest.mark.parametrize(("cli", "flag"), [("overload", "--factor"), ("run", "--max-load")])
def test_zero_is_refused_where_it_can_mean_nothing(
    no_model: None, capsys: pytest.CaptureFixture[str], cli: str, flag: str
) -> None:
    assert "want a finite number above 0" in _one_line_exit_2(capsys, cli, [flag, "0"])


def test_the_library_refuses_nan_factor_too(no_model: None) -> None:
    from benchmarks import overload

    for factor in (float("nan"), float("inf")):
        with pytest.raises(overload.BenchError, match="--factor must be a finite number above 0"):
            overload.run_overload(factor=factor)


@pytest.mark.parametrize(
    ("cli", "argv", "message"),
    [
        pytest.param(
            "run", ["--concurrency", "1", "100000"], "want a whole number from 1 to 256", id="concurrency"
        ),
        pytest.param("run", ["--concurrency", "0"], "want a whole number from 1 to 256", id="concurrency-0"),
        pytest.param(
            "overload", ["--factor", "1e6"], "want a finite number above 0 and at most 10", id="factor"
        ),
        pytest.param(
            "overload",
            ["--saturation-users", "100000"],
            "want a whole number from 1 to 256",
            id="saturation-users",
        ),
    ],
)
def test_load_settings_past_what_one_locust_can_drive_are_refused(
    no_model: None, capsys: pytest.CaptureFixture[str], cli: str, argv: list[str], message: str
) -> None:
    line = _one_line_exit_2(capsys, cli, argv)
    assert f"argument {argv[0]}: {message}, not {argv[-1]!r}" in line


@pytest.mark.parametrize("cli", ["run", "overload"])
@pytest.mark.parametrize("port", ["0", "65536", "x"])
def test_a_port_out_of_range_is_one_line(
    no_model: None, capsys: pytest.CaptureFixture[str], cli: str, port: str
) -> None:
    line = _one_line_exit_2(capsys, cli, ["--port", port])
    assert f"argument --port: want a whole number from 1 to 65535, not {port!r}" in line


def test_the_library_caps_the_load_too(no_model: None, tmp_path: Path) -> None:
    from benchmarks import overload, run

    with pytest.raises(run.BenchError, match="concurrency must be at most 256"):
        run.run_benchmark(work=tmp_path / "work", out=tmp_path / "out", concurrency=[1, 100000])
    for kwargs in ({"factor": 1e6}, {"saturation_users": 100000}):
        with pytest.raises(overload.BenchError, match="at most"):
            overload.run_overload(work=tmp_path / "work", out=tmp_path / "out", **kwargs)
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "threads", [pytest.param("-1", id="negative"), pytest.param("5", id="more-than-the-cpus")]
)
def test_threads_out_of_range_are_refused(
    no_model: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    # The bound was 1024 by hand: 64 threads on 2 CPUs were taken, and timed the cores' sharing.
    from benchmarks import model_bench
    from runtime import engine

    monkeypatch.setattr(engine, "available_cpus", lambda: 4)
    assert model_bench.main(["--threads", threads]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "benchmarks.model_bench: --threads must be from 0 to 4, the CPUs this process may use "
        f"(0: all of them), not {threads}"
    ]


def test_threads_up_to_the_cpus_are_taken(
    no_model: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import model_bench
    from runtime import engine

    monkeypatch.setattr(engine, "available_cpus", lambda: 4)
    with pytest.raises(AssertionError, match="reached the benchmark"):
        model_bench.main(["--threads", "4", "--work", str(tmp_path / "work"), "--out", str(tmp_path)])


def test_more_generated_images_than_synthetic_makes_are_refused(
    no_model: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import model_bench

    # They were generated before anything was measured (~0.1 MB each): 100000000 filled the disk.
    assert model_bench.main(["--test-per-class", "100000000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["benchmarks.model_bench: --test-per-class must be at most 1000, not 100000000"]


@pytest.mark.parametrize("cli", ["model_bench", "run", "overload"])
@pytest.mark.parametrize("below", [pytest.param("", id="a-file"), pytest.param("sub", id="under-a-file")])
def test_an_out_that_cannot_take_the_summary_is_refused_before_measuring(
    no_model: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], cli: str, below: str
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = taken / below if below else taken
    argv = ["--out", str(out), "--work", str(tmp_path / "work")]
    assert importlib.import_module(f"benchmarks.{cli}").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"benchmarks.{cli}: --out {out}: {taken} is not a folder"]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("cli", ["model_bench", "run", "overload", "weights", "floor"])
def test_a_work_folder_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli: str
) -> None:
    # It was "[Errno 17] File exists: '...'" (or "[Errno 20] Not a directory" with --bundle).
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    argv = ["--work", str(taken)] + (
        ["--out", str(tmp_path / "out")] if cli not in ("weights", "floor") else []
    )
    assert importlib.import_module(f"benchmarks.{cli}").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"benchmarks.{cli}: --work {taken}: {taken} is not a folder"]


def test_an_only_that_names_no_path_is_refused_before_the_model_is_made(
    no_model: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was refused only once the model (minutes on a fresh --work) and its test images had been made.
    from benchmarks import model_bench

    argv = ["--only", "onnxruntime fp23", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    assert model_bench.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "benchmarks.model_bench: no path matches onnxruntime fp23"
    ]
    with pytest.raises(AssertionError, match="reached the benchmark"):  # a real path goes on to the model
        model_bench.main([*argv[:1], "int8", *argv[2:]])
