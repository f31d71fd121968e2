from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.cli import build_parser, main
from training.config import DEFAULTS, ConfigError, TrainConfig, resolve
from training.data import DataError
from training.loop import resolve_options
from training.model import ModelError


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([sys.executable, "-m", "training", "--help"], id="python-m-training"),
        pytest.param([str(Path(sys.executable).parent / "skin-train"), "--help"], id="console-script"),
    ],
)
def test_help(command: list[str]) -> None:
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    for text in ("usage: skin-train", "data:", "model:", "optimisation:", "hardware:", "output:", "torchrun"):
        assert text in out.stdout
    assert "(default: efficientnet_b3)" in out.stdout and "(default: 300)" in out.stdout


def test_cli_module_stays_light() -> None:
    code = "import sys, training.cli; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_only_given_options_reach_train() -> None:
    args = build_parser().parse_args(["--data", "d", "--epochs", "3", "--no-augment", "--img-size", "224"])
    assert vars(args) == {"data": "d", "epochs": 3, "augment": False, "img_size": 224}


def test_every_option_has_a_flag() -> None:
    flags = {a.dest for a in build_parser()._actions} - {"help"}
    assert flags == set(TrainConfig.__dataclass_fields__)


def test_yaml_sets_defaults_and_flags_win(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 7\nlr: 0.01\nbatch-size: 4\ndata: /somewhere\n")
    cfg, resumed = resolve_options({"config": str(config), "epochs": 2})
    assert resumed is None
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.data) == (2, 0.01, 4, "/somewhere")
    assert cfg.weight_decay == DEFAULTS.weight_decay and cfg.config == str(config)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("epochz: 3\n", "unknown option 'epochz'", id="unknown-key"),
        pytest.param("- 1\n- 2\n", "must hold a mapping", id="not-a-mapping"),
        pytest.param("epochs: [\n", "is not valid YAML", id="bad-yaml"),
        pytest.param("epochs: " + "[" * 5000 + "]" * 5000, "is nested too deeply", id="too-deep"),
    ],
)
def test_bad_yaml_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.timeout(60)  # a FIFO opened for reading waits for a writer: without the check, forever
@pytest.mark.parametrize("kind", ["fifo", "device", "huge"])
def test_a_config_that_is_no_config_file_is_one_line_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    from training.config import MAX_CONFIG_BYTES

    config = tmp_path / "c.yaml"
    if kind == "fifo":
        os.mkfifo(config)
    elif kind == "device":  # /dev/zero would never end; /dev/null stands in for it (no memory at stake)
        config = Path("/dev/null")
    else:  # a valid YAML mapping, but the size of no config (a dataset archive given by mistake, say)
        config.write_text("epochs: 3\n" + "#" * MAX_CONFIG_BYTES + "\n")
    assert main(["--config", str(config), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    expected = "is over 1 MB: not a config file" if kind == "huge" else "is not a regular file"
    assert f"config file '{config}' {expected}" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param([], "no dataset given", id="no-data"),
        pytest.param(
            ["--data", "x", "--val-fraction", "1.5"], "--val-fraction must be between 0 and 1", id="val"
        ),
        pytest.param(["--data", "x", "--rotate-p", "2"], "--rotate-p is a probability", id="probability"),
        pytest.param(["--data", "x", "--pretrained", "--init-weights", "w.pt"], "not both", id="two-inits"),
        pytest.param(["--data", "x", "--device", "cuda:0"], "no CUDA device", id="no-cuda"),
        pytest.param(
            ["--data", "x", "--amp", "fp16", "--device", "cpu"], "needs a CUDA device", id="fp16-cpu"
        ),
        pytest.param(["--resume", "/nonexistent/run"], "nothing to resume", id="resume-missing"),
        pytest.param(["--resume", "/dev/null"], "'/dev/null' is not a regular file", id="resume-device"),
        pytest.param(["--data", "x", "--weight-decay", "-1"], "--weight-decay must not be", id="decay"),
        pytest.param(["--data", "x", "--plateau-factor", "2"], "--plateau-factor must be", id="factor"),
        pytest.param(["--data", "x", "--drop-rate", "2"], "--drop-rate must be in", id="drop"),
        pytest.param(["--data", "x", "--jitter", "-1"], "--jitter must be in", id="jitter"),
        pytest.param(["--data", "x", "--rotate", "nan"], "--rotate must be a finite", id="nan-hangs"),
        pytest.param(["--data", "x", "--lr", "inf"], "--lr must be a finite", id="inf-lr"),
        pytest.param(
            ["--data", "x", "--img-size", "16", "--batch-size", "1"], "--batch-size 1 needs", id="bn-1x1"
        ),
        pytest.param(["--data", "x", "--seed", "-1"], "--seed must be in 0..", id="seed-negative"),
        pytest.param(["--data", "x", "--seed", str(2**70)], "--seed must be in 0..", id="seed-huge"),
        pytest.param(["--data", "x", "--device", "meta"], "is not supported", id="device-meta"),
        pytest.param(["--data", "x", "--device", "mps"], "is not supported", id="device-mps"),
        pytest.param(["--data", "x", "--workers", "100000"], "--workers must be at most 64", id="workers"),
        pytest.param(
            ["--data", "x", "--batch-size", "100000000"], "--batch-size must be at most 4096", id="batch-size"
        ),
        pytest.param(["--data", "x", "--epochs", str(10**9)], "--epochs must be at most 10000", id="epochs"),
    ],
)
def test_bad_options_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv, message
) -> None:
    import torch

    if "cuda" in message.lower() and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("skin-train: error: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"val_fraction": 0.001}, id="val-fraction-small"),
        pytest.param({"img_size": 16}, id="img-size-16"),
        pytest.param({"workers": 0}, id="no-workers"),
        pytest.param({"workers": 64}, id="most-workers"),
        pytest.param({"label_smoothing": 0.0}, id="no-smoothing"),
        pytest.param({"lr": 1.0, "backbone_lr_scale": 1.0}, id="largest-lr"),
        pytest.param({"batch_size": 1, "img_size": 33}, id="batch-1-above-32-px"),
        pytest.param({"seed": 2**32 - 1}, id="largest-seed"),
        pytest.param({"batch_size": 4096, "accum_steps": 2**63 - 1, "epochs": 10000}, id="largest-counts"),
        pytest.param({"jitter_hue": 0.5}, id="most-hue"),
        pytest.param({"translate": 1.0}, id="most-translate"),
        pytest.param({"rotate": 180.0}, id="most-rotate"),
        pytest.param({"scale": 0.0}, id="no-scale"),
        pytest.param({"early_stop": 0, "clip_grad": 0.0, "plateau_patience": 0}, id="zero-means-off"),
        pytest.param(
            {name: 1.0 for name in ("hflip", "vflip", "rotate_p", "jitter_p", "affine_p")}, id="p-1"
        ),
        pytest.param(
            {name: 0.0 for name in ("hflip", "vflip", "rotate_p", "jitter_p", "affine_p")}, id="p-0"
        ),
    ],
)
def test_options_at_the_edge_of_their_range_are_accepted(options: dict[str, object]) -> None:
    cfg = resolve({"data": "d", **options})
    assert {k: getattr(cfg, k) for k in options} == options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"val_fraction": 0.0}, "--val-fraction", id="val-fraction-0"),
        pytest.param({"val_fraction": 1.0}, "--val-fraction", id="val-fraction-1"),
        pytest.param({"img_size": 15}, "--img-size", id="img-size-15"),
        pytest.param({"workers": -1}, "--workers", id="workers"),
        pytest.param({"workers": 65}, "--workers must be at most 64 ", id="workers-65"),  # each a process
        pytest.param({"epochs": 0}, "--epochs", id="epochs"),
        pytest.param({"batch_size": 0, "img_size": 64}, "--batch-size", id="batch-size"),
        pytest.param({"accum_steps": 0}, "--accum-steps", id="accum-steps"),
        pytest.param({"lr": 0.0}, "--lr", id="lr-0"),
        pytest.param(
            {"backbone_lr_scale": -0.1}, "--lr must be positive and --backbone-lr-scale", id="backbone-lr"
        ),
        # AdamW's first step failed with a traceback (a float32 overflow); above 1 a run only diverges
        pytest.param({"lr": 1e308}, "--lr and the backbone's rate", id="lr-huge"),
        pytest.param({"lr": 1.01}, "--lr and the backbone's rate", id="lr-above-1"),
        pytest.param({"backbone_lr_scale": 1e308}, "--lr and the backbone's rate", id="backbone-lr-huge"),
        pytest.param({"label_smoothing": 1.0}, "--label-smoothing", id="smoothing-1"),
        pytest.param({"plateau_factor": 1.0}, "--plateau-factor", id="factor-1"),
        pytest.param({"plateau_patience": -1}, "--plateau-patience", id="patience"),
        pytest.param({"warmup_epochs": -1.0}, "--warmup-epochs", id="warmup"),
        pytest.param({"min_lr": -1e-6}, "--warmup-epochs and --min-lr", id="min-lr"),
        pytest.param({"clip_grad": -1.0}, "--clip-grad", id="clip"),
        pytest.param({"rotate": 180.5}, "--rotate", id="rotate"),
        pytest.param({"scale": 1.0}, "--scale", id="scale-1"),
        pytest.param({"translate": 1.01}, "--translate", id="translate"),
        pytest.param({"jitter_hue": 0.51}, "--jitter-hue", id="hue"),
        pytest.param({"batch_size": 1, "img_size": 32}, "--batch-size 1 needs", id="batch-1-at-32-px"),
        pytest.param({"seed": 2**32}, "--seed", id="seed-2-32"),
        pytest.param({"sampler": "random"}, "--sampler", id="sampler"),
        pytest.param({"scheduler": "step"}, "--scheduler", id="scheduler"),
        pytest.param({"amp": "fp8"}, "--amp", id="amp"),
        pytest.param({"early_stop": -1}, "--early-stop", id="early-stop"),
        *(
            pytest.param({name: 1.01}, f"--{name.replace('_', '-')} is a probability", id=name)
            for name in ("hflip", "vflip", "rotate_p", "jitter_p", "affine_p")
        ),
        pytest.param({"hflip": -0.01}, "--hflip is a probability", id="negative-p"),
        # a typo's batch read the whole split into one tensor; twice it (evaluation's) past sys.maxsize
        # failed Python's islice() with a traceback
        pytest.param({"batch_size": 4097}, "--batch-size must be at most 4096 ", id="batch-size-4097"),
        # past sys.maxsize: Python's islice() and torch failed mid-run with a traceback
        pytest.param({"accum_steps": 2**63}, "--accum-steps must be at most", id="accum-steps-2-63"),
        pytest.param({"epochs": 10**20}, "--epochs must be at most", id="epochs-10-20"),
        # a typo's 10**9 just ran on (a cosine schedule stretched that far stays at its peak rate)
        pytest.param({"epochs": 10001}, "--epochs must be at most 10000,", id="epochs-10001"),
    ],
)
def test_options_just_outside_their_range_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        resolve({"data": "d", **options})


