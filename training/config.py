"""Training options: one dataclass holds every option and its default; the CLI and ``train()`` share it.

Precedence when options are resolved: explicit keyword arguments (CLI flags) > the configuration stored in
the checkpoint being resumed > the YAML file given with ``config`` > the defaults below.
This module stays light (no torch) so ``skin-train --help`` is quick.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

SCHEDULERS = ("plateau", "cosine")
SAMPLERS = ("weighted", "shuffle")
AMP_MODES = ("auto", "bf16", "fp16", "off")


class ConfigError(Exception):
    """Options that cannot work together; the message is one line for people."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception from a library (timm, torch, MLflow) as the one line a message quotes of it."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


@dataclass
class TrainConfig:
    # data
    data: str = ""
    val_fraction: float = 0.15
    img_size: int = 300
    workers: int = 4
    # model
    arch: str = "efficientnet_b3"
    pretrained: bool | None = None  # None: ImageNet weights from timm unless init_weights is given
    init_weights: str | None = None
    drop_rate: float = 0.3
    # optimisation
    epochs: int = 50
    batch_size: int = 16
    accum_steps: int = 2
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 0.1
    label_smoothing: float = 0.1
    sampler: str = "weighted"
    scheduler: str = "plateau"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    clip_grad: float = 1.0
    early_stop: int = 10
    # augmentation (training only; evaluation is the runtime's preprocessing)
    augment: bool = True
    hflip: float = 0.5
    vflip: float = 0.5
    rotate: float = 30.0
    rotate_p: float = 0.7
    jitter: float = 0.2
    jitter_hue: float = 0.05
    jitter_p: float = 0.3
    scale: float = 0.1
    translate: float = 0.1
    affine_p: float = 0.5
    # hardware
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None  # None: on for CUDA
    seed: int = 42
    # output
    out: str = ""
    resume: str | None = None
    overwrite: bool = False
    plots: bool = True
    model_name: str = ""
    model_version: str = ""
    trained_on: str = ""
    demo: bool = False
    mlflow: bool = False
    mlflow_experiment: str = "skin-lesion"
    config: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SEEDS = range(2**32)  # what numpy's and torch's generators take; export rebuilds splits from the same seed
DEFAULTS = TrainConfig()
MAX_CONFIG_BYTES = 1 << 20  # a config is a few dozen lines
# A loader worker is a process, and the training and validation loaders each start --workers of them (per
# torchrun rank): a typo's 100000 would fork until the machine gives out, before the first step.
MAX_WORKERS = 64
# The loader decodes a whole batch and the model runs it at once: a typo's 100000000 read the whole training
# split into one tensor (20,000 images at 300 px: 22 GB) before failing, and evaluation's batch of twice that
# overflowed Python's slicing past 2**62 with a traceback. A batch above the split takes the whole split.
MAX_BATCH_SIZE = 4096
# A typo's 10**9 just ran (with --scheduler cosine at its peak rate throughout, the curve stretched that far);
# long from-scratch recipes run a few hundred epochs.
MAX_EPOCHS = 10000


def read_config(path: Path) -> str:
    """A YAML config file's text. Only a regular file (a FIFO would wait for a writer) of at most
    MAX_CONFIG_BYTES (/dev/zero, or a dataset archive given by mistake, would fill the memory); OSError and
    UnicodeDecodeError are the caller's to word."""
    if path.exists() and not path.is_file() and not path.is_dir():  # a folder: open() says so
        raise ConfigError(f"config file {str(path)!r} is not a regular file")
    with path.open("rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is over {MAX_CONFIG_BYTES >> 20} MB: not a config file")
    return data.decode("utf-8")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Options from a YAML mapping (keys with dashes or underscores); unknown keys are an error."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(read_config(path))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({type(exc).__name__})") from None
    except RecursionError:  # PyYAML builds nested lists and mappings recursively
        raise ConfigError(f"config file {str(path)!r} is nested too deeply") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of option: value")
    options = check_keys({str(k).replace("-", "_"): v for k, v in raw.items()}, str(path))
    return {name: typed(name, value, str(path)) for name, value in options.items()}


def typed(name: str, value: Any, where: str) -> Any:
    """A YAML value as its option's type. YAML 1.1 reads ``1e-3`` as text, so numbers may come as text."""
    kind = str(FIELDS[name].type)
    if value is None and "None" in kind:
        return None
    wrong = ConfigError(f"{name} in {where} must be {kind.replace(' | None', '')}, not {value!r}")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise wrong
    if isinstance(value, bool):  # a bool is an int to Python; never a number option here
        raise wrong
    if kind == "int":
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):  # not "+-5", not "²"
            return int(value)
        raise wrong
    if kind == "float" and isinstance(value, int | float | str):
        try:
            return float(value)
        except ValueError:
            raise wrong from None
    if kind.startswith("str") and isinstance(value, str):
        return value
    raise wrong


def check_keys(options: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r} in {where}")
    return options


