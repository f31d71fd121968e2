"""skin-demo: the whole pipeline on generated images — dataset → training → export → serving.

The demo model is the production architecture (EfficientNet-B3 at 300 px) trained from scratch on CPU on a
small generated dataset. It is labelled everywhere as a demo trained on generated images, not clinical data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.stop import how, say_stopped, signals_stop

DEMO_LABEL = "a demo trained on generated images, not on clinical data"
DEFAULT_BUNDLE_DIR = Path("bundles") / "demo"
DEFAULT_WORK_DIR = Path("runs") / "demo"
# Sized so that set-up plus demo take about 10 minutes on 2 cores: B3 at 300 px trains at ~0.4-0.5 s per
# image on such a CPU (fp32 or bf16 alike), so ~660 image-steps. Small batches give more optimizer steps for
# the same time, which is what a from-scratch network needs most (measured: 4 epochs reach 25 % test accuracy
# in 9 minutes, 3 epochs 22 % in about 7; lr 1e-2 instead of 3e-3 does not learn).
TRAIN_PER_CLASS, TEST_PER_CLASS, EPOCHS, BATCH_SIZE = 12, 6, 3, 8
# The most each size flag takes (images per class: training.synthetic's): a step holds its batch's
# activations (B3 at 300 px, from scratch on the CPU), and an epoch at the most images takes hours already.
MAX_EPOCHS, MAX_BATCH_SIZE = 100, 64
PATCH_RANGE = (0.45, 0.8)  # bigger class patches than the tests' default: more signal per image
# Written into the data and run folders the demo makes: only such folders does it ever delete or train over.
MARKER = ".skin-demo"


class StepError(Exception):
    """A pipeline step failed; the message names the step and the reason in one line."""


class DemoError(Exception):
    """Arguments or folders the demo cannot use, found before any work; the message is one line."""


def build_parser() -> argparse.ArgumentParser:
    from runtime.cli import OneLineParser

    parser = OneLineParser(
        prog="skin-demo",
        description=f"Build a demo model through the real pipeline ({DEMO_LABEL}), then serve the web page.",
    )
    parser.add_argument(
        "--bundle-dir", default=str(DEFAULT_BUNDLE_DIR), help="where the bundle goes (default %(default)s)"
    )
    parser.add_argument(
        "--work-dir", default=str(DEFAULT_WORK_DIR), help="generated data and the run (default %(default)s)"
    )
    parser.add_argument("--no-serve", action="store_true", help="build (or reuse) the bundle and exit")
    parser.add_argument(
        "--rebuild", action="store_true", help="retrain and re-export even if a bundle exists"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (default %(default)s)")
    size = parser.add_argument_group("size of the demo (defaults finish in about 5-7 minutes on 2 cores)")
    size.add_argument("--arch", default="efficientnet_b3", help="timm architecture (default %(default)s)")
    size.add_argument("--img-size", type=int, default=300, help="input size in pixels (default %(default)s)")
    size.add_argument(
        "--train-per-class",
        type=int,
        default=TRAIN_PER_CLASS,
        help="generated training images per class (default %(default)s)",
    )
    size.add_argument(
        "--test-per-class",
        type=int,
        default=TEST_PER_CLASS,
        help="generated test images per class (default %(default)s)",
    )
    size.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (default %(default)s)")
    size.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="batch size (default %(default)s)")
    size.add_argument("--seed", type=int, default=0, help="data and training seed (default %(default)s)")
    return parser


def build(
    *,
    bundle_dir: str | Path = DEFAULT_BUNDLE_DIR,
    work_dir: str | Path = DEFAULT_WORK_DIR,
    rebuild: bool = False,
    arch: str = "efficientnet_b3",
    img_size: int = 300,
    train_per_class: int = TRAIN_PER_CLASS,
    test_per_class: int = TEST_PER_CLASS,
    epochs: int = EPOCHS,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    class_names: list[str] | None = None,
    log: Any = print,
) -> Path:
    """Generate → train → export; returns the bundle directory (reused when it is already there and valid).

    Everything that can be checked cheaply is checked first (DemoError): no data is generated, and nothing
    of anyone else's is deleted or trained over, for a run that could not finish."""
    bundle_dir, work_dir = Path(bundle_dir), Path(work_dir)
    data, run = work_dir / "data", work_dir / "run"
    options = {
        "amp": "off",  # fp32: bf16 autocast measured no faster for B3 training on this CPU (AMX, 2 cores)
        "data": str(data),
        "out": str(run),
        "overwrite": True,  # only ever the demo's own earlier run (_check_folders)
        "arch": arch,
        "img_size": img_size,
        "pretrained": False,
        "epochs": epochs,
        "batch_size": batch_size,
        "accum_steps": 1,
        "workers": 0,
        "lr": 3e-3,
        "backbone_lr_scale": 1.0,  # from scratch: the backbone has nothing to preserve
        "drop_rate": 0.0,  # a few hundred steps: dropout only slows learning
        # Colour is part of each generated class's look and hues sit ~16° apart: hue jitter would blur
        # the classes into each other (measured: 81 % → 89 % test accuracy without it on a small model).
        "jitter_p": 0.0,
        "early_stop": 0,
        "scheduler": "cosine",
        "sampler": "shuffle",  # the generated classes are balanced: every image once per epoch
        "warmup_epochs": 0.5,
        "seed": seed,
        "model_name": f"skin-demo-{arch}",
        "model_version": time.strftime("demo-%Y.%m.%d"),
        "trained_on": f"{DEMO_LABEL} ({len(class_names or []) or 22} classes of generated patterns)",
        "demo": True,
    }
    _check_options(options, train_per_class=train_per_class, test_per_class=test_per_class)
    if not rebuild and _usable(bundle_dir):
        log(f"reusing the demo bundle in {bundle_dir} (pass --rebuild to train it again)")
        return bundle_dir
    _check_folders(bundle_dir, work_dir)
    _check_arch(arch)
    started = time.monotonic()

    with _step("generate data", log):
        from training import synthetic

        if data.exists():  # the demo's own earlier data (_check_folders)
            import shutil

            shutil.rmtree(data)
        data.mkdir(parents=True)
        (data / MARKER).write_text("generated by skin-demo, which replaces this folder on its next build\n")
        synthetic.generate(
            data,
            class_names=class_names,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            seed=seed,
            patch_range=PATCH_RANGE,
        )

    with _step(f"train {arch} at {img_size} px on generated images", log):
        from training.loop import train

        run.mkdir(parents=True, exist_ok=True)
        (run / MARKER).write_text("trained by skin-demo, which trains over this folder on its next build\n")
        train(**options)

    with _step("export the ONNX bundle", log):
        from export.bundle import export_bundle

        export_bundle(run / "best.pt", bundle_dir, data=data, overwrite=True, int8="off", log=log)
        _label_report(bundle_dir)

    report = json.loads((bundle_dir / "report.json").read_text())
    log(
        f"demo model built in {time.monotonic() - started:.0f} s: test accuracy "
        f"{report['accuracy']:.1%}, macro F1 {report['macro avg']['f1-score']:.1%} "
        f"on {report['macro avg']['support']:.0f} generated test images ({DEMO_LABEL})"
    )
    chance = _chance(report)
    if report["accuracy"] < 2 * chance:  # "clearly above chance" is the demo's promise: say when it is not
        log(
            f"warning: the demo model reached only {report['accuracy']:.1%} (chance {chance:.1%}); "
            "rebuild with more epochs (--epochs) or images (--train-per-class)"
        )
    flags = report.get("uncertainty", {}).get("summary")
    if flags:
        log(
            f"uncertainty: {flags['test_in_distribution_accepted']:.0%} of generated test images accepted "
            f"as in distribution, {flags['foreign_flagged']:.0%} of generated foreign images (text, solid "
            "colours, gradients, grey textures, clip art) flagged as unlike the training images"
            + (
                f" ({flags['foreign_held_out_flagged']:.0%} of the kinds the score was not chosen on)"
                if flags.get("foreign_held_out_flagged") is not None
                else ""
            )
        )
    return bundle_dir