def test_given_names_are_kept_and_an_empty_config_file_sets_nothing(tmp_path: Path) -> None:
    given = {"model_name": "mine", "model_version": "7", "trained_on": "photos", "out": str(tmp_path / "o")}
    cfg = resolve({"data": "d", **given})
    assert {k: getattr(cfg, k) for k in given} == given
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    cfg, _ = resolve_options({"config": str(empty), "data": "d"})
    assert cfg.epochs == DEFAULTS.epochs


def test_a_runs_own_config_as_a_recipe_gives_the_new_run_its_own_version(tmp_path: Path) -> None:
    run = tmp_path / "old"
    run.mkdir()
    written = run / "config.yaml"  # as a run writes it: its own folder as out
    # A resumed run's file also names the last.pt it continued from.
    written.write_text(
        f"data: d\nout: {run}\nmodel_version: 2026.01.01-0000\nepochs: 3\nresume: {run / 'last.pt'}\n"
    )
    cfg, ckpt = resolve_options({"config": str(written), "out": str(tmp_path / "new")})
    assert cfg.epochs == 3 and cfg.model_version != "2026.01.01-0000" and cfg.model_version[:2] == "20"
    assert ckpt is None and cfg.resume is None and cfg.out == str(tmp_path / "new")
    cfg, _ = resolve_options({"config": str(written), "out": str(tmp_path / "new"), "model_version": "9"})
    assert cfg.model_version == "9"
    mine = tmp_path / "mine.yaml"  # hand-written: its model_version is meant
    mine.write_text(f"data: d\nout: {tmp_path / 'new'}\nmodel_version: 2026.01.01-0000\n")
    cfg, _ = resolve_options({"config": str(mine)})
    assert cfg.model_version == "2026.01.01-0000"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("lr: 1e-3\n", {"lr": 0.001}, id="yaml-1.1-float-as-text"),
        pytest.param('epochs: "2"\nmin_lr: 1e-6\n', {"epochs": 2, "min_lr": 1e-6}, id="numbers-as-text"),
        pytest.param(
            "augment: false\ninit_weights: null\n", {"augment": False, "init_weights": None}, id="bool"
        ),
    ],
)
def test_yaml_values_take_their_option_types(tmp_path: Path, text: str, expected: dict[str, object]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text + "data: d\n")
    cfg, _ = resolve_options({"config": str(config)})
    assert {k: getattr(cfg, k) for k in expected} == expected