def resolve(*layers: dict[str, Any]) -> TrainConfig:
    """Merge option layers (later wins), fill derived defaults and check values."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    check_keys(merged, "the options")
    cfg = TrainConfig(**merged)
    if not cfg.data:
        raise ConfigError("no dataset given: pass --data ROOT (a folder with train/ and test/)")
    cfg.data = str(Path(cfg.data).expanduser().resolve())
    if cfg.pretrained is None:
        cfg.pretrained = not cfg.init_weights
    if cfg.pretrained and cfg.init_weights:
        raise ConfigError("use either --pretrained or --init-weights, not both")
    if not cfg.out:
        cfg.out = str(Path("runs") / f"{cfg.arch}-{datetime.now():%Y%m%d-%H%M%S}")
    cfg.out = str(Path(cfg.out).expanduser().resolve())
    cfg.model_name = cfg.model_name or f"skin-{cfg.arch}"
    cfg.model_version = cfg.model_version or f"{datetime.now():%Y.%m.%d-%H%M}"
    # Its name, not its path: /api/info and the page show it to everyone ("SkinDisease ImageFolder at
    # /home/…/patients", whatever the data was).
    cfg.trained_on = cfg.trained_on or f"ImageFolder dataset {Path(cfg.data).name}"
    _check(cfg)
    return cfg


def _check(cfg: TrainConfig) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(0.0 < cfg.val_fraction < 1.0, f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    need(16 <= cfg.img_size <= 4096, f"--img-size must be 16..4096, got {cfg.img_size}")
    need(cfg.workers >= 0, "--workers must be 0 or more")
    need(
        cfg.workers <= MAX_WORKERS,
        f"--workers must be at most {MAX_WORKERS} (each is a process), got {cfg.workers}",
    )
    need(cfg.epochs >= 1, "--epochs must be at least 1")
    need(cfg.epochs <= MAX_EPOCHS, f"--epochs must be at most {MAX_EPOCHS}, got {cfg.epochs}")
    need(cfg.batch_size >= 1, "--batch-size must be at least 1")
    need(
        cfg.batch_size <= MAX_BATCH_SIZE,
        f"--batch-size must be at most {MAX_BATCH_SIZE} (images per step and GPU), got {cfg.batch_size}",
    )
    need(cfg.accum_steps >= 1, "--accum-steps must be at least 1")
    need(
        cfg.lr > 0 and cfg.backbone_lr_scale >= 0,
        "--lr must be positive and --backbone-lr-scale not negative",
    )
    for f in dataclasses.fields(cfg):  # nan or inf would train to NaN, or hang the augmentation
        value = getattr(cfg, f.name)
        if isinstance(value, float):
            need(math.isfinite(value), f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
    # AdamW moves each weight by about its rate every step: above 1 a run only diverges, and past float32's
    # range (--lr 1e308) its first step failed with a traceback.
    need(
        cfg.lr <= 1 and cfg.lr * cfg.backbone_lr_scale <= 1,
        f"--lr and the backbone's rate (--lr x --backbone-lr-scale) must be at most 1, got {cfg.lr:g} and "
        f"{cfg.lr * cfg.backbone_lr_scale:g}",
    )
    need(0.0 <= cfg.label_smoothing < 1.0, "--label-smoothing must be in [0, 1)")
    need(0.0 <= cfg.drop_rate < 1.0, f"--drop-rate must be in [0, 1), got {cfg.drop_rate}")
    need(cfg.weight_decay >= 0, f"--weight-decay must not be negative, got {cfg.weight_decay}")
    need(
        0.0 < cfg.plateau_factor < 1.0, f"--plateau-factor must be between 0 and 1, got {cfg.plateau_factor}"
    )
    need(cfg.plateau_patience >= 0, "--plateau-patience must be 0 or more")
    need(cfg.warmup_epochs >= 0 and cfg.min_lr >= 0, "--warmup-epochs and --min-lr must not be negative")
    need(cfg.clip_grad >= 0, "--clip-grad must be 0 (off) or a positive norm")
    need(0.0 <= cfg.rotate <= 180.0, f"--rotate is a limit in degrees (0..180), got {cfg.rotate}")
    need(0.0 <= cfg.scale < 1.0, f"--scale must be in [0, 1), got {cfg.scale}")
    need(0.0 <= cfg.translate <= 1.0, f"--translate must be in [0, 1], got {cfg.translate}")
    need(0.0 <= cfg.jitter <= 1.0, f"--jitter must be in [0, 1], got {cfg.jitter}")
    need(0.0 <= cfg.jitter_hue <= 0.5, f"--jitter-hue must be in [0, 0.5], got {cfg.jitter_hue}")
    # A stride-32 network leaves 1x1 features below 64 px: BatchNorm needs more than one value per channel.
    need(
        cfg.batch_size >= 2 or cfg.img_size > 32,
        "--batch-size 1 needs --img-size above 32 (BatchNorm needs more than one value per channel)",
    )
    need(cfg.sampler in SAMPLERS, f"--sampler must be one of {', '.join(SAMPLERS)}")
    need(cfg.scheduler in SCHEDULERS, f"--scheduler must be one of {', '.join(SCHEDULERS)}")
    need(cfg.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}")
    need(cfg.early_stop >= 0, "--early-stop must be 0 (off) or a number of epochs")
    need(cfg.seed in SEEDS, f"--seed must be in 0..{SEEDS[-1]} (numpy's range), got {cfg.seed}")
    for name in ("hflip", "vflip", "rotate_p", "jitter_p", "affine_p"):
        value = getattr(cfg, name)
        need(0.0 <= value <= 1.0, f"--{name.replace('_', '-')} is a probability, got {value}")
    for f in dataclasses.fields(cfg):  # past it, torch and Python's slicing fail with a traceback mid-run
        value = getattr(cfg, f.name)
        if isinstance(value, int) and not isinstance(value, bool):
            need(
                value <= sys.maxsize,
                f"--{f.name.replace('_', '-')} must be at most {sys.maxsize}, got {value}",
            )