def _check_options(options: dict[str, Any], *, train_per_class: int, test_per_class: int) -> None:
    """The training options as training itself checks them, and the image counts export needs."""
    from training.config import ConfigError, resolve
    from training.synthetic import MAX_PER_CLASS

    if train_per_class < 2:  # one image of each class is held out for validation
        raise DemoError(f"--train-per-class must be at least 2, not {train_per_class}")
    if test_per_class < 1:
        raise DemoError(f"--test-per-class must be at least 1, not {test_per_class}")
    for flag, value, most in (
        ("--train-per-class", train_per_class, MAX_PER_CLASS),
        ("--test-per-class", test_per_class, MAX_PER_CLASS),
        ("--epochs", options["epochs"], MAX_EPOCHS),
        ("--batch-size", options["batch_size"], MAX_BATCH_SIZE),
    ):
        if value > most:
            raise DemoError(f"{flag} must be at most {most}, not {value}")
    try:
        resolve(options)
    except ConfigError as exc:
        raise DemoError(str(exc)) from None


def _check_folders(bundle_dir: Path, work_dir: Path) -> None:
    """Folders the demo can write, and will not take from anyone: it deletes work_dir/data and trains over
    work_dir/run only when it made them (they hold MARKER) or they are empty."""
    from export.errors import ExportError
    from export.place import check_replaceable

    # Export builds the bundle beside it and renames it into place: the bundle's parent must take new entries.
    for flag, folder, writes_in in (
        ("--bundle-dir", bundle_dir, bundle_dir.parent),
        ("--work-dir", work_dir, work_dir),
    ):
        if folder.exists() and not folder.is_dir():
            raise DemoError(f"{flag} {str(folder)!r} is a file, not a folder")
        existing = next(p for p in (writes_in, *writes_in.parents) if p.exists())
        if not existing.is_dir():
            raise DemoError(f"{flag} {str(folder)!r} cannot be made: {str(existing)!r} is a file")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise DemoError(f"{flag} {str(folder)!r}: cannot write in {str(existing)!r} (permission denied)")
    for folder in (work_dir / "data", work_dir / "run"):
        mine, bundle = folder.resolve(), bundle_dir.resolve()
        if mine.is_relative_to(bundle) or bundle.is_relative_to(mine):
            raise DemoError(f"--bundle-dir {str(bundle_dir)!r} and {str(folder)!r} must not overlap")
        if folder.exists() and not folder.is_dir():
            raise DemoError(f"{str(folder)!r} is a file; the demo needs that name for a folder")
        if folder.is_dir() and not _made_by_demo(folder, work_dir) and any(folder.iterdir()):
            raise DemoError(
                f"{str(folder)!r} was not made by skin-demo (no {MARKER} file in it) and the demo would "
                "replace it; move it away or pass another --work-dir"
            )
    if bundle_dir.is_dir():
        try:
            check_replaceable(bundle_dir, work_dir / "run" / "best.pt")
        except ExportError as exc:
            raise DemoError(f"--bundle-dir: {exc}") from None


