"""skin-export CHECKPOINT --out BUNDLE_DIR: turn a training checkpoint into the bundle the runtime serves."""

from __future__ import annotations

import argparse
import shlex
import sys

from runtime.cli import OneLineParser
from training.stop import how, say_stopped, signals_stop


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="skin-export",
        description="Export a training checkpoint to a served bundle: one simplified ONNX graph "
        "(uint8 image in; probabilities, CAM, logits and an out-of-distribution score out) with calibration, "
        "verified parity and a report.",
    )
    parser.add_argument("checkpoint", help="checkpoint written by skin-train (e.g. runs/x/best.pt)")
    parser.add_argument("--out", required=True, help="bundle directory to write")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--data",
        help="dataset root with train/ and test/ (default: the one in the checkpoint's config); the "
        "validation split is rebuilt from the checkpoint's seed and val fraction",
    )
    data.add_argument(
        "--no-data",
        action="store_true",
        help="export without the dataset: no confidence or out-of-distribution flags on predictions, "
        "temperature 1, parity on generated images, no int8",
    )
    parser.add_argument(
        "--report", help="training report.json to extend (default: report.json next to the checkpoint)"
    )
    parser.add_argument(
        "--parity-images", type=int, default=16, help="images compared with torch, at most 1000 (default: 16)"
    )
    parser.add_argument(
        "--int8",
        choices=("auto", "off"),
        default="auto",
        help="auto: try static int8 and ship it only if it agrees and is faster (default); off: skip",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or newer (default: 18)")
    parser.add_argument(
        "--target-precision",
        type=float,
        default=0.9,
        help="predictions below the confidence threshold are marked low; the threshold is set on the "
        "validation split so that the rest reach this precision (default: 0.9)",
    )
    parser.add_argument(
        "--ood-acceptance",
        type=float,
        default=0.95,
        help="share of in-distribution images the out-of-distribution threshold lets through, set on the "
        "validation split (default: 0.95)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    parser.add_argument("--quiet", action="store_true", help="print only errors")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        with signals_stop():  # docker stop: the staging folder goes, as on Ctrl-C
            return _export(args)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: export_bundle() removed what it had written
        line, status = how(stop)
        say_stopped(f"skin-export: {line}; nothing was written")
        return status


def _export(args: argparse.Namespace) -> int:
    from export.errors import ExportError
    from training.extras import missing_module

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        from export.bundle import export_bundle

        export_bundle(
            args.checkpoint,
            args.out,
            data=args.data,
            no_data=args.no_data,
            report=args.report,
            parity_images=args.parity_images,
            int8=args.int8,
            opset=args.opset,
            target_precision=args.target_precision,
            ood_acceptance=args.ood_acceptance,
            overwrite=args.overwrite,
            log=say,
        )
    except ExportError as exc:
        print(f"skin-export: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # skin-export where only the runtime extra is installed
        if (line := missing_module(exc)) is None:
            raise
        print(f"skin-export: error: {line}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, no permission: nothing half-written stays behind
        print(f"skin-export: error: {exc.strerror or exc}: {exc.filename or args.out}", file=sys.stderr)
        return 2
    say(f"serve it: skin-serve --bundle {shlex.quote(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
