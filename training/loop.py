"""Training and evaluation. One code path for a CPU, one GPU, or many GPUs/nodes under torchrun (DDP).

Reproducibility: the sampler's draws are a function of (seed, epoch), each image's augmentation of
(seed, epoch, draw), and the global RNG (dropout) is reseeded from (seed, epoch, rank) at every epoch. So the
whole random state of a run is its epoch counter, and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from runtime.bundle import fingerprint_files
from training import plots
from training.augment import build_transform
from training.cluster import Cluster, loader_workers, scan_said_once, setup_cluster, worker_own_group
from training.config import (
    FIELDS,
    ConfigError,
    TrainConfig,
    check_keys,
    load_yaml,
    read_config,
    resolve,
    typed,
)
from training.data import (
    RESIZE_FILTER,
    RESIZE_MODE,
    EvalDataset,
    Splits,
    TrainDataset,
    WeightedSampler,
    balanced_weights,
    load_image,
    load_splits,
)
from training.files import FolderLock, RunNotSaved, not_a_file, write_atomically
from training.model import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    check_input_size,
    checkpoint_size,
    load_checkpoint,
    normalization,
    save_checkpoint,
)
from training.report import classes_without, classification_summary, epoch_metrics, plain
from training.stop import Interrupted, signals_deferred, signals_stop
from training.tracking import MlflowTracker

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "lr_backbone",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_precision",
    "val_recall",
    "val_f1",
    "train_skipped",
    "val_skipped",
    "time_s",
)


# What a run writes (and --overwrite removes first; nothing else in the directory is touched).
RUN_FILES = (
    "best.pt",
    "last.pt",
    "config.yaml",
    "metrics.csv",
    "report.json",
    "curves.png",
    "confusion_matrix.png",
    "mistakes_confidence.png",
    "mistakes_most_confident.png",
    "mistakes_least_confident.png",
)


class Evaluation(NamedTuple):
    probs: np.ndarray  # float32 [N, C], softmax of logits
    labels: np.ndarray  # int64 [N]
    logits: np.ndarray  # float32 [N, C] (for temperature scaling)
    skipped: int  # unreadable images left out
    indices: np.ndarray  # int64 [N]: position of each row in the loader's order


@dataclass
class State:
    """Progress that resume restores (besides model, optimizer, scheduler and scaler)."""

    epoch: int = 0  # epochs completed
    best_f1: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best macro-F1
    history: list[dict[str, float]] = field(default_factory=list)
    bad_train: list[int] = field(default_factory=list)  # unreadable training images (indices) seen so far
    val_without_images: list[str] = field(default_factory=list)  # classes with no readable validation image

    @classmethod
    def restored(cls, saved: dict[str, Any]) -> State:
        """The state a last.pt saved, checked: one edited by hand (or from another version) fails here, in one
        line, not with a traceback some epochs later. TypeError / ValueError name nothing of the data."""
        state = cls(**saved)
        counts = (state.epoch, state.best_epoch, state.stale)
        if not all(type(n) is int and n >= 0 for n in counts):
            raise ValueError("epoch counts")
        f1 = state.best_f1
        if type(f1) not in (int, float) or not (f1 == -1 or 0 <= f1 <= 1):
            raise ValueError("best_f1")
        lists = (
            (state.history, dict),
            (state.bad_train, int),
            (state.val_without_images, str),
        )
        if not all(type(items) is list and all(type(i) is kind for i in items) for items, kind in lists):
            raise TypeError("lists")
        return state


def train(**kwargs: Any) -> Path:
    """Fine-tune a timm model on an ImageFolder dataset; returns the run directory.

    Keyword names are the CLI's option names with underscores (see ``training.config.TrainConfig``).
    """
    # SIGTERM and SIGHUP stop a run as Ctrl-C does; last.pt stays safe (written to a temporary file, renamed).
    with signals_stop():
        cfg, resumed = resolve_options(kwargs)
        cluster = setup_cluster(cfg.device)
        last = Path(cfg.out) / "last.pt"
        before = _stamp(last)
        lock = FolderLock()
        try:
            return _run(cfg, resumed, cluster, lock)
        except KeyboardInterrupt as exc:
            signum = int(getattr(exc, "signum", signal.SIGINT))
            if cfg.overwrite and resumed is None and before is not None and _stamp(last) == before:
                # This run wrote no last.pt yet: the one there is the earlier run's, which --overwrite
                # removes only after the first epoch; resuming it would continue that run, not this one.
                raise Interrupted(None, signum=signum, previous=last.parent) from None
            raise Interrupted(last.parent if last.is_file() else None, signum=signum) from None
        except OSError as exc:
            # A file of the run's that could not be written: said with how to go on when epochs are saved
            # (not the earlier run's last.pt that an --overwrite run has not replaced yet).
            ours = isinstance(exc.filename, str) and Path(exc.filename).parent == last.parent
            theirs = cfg.overwrite and resumed is None and _stamp(last) == before
            if ours and last.is_file() and not theirs:
                raise RunNotSaved(exc, last.parent) from None
            raise
        finally:
            lock.release()
            if cluster.owned and dist.is_initialized():
                dist.destroy_process_group()


def _room_to_replace(run_dir: Path, need: int) -> None:
    """OSError (ENOSPC), the earlier run's files untouched, unless ``need`` bytes fit in their place."""
    held = sum(p.stat().st_size for name in RUN_FILES if (p := run_dir / name).is_file())
    room = shutil.disk_usage(run_dir).free + held
    if need > room:
        raise OSError(
            errno.ENOSPC,
            f"no room for the new run's checkpoints in {run_dir} ({need / 1e6:.1f} MB; "
            f"{room / 1e6:.1f} MB free once the earlier run's files are removed); the earlier run is kept: "
            "free some space, or pass another --out",
        )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """Which file is at ``path`` (inode, mtime, size), or None: tells a file written since from an old one."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def resolve_options(kwargs: dict[str, Any]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Explicit options > the resumed checkpoint's config > the YAML file > defaults."""
    explicit = check_keys({k.replace("-", "_"): v for k, v in kwargs.items()}, "the arguments")
    from_yaml = load_yaml(explicit["config"]) if explicit.get("config") else {}
    written_out = from_yaml.get("out")
    if written_out and Path(str(written_out)).resolve() == Path(explicit["config"]).resolve().parent:
        # The config.yaml a run wrote in its folder, used as a recipe: the new run is another model, so its
        # version is its own (a hand-written file's model_version, or --model-version, is still used), and it
        # does not continue the run the file came from (that is --resume).
        from_yaml.pop("model_version", None)
        from_yaml.pop("resume", None)
    resume = explicit.get("resume", from_yaml.get("resume"))
    ckpt = None
    saved: dict[str, Any] = {}
    if resume:
        path = Path(resume).expanduser()
        path = path / "last.pt" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"nothing to resume: {str(path)!r} {not_a_file(path)}")
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "state" not in ckpt:
            raise ConfigError(f"{str(path)!r} holds no training state; resume from a run's last.pt")
        saved_config = ckpt.get("config", {})
        if not isinstance(saved_config, dict):
            raise ConfigError(f"cannot resume: {str(path)!r} holds no readable config")
        # Typed like a YAML file's options; keys a newer or older version does not know are left out.
        saved = {
            k: typed(k, v, str(path))
            for k, v in saved_config.items()
            if k in FIELDS and k not in ("resume", "overwrite", "out")
        }
        # A resumed run continues in the folder its last.pt is in (wherever the run was first written), so
        # that its best.pt, metrics and report stay together; another run's folder is never written into.
        run_dir = path.resolve().parent
        asked = explicit.get("out")
        if asked and Path(asked).expanduser().resolve() != run_dir:
            raise ConfigError(
                f"a resumed run continues in its own folder ({run_dir}); drop --out or copy that folder"
            )
        explicit = {**explicit, "resume": str(path.resolve()), "out": str(run_dir)}  # absolute: config.yaml
    return resolve(from_yaml, saved, explicit), ckpt