def _made_by_demo(folder: Path, work_dir: Path) -> bool:
    """MARKER, or, from a demo older than MARKER, the run's config.yaml: a demo run (``demo: true``) written
    to work_dir/run from work_dir/data."""
    if (folder / MARKER).is_file():
        return True
    import yaml

    from training.config import ConfigError, read_config

    run = work_dir / "run"
    try:
        config = yaml.safe_load(read_config(run / "config.yaml"))
    except (OSError, ValueError, RecursionError, yaml.YAMLError, ConfigError):  # Recursion: nested too deeply
        return False
    if not isinstance(config, dict) or config.get("demo") is not True:
        return False
    wrote = {Path(str(config.get(key))).resolve() for key in ("out", "data")}
    return wrote == {run.resolve(), (work_dir / "data").resolve()} and folder.resolve() in wrote


def _check_arch(arch: str) -> None:
    from training.model import known_arch  # a few seconds: worth it before generating and training

    if not known_arch(arch):
        raise DemoError(f"--arch {arch!r} is not a timm model name")


def _usable(bundle_dir: Path) -> bool:
    if not (bundle_dir / "model.onnx").is_file():
        return False
    from runtime.bundle import BundleError
    from runtime.engine import Engine

    try:
        Engine(bundle_dir, threads=1)
    except BundleError:
        return False
    return True