@pytest.mark.parametrize(
    "text",
    [
        "epochs: abc\n",
        "epochs: 2.5\n",
        'epochs: "+-5"\n',
        'epochs: "²"\n',  # str.isdigit() says yes, int() says no
        "seed: abc\n",
        "img_size: [64, 64]\n",
        'augment: "no"\n',
        "epochs: null\n",  # only options whose default is None take null
        "epochs: true\n",  # a bool is an int to Python, not a number here
        "lr: false\n",
    ],
)
def test_yaml_values_of_the_wrong_type_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["--config", str(config), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skin-train: error: ") and " must be " in err and err.count("\n") == 1


def test_config_file_not_text_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(bytes(range(128, 256)))
    assert main(["--config", str(config), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and err.count("\n") == 1


def test_torchrun_variables_that_are_not_numbers_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert main(["--data", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "WORLD_SIZE, RANK, LOCAL_RANK must be whole numbers" in err and err.count("\n") == 1


def test_bad_flag_value_is_one_line_not_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "abc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("skin-train: error: argument --epochs: invalid int value: 'abc'")


@pytest.mark.parametrize(
    ("rank", "said"),
    [pytest.param("0", True, id="rank-0-says-it"), pytest.param("1", False, id="other-ranks-quiet")],
)
def test_under_torchrun_a_bad_flag_is_one_line_from_rank_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rank: str, said: bool
) -> None:
    monkeypatch.setenv("RANK", rank)  # every rank parses the same command line
    with pytest.raises(SystemExit) as exit_:
        main(["--epochs", "abc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("skin-train: error: argument --epochs") if said else err == ""


def test_pretrained_follows_init_weights() -> None:
    assert resolve({"data": "d"}).pretrained is True
    assert resolve({"data": "d", "init_weights": "w.pt"}).pretrained is False
    assert resolve({"data": "d", "pretrained": False}).pretrained is False
    with pytest.raises(ConfigError):
        resolve({"data": "d", "pretrained": True, "init_weights": "w.pt"})


def test_derived_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = resolve({"data": "ds", "arch": "test_efficientnet"})
    assert cfg.data == str(tmp_path / "ds")
    assert Path(cfg.out).parent == tmp_path / "runs" and Path(cfg.out).name.startswith("test_efficientnet-")
    assert cfg.model_name == "skin-test_efficientnet"
    assert cfg.model_version[:2] == "20"
    assert cfg.trained_on == "ImageFolder dataset ds"  # served to everyone: no path of the training machine


def test_switches_parse_both_ways_and_paths_stay_text() -> None:
    argv = ["--no-pretrained", "--no-plots", "--no-channels-last", "--overwrite", "--init-weights", "7.pt"]
    assert vars(build_parser().parse_args(argv)) == {
        "pretrained": False,
        "plots": False,
        "channels_last": False,
        "overwrite": True,
        "init_weights": "7.pt",
    }
    argv = ["--pretrained", "--channels-last", "--augment", "--demo", "--mlflow"]
    assert vars(build_parser().parse_args(argv)) == dict.fromkeys(
        ("pretrained", "channels_last", "augment", "demo", "mlflow"), True
    )


@pytest.mark.parametrize(
    ("error", "rank", "code", "err"),
    [
        pytest.param(None, "0", 0, "", id="ok"),
        pytest.param(ConfigError("bad option"), "0", 2, "skin-train: error: bad option\n", id="config"),
        pytest.param(DataError("no images"), "0", 2, "skin-train: error: no images\n", id="data"),
        pytest.param(ModelError("bad weights"), "0", 2, "skin-train: error: bad weights\n", id="model"),
        pytest.param(
            OSError(28, "No space left on device", "/out"),
            "0",
            2,
            "skin-train: error: No space left on device: /out\n",
            id="os-error",
        ),
        pytest.param(
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)"),
            "0",
            2,
            "skin-train: error: out of GPU memory: lower --batch-size or --img-size "
            "(--resume takes another --batch-size)\n",
            id="gpu-out-of-memory",  # a traceback, as any --batch-size too large for the GPU was
        ),
        pytest.param(
            torch.OutOfMemoryError("CUDA out of memory."),
            "1",
            2,
            "skin-train: error (rank 1): out of GPU memory: lower --batch-size or --img-size "
            "(--resume takes another --batch-size)\n",
            id="gpu-out-of-memory-rank-1",
        ),
        pytest.param(
            KeyboardInterrupt(), "0", 130, "skin-train: interrupted before training started\n", id="ctrl-c"
        ),
        pytest.param(KeyboardInterrupt(), "1", 130, "", id="ctrl-c-rank-1"),
        pytest.param(
            ModuleNotFoundError("No module named 'albumentations'", name="albumentations"),
            "0",
            2,
            "skin-train: error: albumentations is not installed; training and export need the train and "
            "runtime extras: pip install -e '.[train,runtime]'\n",
            id="train-extra-missing",
        ),
        pytest.param(ModuleNotFoundError(name="timm"), "1", 2, "", id="train-extra-missing-rank-1"),
    ],
)
def test_main_exit_status_and_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException | None,
    rank: str,
    code: int,
    err: str,
) -> None:
    import training.loop

    seen: list[dict[str, object]] = []

    def fake_train(**kwargs: object) -> Path:
        seen.append(kwargs)
        if error is not None:
            raise error
        return Path("run")

    monkeypatch.setattr(training.loop, "train", fake_train)
    monkeypatch.setenv("RANK", rank)
    assert main(["--data", "d", "--epochs", "2"]) == code
    assert capsys.readouterr().err == err
    assert seen == [{"data": "d", "epochs": 2}]  # only the options given


def test_without_the_train_extra_it_says_what_to_install(tmp_path: Path) -> None:
    """skin-train is installed with the package, also where only the runtime extra is (the serving image)."""
    blocked = ("torch", "timm", "albumentations")  # None in sys.modules: the import fails as if not installed
    code = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); from training.cli import main; "
    code += "sys.exit(main(['--data', 'd', '--out', 'run']))"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr == (
        "skin-train: error: torch is not installed; training and export need the train and runtime extras: "
        "pip install -e '.[train,runtime]'\n"
    )
    assert not (tmp_path / "run").exists()


def test_every_module_training_and_export_import_gets_the_install_line() -> None:
    """A module imported by name but missing from NEEDED would be a traceback in the serving image."""
    import ast

    from training.extras import NEEDED

    optional = {"mlflow"}  # --mlflow says itself what to install
    ours = {"runtime", "training", "export", "benchmarks", "__future__"}
    root = Path(__file__).resolve().parents[2]
    imported = set()
    for path in [*root.joinpath("training").glob("*.py"), *root.joinpath("export").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - ours - optional
    assert third_party <= NEEDED, sorted(third_party - NEEDED)
    assert {"torch", "timm", "onnx", "numpy"} <= third_party  # the walk found the imports at all


def test_a_missing_module_of_its_own_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the extras' modules get the install line: a broken import of ours stays a traceback."""
    import training.loop

    def broken(**kwargs: object) -> None:
        raise ModuleNotFoundError("No module named 'training.nothing'", name="training.nothing")

    monkeypatch.setattr(training.loop, "train", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["--data", "d"])
