"""skin-train: fine-tune EfficientNet-B3 (or another timm model) on the skin-disease ImageFolder dataset.

Options not given here come from the checkpoint being resumed, then from --config YAML, then the defaults.
Several GPUs or nodes: torchrun --nproc_per_node=N -m training --data ... (one process per GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from runtime.cli import OneLineParser
from training.config import AMP_MODES, DEFAULTS, SAMPLERS, SCHEDULERS
from training.stop import say_stopped, signals_stop, stopped

PROG = "skin-train"


class _Parser(OneLineParser):
    def error(self, message: str) -> NoReturn:
        if not _rank0():  # under torchrun every rank meets the same bad flag: one line, from rank 0
            self.exit(2)
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: only options given on the command line reach train(), so YAML and resume can fill the rest.
    parser = _Parser(
        prog=PROG,
        description=__doc__,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def add(group: Any, flag: str, help: str, **kw: Any) -> None:
        name = flag[2:].replace("-", "_")
        default = getattr(DEFAULTS, name)
        shown = "" if default in ("", None) else f" (default: {default})"
        group.add_argument(flag, help=help + shown, **kw)

    add(parser, "--config", "YAML file of option: value pairs that sets the defaults", metavar="YAML")

    g = parser.add_argument_group("data")
    add(
        g,
        "--data",
        "dataset root holding train/ and test/ (or Train/ and Test/) class folders",
        metavar="ROOT",
    )
    add(g, "--val-fraction", "share of each training class held out for validation", type=float)
    add(g, "--img-size", "input size in pixels (square)", type=int)
    add(g, "--workers", "data loader worker processes per GPU, at most its CPUs", type=int)

    g = parser.add_argument_group("model")
    add(g, "--arch", "timm architecture")
    add(
        g,
        "--pretrained",
        "start from timm's ImageNet weights (on unless --init-weights is given)",
        action=argparse.BooleanOptionalAction,
    )
    add(g, "--init-weights", "start from a local weights file (.pth, .pt or .safetensors)", metavar="PATH")
    add(g, "--drop-rate", "dropout before the classifier", type=float)

    g = parser.add_argument_group("optimisation")
    add(g, "--epochs", "maximum number of epochs", type=int)
    add(g, "--batch-size", "images per step and GPU", type=int)
    add(
        g, "--accum-steps", "gradient accumulation steps (virtual batch = batch size x this x GPUs)", type=int
    )
    add(g, "--lr", "AdamW learning rate of the classifier head", type=float)
    add(g, "--backbone-lr-scale", "backbone learning rate as a fraction of --lr", type=float)
    add(g, "--weight-decay", "AdamW weight decay", type=float)
    add(g, "--label-smoothing", "cross-entropy label smoothing", type=float)
    add(g, "--sampler", "weighted: balance classes; shuffle: plain permutation", choices=SAMPLERS)
    add(
        g,
        "--scheduler",
        "plateau: ReduceLROnPlateau on val loss; cosine: warm-up then cosine",
        choices=SCHEDULERS,
    )
    add(
        g,
        "--plateau-patience",
        "epochs without a better val loss that the lr waits out; it drops after the next one",
        type=int,
    )
    add(g, "--plateau-factor", "lr multiplier on a plateau", type=float)
    add(g, "--warmup-epochs", "linear warm-up length for --scheduler cosine", type=float)
    add(g, "--min-lr", "lower bound of the learning rate", type=float)
    add(g, "--clip-grad", "clip the gradient norm to this (0: off)", type=float)
    add(g, "--early-stop", "stop after this many epochs without a better val macro-F1 (0: off)", type=int)

    g = parser.add_argument_group("augmentation (training only)")
    add(g, "--augment", "augment training images", action=argparse.BooleanOptionalAction)
    add(g, "--hflip", "horizontal flip probability", type=float)
    add(g, "--vflip", "vertical flip probability", type=float)
    add(g, "--rotate", "rotation limit in degrees", type=float)
    add(g, "--rotate-p", "rotation probability", type=float)
    add(g, "--jitter", "brightness / contrast / saturation jitter", type=float)
    add(g, "--jitter-hue", "hue jitter", type=float)
    add(g, "--jitter-p", "colour jitter probability", type=float)
    add(g, "--scale", "affine scale range (1 +- this)", type=float)
    add(g, "--translate", "affine translation as a fraction of the size", type=float)
    add(g, "--affine-p", "affine probability", type=float)

    g = parser.add_argument_group("hardware")
    add(g, "--device", "auto, cpu, cuda or cuda:N (torchrun picks the GPU by LOCAL_RANK)")
    add(
        g,
        "--amp",
        "mixed precision: auto = bf16 where supported, else fp16 with a scaler (CUDA only)",
        choices=AMP_MODES,
    )
    add(
        g,
        "--channels-last",
        "channels-last memory format (on for CUDA)",
        action=argparse.BooleanOptionalAction,
    )
    add(g, "--seed", "random seed (split, sampler, augmentation, initialisation)", type=int)

    g = parser.add_argument_group("output")
    add(g, "--out", "run directory (default: runs/ARCH-TIMESTAMP)", metavar="DIR")
    add(g, "--resume", "continue from a run directory or its last.pt", metavar="PATH")
    add(g, "--overwrite", "reuse a run directory that already holds a run", action="store_true")
    add(g, "--plots", "write PNG plots", action=argparse.BooleanOptionalAction)
    add(g, "--model-name", "model name for the bundle (default: skin-ARCH)")
    add(g, "--model-version", "model version (default: the date and time)")
    add(
        g,
        "--trained-on",
        "free text on the training data, shown on the page (default: the dataset folder's name)",
    )
    add(g, "--demo", "mark the model as a demo (not for real use)", action="store_true")
    add(g, "--mlflow", "log to MLflow (needs the mlflow package)", action="store_true")
    add(g, "--mlflow-experiment", "MLflow experiment name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with signals_stop():  # from here: the imports take seconds, and train() keeps it on
            return _train(args)
    except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM (docker stop, torchrun passing it on) or SIGHUP
        line, status = stopped(stop)
        if _rank0():  # under torchrun every rank stops: one line, from rank 0
            say_stopped(f"{PROG}: {line}")
        return status
    except ModuleNotFoundError as exc:  # where only the runtime extra is installed (the serving image)
        from training.extras import missing_module  # standard library only: no torch in it

        if (install := missing_module(exc)) is None:
            raise
        if _rank0():
            print(f"{PROG}: error: {install}", file=sys.stderr)
        return 2


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun's; a single process has none


def _given(filename: object, args: argparse.Namespace) -> bool:
    """Whether ``filename`` is a path of the command line (--data, --out, --resume, --init-weights) or a
    folder on its way."""
    if not isinstance(filename, str | os.PathLike):
        return False
    path = Path(filename)
    given = [Path(v) for k in ("data", "out", "resume", "init_weights") if (v := getattr(args, k, None))]
    return any(path == p or path in p.parents for p in given)


def _rank_tag() -> str:
    """For an error one rank meets alone: which rank says it (nothing on rank 0)."""
    return "" if _rank0() else f" (rank {os.environ['RANK']})"


def _train(args: argparse.Namespace) -> int:
    # Heavy imports only now, so --help stays quick.
    import torch

    from training.config import ConfigError
    from training.data import DataError
    from training.files import RunNotSaved
    from training.loop import train
    from training.model import ModelError

    try:
        train(**vars(args))
    except (ConfigError, DataError, ModelError) as exc:  # the same on every rank: said once, by rank 0
        if _rank0():
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:  # a batch (or image size) too large for the GPU: each rank says its own
        print(
            f"{PROG}: error{_rank_tag()}: out of GPU memory: lower --batch-size or --img-size "
            "(--resume takes another --batch-size)",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:  # an --out that cannot be written (read-only, no space), a path too long
        # A path named on the command line fails alike on every rank: rank 0 says it. Any other file may be
        # one node's own (an image missing from its disk): each rank says its own, naming itself.
        if _rank0() or not _given(exc.filename, args):
            line = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
            if isinstance(exc, RunNotSaved):  # what a full disk or a read-only folder left: how to go on
                line += f"; {exc.then()}"
            print(f"{PROG}: error{_rank_tag()}: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