T = TypeVar("T")


def amp_setup(mode: str, device: torch.device) -> tuple[torch.dtype | None, Any]:
    """(autocast dtype or None, GradScaler or None): bf16 where supported, else fp16 with a scaler."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, None
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16":
        return torch.bfloat16, None
    if device.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA device (use --amp bf16 on a CPU)")
    return torch.float16, torch.amp.GradScaler("cuda")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with two groups: the classifier head at ``lr``, the backbone at ``lr * backbone_lr_scale``."""
    classifier = model.get_classifier()  # type: ignore[operator]
    heads = classifier if isinstance(classifier, tuple) else (classifier,)  # distilled: (head, head_dist)
    head_ids = {id(p) for head in heads for p in head.parameters()}
    head = [p for p in model.parameters() if id(p) in head_ids]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale, "name": "backbone"},
        {"params": head, "lr": cfg.lr, "name": "head"},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> Any:
    """ReduceLROnPlateau on validation loss (stepped per epoch), or linear warm-up + cosine (per step)."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr
        )
    total = max(1, cfg.epochs * steps_per_epoch)
    # Capped in epochs first: 1e308 warm-up epochs times the steps is infinity, which round() refuses.
    warm = min(total - 1, round(min(cfg.warmup_epochs, cfg.epochs) * steps_per_epoch))

    def schedule(start: float) -> Callable[[int], float]:
        # Each group ends at min_lr. One that starts at or below it (a small --backbone-lr-scale) keeps its
        # start rate after the warm-up, as ReduceLROnPlateau never raises a rate to min_lr either.
        floor = min(1.0, cfg.min_lr / start) if start > 0 else 1.0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))

        return factor

    factors = [schedule(group["lr"]) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def _check_splits(splits: Splits, cfg: TrainConfig, cluster: Cluster) -> None:
    """What would otherwise fail after the first epoch, or at the very end, with the earlier run gone."""
    if not splits.val:
        raise ConfigError("no validation images: give each class 2 or more training images (one is held out)")
    per_step = min(cfg.batch_size, len(splits.train) // cluster.world_size)
    if per_step < 2 and cfg.img_size <= 32:  # as the --batch-size 1 check in config.py
        raise ConfigError("one training image per step needs --img-size above 32 (BatchNorm), or more images")
    for name, samples in (("training", splits.train), ("validation", splits.val), ("test", splits.test)):
        # The first readable one ends the search: all are read anyway, this only fails fast when none is.
        if not any(load_image(path, 32) is not None for path, _ in samples):
            raise ConfigError(f"no {name} image could be read in {cfg.data}")
    # A class none of whose images can be read (cloud placeholders, HEICs renamed .jpg) was trained as the
    # rest, never learned, and served; only the end-of-run warning named it, and then for val and test.
    for index, label in enumerate(splits.class_names):
        images = [path for path, y in splits.train if y == index]
        if images and not any(load_image(path, 32) is not None for path in images):
            raise ConfigError(
                f"none of the {len(images)} training images of class {label!r} can be read (e.g. "
                f"{str(images[0])!r}; the warnings above say why), so the model could not learn it: replace "
                "them with readable JPEG, PNG or WebP files, or remove the class from train/ and test/"
            )


def _check_kept(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """Options a resumed run cannot change: the saved optimizer and scheduler state hold them (a new value
    would be written to config.yaml, never used), or they pick the validation split best.pt is chosen on."""
    kept = ["lr", "backbone_lr_scale", "weight_decay", "seed", "val_fraction"]
    if cfg.scheduler == "plateau":  # the cosine's curve is rebuilt from the options; these live in the state
        kept += ["min_lr", "plateau_factor", "plateau_patience"]
    for key in kept:
        if key in saved and typed(key, saved[key], str(cfg.resume)) != getattr(cfg, key):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"cannot resume with {flag} {getattr(cfg, key)}: the run has {saved[key]}, which its saved "
                "state keeps; start a new run for another value"
            )


def _restore(cfg: TrainConfig, load: Callable[[], T]) -> T:
    """A last.pt of the right format whose contents do not fit (edited, truncated state): one line."""
    try:
        return load()
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        why = f"its saved state does not fit ({type(exc).__name__})"
        raise ConfigError(f"cannot resume from {cfg.resume!r}: {why}") from None


def epoch_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def _run(cfg: TrainConfig, resumed: dict[str, Any] | None, cluster: Cluster, lock: FolderLock) -> Path:
    device = cluster.device
    amp_dtype, scaler = amp_setup(cfg.amp, device)
    if cfg.mlflow:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("--mlflow needs the mlflow package (pip install mlflow)") from None
    with scan_said_once(cluster):
        splits = load_splits(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
    names = splits.class_names
    _check_splits(splits, cfg, cluster)
    if resumed is not None:
        for key, now in (("arch", cfg.arch), ("img_size", cfg.img_size)):
            if resumed.get(key) != now:
                raise ConfigError(f"cannot resume: the checkpoint's {key} differs from this run's ({now!r})")
        if resumed["class_names"] != names:  # the model's outputs are its classes: a folder added or renamed
            had = resumed["class_names"]
            change = "; ".join(
                f"{what}: {', '.join(map(str, found))}"
                for what, found in (
                    ("new", [n for n in names if n not in had]),
                    ("gone", [n for n in had if n not in names]),
                )
                if found
            )
            change = change or "another order"
            raise ConfigError(
                f"cannot resume: the class folders of {cfg.data} are not the run's ({change}); a run keeps "
                "its classes: put the folders back as they were, or start a new run"
            )
        before = resumed.get("config", {}).get("scheduler", cfg.scheduler)
        if before != cfg.scheduler:  # its saved state belongs to the other kind of scheduler
            raise ConfigError(f"cannot resume: the run used --scheduler {before}, not {cfg.scheduler}")
        _check_kept(cfg, resumed.get("config", {}))
        mean, std = normalization(cfg.arch)
        if [resumed.get("mean"), resumed.get("std")] != [list(mean), list(std)]:
            # A run of a 0.5/0.5 arch begun before training fed each arch its own (it got ImageNet's).
            was = f"mean {resumed.get('mean')}, std {resumed.get('std')}"
            raise ConfigError(
                f"cannot resume: the run's inputs were normalized with {was}, and {cfg.arch} now takes "
                f"mean {list(mean)}, std {list(std)} (those of its timm weights); start a new run"
            )
        saved_files = resumed.get("train_fingerprint")  # absent in checkpoints of earlier versions
        if saved_files is not None and saved_files != splits.train_fingerprint():
            raise ConfigError(
                f"cannot resume: images were added to or removed from the train folder of {cfg.data} since "
                "the run began, which moves images between its training and validation splits; put them "
                "back (an unreadable one may stay: it is skipped), or start a new run"
            )
        saved_val = resumed.get("val_fingerprint")  # absent in checkpoints of earlier versions
        if saved_val is not None and saved_val != splits.val_fingerprint():
            raise ConfigError(
                f"cannot resume: the validation split carved from {cfg.data} now differs from the run's, the "
                "file names being the same (another numpy, or files since linked to one another or copied "
                "apart), so it would hold images the run trained on; resume where numpy and the files are as "
                "the run began, or start a new run"
            )
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} is a file, not a folder")
    if (split := splits.folder_holding(run_dir)) is not None:
        raise ConfigError(
            f"--out {str(run_dir)!r} is inside the dataset's {split.name}/ folder, where the run's plots "
            "would be read as images (and its folder as a class); pick another --out"
        )
    if resumed is None and (run_dir / "last.pt").exists() and not cfg.overwrite:
        raise ConfigError(
            f"{str(run_dir)!r} already holds a run; pass --resume {shlex.quote(str(run_dir))} or --overwrite"
        )
    # A bundle's report.json, a hand-written config.yaml: not a new run's to replace. The config.yaml a run
    # wrote for this folder is (one stopped in its first epoch, or rank 0's under torchrun, written already).
    if resumed is None and not cfg.overwrite:
        held = [
            name
            for name in RUN_FILES
            if (run_dir / name).exists() and not (name == "config.yaml" and _config_for(run_dir))
        ]
        if held:
            raise ConfigError(f"{str(run_dir)!r} already holds {held[0]}; pass --overwrite, or another --out")
    channels_last = device.type == "cuda" if cfg.channels_last is None else cfg.channels_last
    memory_format = torch.channels_last if channels_last else torch.preserve_format

    torch.manual_seed(cfg.seed)  # the same initial head on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(
        cfg.arch,
        len(names),
        pretrained=bool(cfg.pretrained) and resumed is None,
        init_weights=cfg.init_weights if resumed is None else None,
        drop_rate=cfg.drop_rate,
    )
    timm_cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})
    fixed = tuple(timm_cfg.get("input_size", ()))[-2:]
    if timm_cfg.get("fixed_input_size") and fixed != (cfg.img_size, cfg.img_size):  # ViTs and the like
        size = f"{fixed[0]}x{fixed[1]}"
        raise ConfigError(f"--arch {cfg.arch} takes only {size} images: pass --img-size {fixed[0]}")
    check_input_size(model, cfg.arch, cfg.img_size)
    if resumed is not None:
        _restore(cfg, lambda: model.load_state_dict(resumed["model"]))
    model.to(device, memory_format=memory_format)

    train_loader, sampler, val_loader = make_loaders(cfg, splits, cluster)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader) / cfg.accum_steps)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    state = State()
    if resumed is not None:

        def restore() -> State:
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            restored = State.restored(resumed["state"])
            if cfg.scheduler == "cosine":
                # The curve's position is in epochs: another --batch-size, --accum-steps or number of
                # processes takes another number of steps per epoch than the saved step count assumed.
                scheduler.last_epoch = restored.epoch * steps_per_epoch
                # A longer --epochs stretches the curve: go on from its rate at this step, not from the rate
                # saved (the old curve's, e.g. its floor), which the next step would otherwise still use.
                for group, base, factor in zip(
                    optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
                ):
                    group["lr"] = base * factor(scheduler.last_epoch)
            if scaler is not None and resumed.get("scaler"):
                scaler.load_state_dict(resumed["scaler"])
            return restored

        state = _restore(cfg, restore)
        if cluster.main:  # the run's last line says their paths are above: also those found before it
            # Read again: named (and why) if still unreadable, not counted if repaired in place since.
            bad = [i for i in state.bad_train if 0 <= i < len(splits.train)]
            state.bad_train = [i for i in bad if load_image(splits.train[i][0], 32) is None]
    net: torch.nn.Module = model
    if cluster.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing, reduction="none")
    meta = checkpoint_meta(cfg, splits)

    # --overwrite: the earlier run's files go only once this run has finished its first epoch (a run that
    # fails or is stopped before that loses nothing); then none of them may pass for this run's.
    replacing = resumed is None and any((run_dir / name).exists() for name in RUN_FILES)
    nothing_left = resumed is not None and state.epoch >= cfg.epochs  # only the report is rebuilt
    say = _printer(cluster.main)
    tracker: MlflowTracker | None = None
    with cluster.shared_outcome():
        if cluster.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.take(run_dir)
            # A resume with no epoch left trains nothing: the run's config.yaml stays its own (an --epochs
            # below what it trained would otherwise be recorded as its recipe).
            if not replacing and not nothing_left:
                write_yaml(run_dir / "config.yaml", cfg.as_dict())
            if cfg.mlflow:
                tracker = MlflowTracker(cfg, run_dir, say)
    say(
        f"{cfg.arch} @ {cfg.img_size}px, {len(names)} classes: {len(splits.train)} train / "
        f"{len(splits.val)} val / {len(splits.test)} test images; device {device}"
        f"{f' x{cluster.world_size}' if cluster.distributed else ''}, amp {amp_dtype or 'off'}"
        + (f"; resuming after epoch {state.epoch}" if resumed is not None else "")
    )
    if nothing_left and cluster.main:  # said, not only done
        source = "best.pt" if (run_dir / "best.pt").is_file() else "the last weights (there is no best.pt)"
        log.warning(
            "nothing left to train: the run has trained %d epoch%s and --epochs is %d; only the test report "
            "is rebuilt, from %s (a larger --epochs trains on)",
            state.epoch,
            "" if state.epoch == 1 else "s",
            cfg.epochs,
            source,
        )

    from tqdm.auto import tqdm

    quiet = None if cluster.main else True  # tqdm: None = quiet when not a TTY
    epochs = tqdm(
        range(state.epoch, cfg.epochs),
        desc="epochs",
        initial=state.epoch,
        total=cfg.epochs,
        disable=quiet,
        dynamic_ncols=True,
    )
    try:
        for epoch in epochs:
            if cfg.early_stop and state.stale >= cfg.early_stop:
                say(f"early stop: no better validation macro-F1 for {state.stale} epochs")
                break
            started = time.monotonic()
            # The rates this epoch trains at (cosine: those of its first step; they move as it goes).
            lr, lr_backbone = optimizer.param_groups[1]["lr"], optimizer.param_groups[0]["lr"]
            sampler.set_epoch(epoch)
            torch.manual_seed(epoch_seed(cfg.seed, epoch, cluster.rank))
            bar = tqdm(
                total=len(train_loader),
                desc=f"epoch {epoch + 1}",
                leave=False,
                disable=quiet,
                dynamic_ncols=True,
            )
            with bar:
                stats = train_epoch(
                    net,
                    train_loader,
                    optimizer,
                    scheduler if cfg.scheduler == "cosine" else None,
                    criterion,
                    cfg=cfg,
                    device=device,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                    channels_last=channels_last,
                    cluster=cluster,
                    bar=bar,
                )
            if stats["diverged"]:  # NaN weights predict one class: saved as best.pt, reported as a model
                # A new run: --resume refuses another --lr, --backbone-lr-scale or --weight-decay
                raise ConfigError(
                    f"training diverged in epoch {epoch + 1}: its weights are no longer finite (training "
                    f"loss {stats['loss']:.4g}); this epoch was not saved; start a new run with a lower "
                    "--lr, --backbone-lr-scale or --weight-decay (a resumed run keeps them)"
                )
            ev = evaluate_sharded(
                model, val_loader, cluster, amp_dtype=amp_dtype, channels_last=channels_last
            )
            val = epoch_metrics(ev.logits, ev.labels)
            if cfg.scheduler == "plateau":
                scheduler.step(val["loss"])
            state.bad_train = sorted(set(state.bad_train) | set(stats["bad"]))
            state.val_without_images = classes_without(ev.labels, names)
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "lr_backbone": lr_backbone,
                "train_loss": stats["loss"],
                "train_acc": stats["acc"],
                "val_loss": val["loss"],
                "val_acc": val["accuracy"],
                "val_precision": val["precision"],
                "val_recall": val["recall"],
                "val_f1": val["f1"],
                "train_skipped": len(state.bad_train),
                "val_skipped": ev.skipped,
                "time_s": round(time.monotonic() - started, 2),
            }
            state.history.append(row)
            state.epoch = epoch + 1
            improved = val["f1"] > state.best_f1
            if improved:
                state.best_f1, state.best_epoch, state.stale = val["f1"], epoch + 1, 0
            else:
                state.stale += 1
            with cluster.shared_outcome():
                if cluster.main:
                    # A stop waits for last.pt: one between best.pt and last.pt left a first epoch's best.pt
                    # that refused the same command, and one after an --overwrite's removals left neither run.
                    with signals_deferred():
                        epoch_meta = {**meta, "epoch": epoch + 1, "metrics": plain(val)}
                        resumable = {
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "scaler": scaler.state_dict() if scaler is not None else None,
                            "sampler": {"seed": cfg.seed, "epoch": epoch + 1},
                            "state": plain(asdict(state)),
                        }
                        if replacing:
                            # Removed, the earlier run would be lost with this one if its checkpoints then
                            # found no room (a larger --arch): both gone, "No space left on device".
                            need = checkpoint_size(model=model, meta=epoch_meta, **resumable)
                            if improved:
                                need += checkpoint_size(model=model, meta=epoch_meta)
                            _room_to_replace(run_dir, need)
                            for name in RUN_FILES:
                                (run_dir / name).unlink(missing_ok=True)
                            write_yaml(run_dir / "config.yaml", cfg.as_dict())
                            replacing = False
                        first = resumed is None and not (run_dir / "last.pt").exists()
                        try:
                            if improved:
                                save_checkpoint(run_dir / "best.pt", model=model, meta=epoch_meta)
                            save_checkpoint(run_dir / "last.pt", model=model, meta=epoch_meta, **resumable)
                        except BaseException:
                            if first:  # its best.pt alone ("already holds best.pt") refused the same command
                                (run_dir / "best.pt").unlink(missing_ok=True)
                            raise
                        write_metrics(run_dir / "metrics.csv", state.history)
                    if tracker is not None:
                        tracker.log_epoch(row)
            say(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {stats['loss']:.4f} acc {stats['acc']:.3f} | "
                f"val loss {val['loss']:.4f} acc {val['accuracy']:.3f} macro-F1 {val['f1']:.3f}"
                f"{' (best)' if improved else ''} | lr {row['lr']:.2e}"
            )
        epochs.close()
        cluster.barrier()
        with cluster.shared_outcome():
            if cluster.main:
                finish(
                    cfg,
                    splits,
                    model,
                    state,
                    run_dir,
                    channels_last=channels_last,
                    val_skipped=int(state.history[-1]["val_skipped"]) if state.history else 0,
                    say=say,
                )
                if tracker is not None:
                    tracker.finish(run_dir)
    except BaseException as exc:
        if tracker is not None:
            tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        tracker.close("FINISHED")
    return run_dir


def make_loaders(
    cfg: TrainConfig, splits: Splits, cluster: Cluster
) -> tuple[DataLoader, WeightedSampler, DataLoader]:
    """Training loader (augmented, class-balanced, sharded by rank) and this rank's validation shard."""
    mean, std = normalization(cfg.arch)
    train_set = TrainDataset(splits.train, cfg.img_size, mean, std, build_transform(cfg), seed=cfg.seed)
    labels = [y for _, y in splits.train]
    weights = balanced_weights(labels, len(splits.class_names)) if cfg.sampler == "weighted" else None
    sampler = WeightedSampler(
        len(train_set), weights, rank=cluster.rank, world_size=cluster.world_size, seed=cfg.seed
    )
    workers = loader_workers(cfg.workers)
    common: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": cluster.device.type == "cuda",
        "persistent_workers": workers > 0,
        "worker_init_fn": worker_own_group if workers > 0 else None,
    }
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=len(sampler) >= cfg.batch_size,  # no ragged last batch (BatchNorm dislikes tiny ones)
        generator=torch.Generator().manual_seed(cfg.seed),
        **common,
    )
    val_set = EvalDataset(splits.val, cfg.img_size, mean, std)
    val_shard = Subset(val_set, range(cluster.rank, len(val_set), cluster.world_size))
    return train_loader, sampler, DataLoader(val_shard, batch_size=cfg.batch_size * 2, **common)


