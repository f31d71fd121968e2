from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import build_parser, main
from training.config import DEFAULTS, ConfigError, TrainConfig, resolve
from training.loop import resolve_options


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
    assert cfg.trained_on == f"SkinDisease ImageFolder at {tmp_path / 'ds'}"