def _label_report(bundle_dir: Path) -> None:
    from training.files import write_atomically

    path = bundle_dir / "report.json"
    report = json.loads(path.read_text())
    chance = _chance(report)
    report["demo_note"] = (
        f"This is {DEMO_LABEL}. Test accuracy {report['accuracy']:.1%} on generated images "
        f"(chance is {chance:.1%}); it says nothing about skin disease."
    )
    # Whole or not at all: cut off by a full disk, it would break the bundle just exported.
    write_atomically(path, json.dumps(report, indent=2).encode("utf-8"))


def _chance(report: dict[str, Any]) -> float:
    return 1 / max(1, len(report.get("class_names") or []))


@contextlib.contextmanager
def _step(name: str, log: Any) -> Iterator[None]:
    """Print a step's start and duration; turn any failure into StepError naming the step."""
    log(f"==> {name} …")
    started = time.monotonic()
    try:
        yield
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, OSError) and exc.strerror:  # "No space left on device: path", not "[Errno 28] …"
            reason = f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
        raise StepError(f"step '{name}' failed: {reason}") from exc
    log(f"    done in {time.monotonic() - started:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.no_serve:  # say so now, not after training
            _check_serving(args.host, args.port, Path(args.bundle_dir))
        with signals_stop():  # docker stop while building: each step cleans up as on Ctrl-C
            bundle_dir = build(
                bundle_dir=args.bundle_dir,
                work_dir=args.work_dir,
                rebuild=args.rebuild,
                arch=args.arch,
                img_size=args.img_size,
                train_per_class=args.train_per_class,
                test_per_class=args.test_per_class,
                epochs=args.epochs,
                batch_size=args.batch_size,
                seed=args.seed,
            )
    except DemoError as exc:
        print(f"skin-demo: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the checks' first look at a folder that may not be searched, or a name too long
        where = f": {exc.filename}" if exc.filename else ""
        print(f"skin-demo: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except StepError as exc:
        print(f"skin-demo: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # skin-demo where only the runtime extra is installed
        from training.extras import missing_module

        if (line := missing_module(exc)) is None:
            raise
        print(f"skin-demo: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        line, status = how(stop)
        say_stopped(f"skin-demo: {line}")
        return status
    if (hint := bf16_hint(bundle_dir)) is not None:
        print(hint)
    if args.no_serve:
        print(f"skin-demo: bundle ready in {bundle_dir}")
        return 0
    from runtime.bundle import BundleError
    from runtime.cli import serve

    print(f"skin-demo: open http://{args.host}:{args.port}/ — the model is {DEMO_LABEL}.", flush=True)
    try:  # serve() rather than skin-serve's main(): its reason and ours in one line, not two
        serve(bundle=str(bundle_dir), host=args.host, port=args.port)
    except (BundleError, ValueError) as exc:
        print(f"skin-demo: step 'serve' failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def bf16_hint(bundle_dir: Path) -> str | None:
    """One line when this model may be served faster here: export measured bf16 safe on it, this CPU has bf16
    units and OpenVINO is installed, but SKIN_OPENVINO is not set (the demo passes the environment on)."""
    if os.environ.get("SKIN_OPENVINO", "").strip():
        return None
    from runtime.bf16 import choose

    mode, why = choose(bundle_dir)
    return f"skin-demo: SKIN_OPENVINO=auto make demo would serve {why}" if mode == "bf16" else None


def _check_serving(host: str, port: int, bundle_dir: Path) -> None:
    """What skin-serve checks first (the port, the SKIN_* settings), as StepError naming 'serve'."""
    from runtime.cli import preflight

    try:
        preflight(host, port, str(bundle_dir))
    except ValueError as exc:
        raise StepError(f"step 'serve' failed: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