def train_epoch(
    net: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    criterion: torch.nn.Module,
    *,
    cfg: TrainConfig,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scaler: Any,
    channels_last: bool,
    cluster: Cluster,
    bar: Any,
) -> dict[str, Any]:
    """One pass over the sampler with gradient accumulation and clipping; ``scheduler`` steps per update."""
    net.train()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, samples (no sync)
    bad: list[int] = []
    steps = len(loader)
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y, index) in enumerate(loader):
        keep = y >= 0
        if not keep.all():
            bad += index[~keep].tolist()
            if keep.sum() >= 2:  # drop unreadable images, unless that leaves BatchNorm a single one
                x, y, keep = x[keep], y[keep], keep[keep]
        weight = keep.to(device=device, dtype=torch.float32)
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.clamp(min=0).to(device, non_blocking=True)
        update = (i + 1) % cfg.accum_steps == 0 or i + 1 == steps
        # The epoch's last update may gather fewer batches: it is taken all the same, as their mean.
        group = min(cfg.accum_steps, steps - (i - i % cfg.accum_steps))
        sync = contextlib.nullcontext()
        if isinstance(net, DistributedDataParallel) and not update:
            sync = net.no_sync()  # type: ignore[assignment]  # all-reduce gradients once per update only
        with sync:
            with autocast(device, amp_dtype):
                logits = net(x)
            per_sample = criterion(logits.float(), y)
            loss = (per_sample * weight).sum() / weight.sum().clamp(min=1.0)
            scaled = loss / group  # the mean over the update's batches
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if update:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
        with torch.no_grad():
            right = ((logits.argmax(dim=1) == y).float() * weight).sum()
            totals += torch.stack([(per_sample.detach() * weight).sum(), right, weight.sum()]).double()
        bar.update(1)
        if i % 20 == 0 and not bar.disable:  # .item() waits for the GPU: only now and then
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if cluster.distributed:
        # Each rank updated its own BatchNorm statistics after DDP's last broadcast: evaluate (and save)
        # rank 0's, so every shard of the validation set sees the model that best.pt holds.
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)
        dist.all_reduce(totals)
        gathered: list[Any] = [None] * cluster.world_size
        dist.all_gather_object(gathered, bad)
        bad = [i for part in gathered for i in part]
    loss_sum, right_sum, seen = totals.tolist()
    nan = float("nan")
    return {
        "loss": loss_sum / seen if seen else nan,
        "acc": right_sum / seen if seen else nan,
        "bad": bad,
        # The weights, not the loss: under fp16 the scaler skips a step whose activations overflowed (a NaN
        # loss) and the weights stay as they were. BatchNorm's statistics too: NaN there stays for good.
        "diverged": not finite([*net.parameters(), *net.buffers()]),
    }


def finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point value is finite: one wait for the GPU, not one per tensor."""
    checks = [t.isfinite().all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Evaluation:
    """Run ``model`` (eval mode) over a loader of (image, label); label -1 rows (unreadable) are skipped."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    indices: list[torch.Tensor] = []
    skipped = 0
    position = 0
    try:
        for batch in loader:
            x, y = batch[0], batch[1]
            keep = y >= 0
            skipped += int((~keep).sum())
            indices.append(torch.arange(position, position + len(y))[keep])
            position += len(y)
            if not keep.any():
                continue
            x = x[keep].to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                out = model(x)
            logits.append(out.float().cpu())
            labels.append(y[keep].long())
    finally:
        model.train(was_training)
    num_classes = int(getattr(model, "num_classes", 0))
    z = torch.cat(logits) if logits else torch.zeros(0, num_classes)
    return Evaluation(
        probs=torch.softmax(z, dim=1).numpy(),
        labels=torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64),
        logits=z.numpy(),
        skipped=skipped,
        indices=torch.cat(indices).numpy() if indices else np.zeros(0, dtype=np.int64),
    )


def evaluate_sharded(
    model: torch.nn.Module,
    loader: DataLoader,
    cluster: Cluster,
    *,
    amp_dtype: torch.dtype | None,
    channels_last: bool,
) -> Evaluation:
    """Each rank evaluates its shard; the shards are gathered so every rank computes the same metrics."""
    ev = evaluate(model, loader, cluster.device, amp_dtype=amp_dtype, channels_last=channels_last)
    if not cluster.distributed:
        return ev
    parts: list[Any] = [None] * cluster.world_size
    dist.all_gather_object(parts, (ev.logits, ev.labels, ev.skipped))
    logits = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    z = torch.from_numpy(logits)
    return Evaluation(
        probs=torch.softmax(z, dim=1).numpy(),
        labels=labels,
        logits=logits,
        skipped=sum(int(p[2]) for p in parts),
        indices=np.arange(len(labels)),
    )


def eval_loader(
    samples: list[tuple[Path, int]],
    img_size: int,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    batch_size: int = 32,
    workers: int = 0,
) -> DataLoader:
    """A loader of (tensor, label) through the runtime's preprocessing, in ``samples`` order."""
    dataset = EvalDataset(samples, img_size, mean, std)
    init = worker_own_group if workers > 0 else None
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, worker_init_fn=init)


def finish(
    cfg: TrainConfig,
    splits: Splits,
    model: torch.nn.Module,
    state: State,
    run_dir: Path,
    *,
    channels_last: bool,
    val_skipped: int,
    say: Any,
) -> None:
    """The test split, once, with the best checkpoint: report.json and plots. In fp32 whatever --amp says:
    the report describes the model export ships (fp32 ONNX), and the one pass costs little."""
    best_path = run_dir / "best.pt"
    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path)["model"])
    else:
        say("no epoch produced a validation macro-F1; reporting the last weights")
    device = next(model.parameters()).device
    mean, std = normalization(cfg.arch)
    loader = eval_loader(
        splits.test,
        cfg.img_size,
        mean=mean,
        std=std,
        batch_size=cfg.batch_size * 2,
        workers=loader_workers(cfg.workers),
    )
    ev = evaluate(model, loader, device, amp_dtype=None, channels_last=channels_last)
    if len(ev.labels) == 0:
        raise ConfigError("no test image could be read; nothing to report")
    report = classification_summary(
        ev.probs, ev.labels, splits.class_names, display_names=splits.display_names, skipped=ev.skipped
    )
    skipped = {"train": len(state.bad_train), "val": val_skipped, "test": ev.skipped}
    missing = {"val": state.val_without_images, "test": report["classes_without_images"]}
    best = state.best_epoch or None  # None: no epoch produced a validation macro-F1 (not a number)
    report.update(
        {
            "skipped_by_split": skipped,
            "classes_without_images_by_split": missing,
            "identical_copies": splits.copies,
            "model_name": cfg.model_name,
            "model_version": cfg.model_version,
            "architecture": cfg.arch,
            "best_epoch": best,
            "val_macro_f1": state.best_f1 if best else None,
        }
    )
    write_atomically(run_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    if state.history:  # once more: a full disk right after the last epoch's last.pt left it behind by a row
        write_metrics(run_dir / "metrics.csv", state.history)
    if cfg.plots:
        write_plots(run_dir, state.history, report, splits, ev, cfg.img_size, cfg.label_smoothing)
    macro = report["macro avg"]
    say(
        f"test: accuracy {report['accuracy']:.3f}, macro P/R/F1 {macro['precision']:.3f}/"
        f"{macro['recall']:.3f}/{macro['f1-score']:.3f}, top-3 {report['top3_accuracy']:.3f} "
        f"(best epoch {best or 'none'}); outputs in {run_dir}"
    )
    if any(skipped.values()):
        say(
            f"skipped {sum(skipped.values())} unreadable or too large images (train {skipped['train']}, "
            f"val {skipped['val']}, test {skipped['test']}); their paths, and why, are in the warnings above"
        )
    if any(missing.values()):
        where = "; ".join(f"{split}: {', '.join(names)}" for split, names in missing.items() if names)
        say(
            f"warning: no readable image of some classes ({where}); "
            "macro averages there cover only the classes with images or predictions"
        )


def write_plots(
    run_dir: Path,
    history: list[dict[str, float]],
    report: dict[str, Any],
    splits: Splits,
    ev: Evaluation,
    img_size: int,
    label_smoothing: float = 0.0,
) -> None:
    if history:
        plots.training_curves(history, run_dir / "curves.png", label_smoothing=label_smoothing)
    plots.confusion_matrix(report["confusion_matrix"], splits.display_names, run_dir / "confusion_matrix.png")
    plots.mistake_confidence(ev.probs, ev.labels, run_dir / "mistakes_confidence.png")
    preds = ev.probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != ev.labels)
    if len(wrong) == 0:
        return
    confidence = ev.probs[wrong, preds[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")]
    names = splits.display_names
    for label, rows in (("most", order[:12]), ("least", order[::-1][:12])):
        images, captions = [], []
        for row in rows:
            image = load_image(splits.test[int(ev.indices[row])][0], img_size)
            if image is None:
                continue
            images.append(image)
            captions.append(
                f"true {names[ev.labels[row]]}\npred {names[preds[row]]} ({ev.probs[row, preds[row]]:.2f})"
            )
        if images:
            plots.mistake_grid(
                images,
                captions,
                f"{label} confident mistakes (test split)",
                run_dir / f"mistakes_{label}_confident.png",
            )


def checkpoint_meta(cfg: TrainConfig, splits: Splits) -> dict[str, Any]:
    """What makes a checkpoint describe itself (see training.model.save_checkpoint)."""
    import timm

    mean, std = normalization(cfg.arch)
    return {
        "arch": cfg.arch,
        "img_size": cfg.img_size,
        "class_names": list(splits.class_names),
        "display_names": splits.display_names,
        "mean": list(mean),
        "std": list(std),
        "resize": RESIZE_MODE,
        "resize_filter": RESIZE_FILTER,
        "config": cfg.as_dict(),
        "data_fingerprint": fingerprint_files(splits.root, splits.files()),
        "train_fingerprint": splits.train_fingerprint(),
        "val_fingerprint": splits.val_fingerprint(),
        "model_name": cfg.model_name,
        "model_version": cfg.model_version,
        "trained_on": cfg.trained_on,
        "demo": cfg.demo,
        "versions": {"torch": str(torch.__version__), "timm": str(timm.__version__)},
    }


def _config_for(run_dir: Path) -> bool:
    """Whether run_dir/config.yaml is one a run wrote for this very folder (its ``out``)."""
    import yaml

    try:
        written = yaml.safe_load(read_config(run_dir / "config.yaml"))
        return isinstance(written, dict) and Path(str(written.get("out"))).resolve() == run_dir.resolve()
    # UnicodeDecodeError is a ValueError; ConfigError: a FIFO, or a file far too big to be a config
    except (OSError, ValueError, RecursionError, yaml.YAMLError, ConfigError):
        return False


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    write_atomically(path, yaml.safe_dump(data, sort_keys=False).encode("utf-8"))


def write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    write_atomically(path, text.getvalue().encode("utf-8"))


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _printer(enabled: bool) -> Any:
    from tqdm.auto import tqdm

    def say(line: str) -> None:
        if enabled:
            tqdm.write(line, file=sys.stdout)

    return say
