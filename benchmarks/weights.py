"""The benchmark's model: EfficientNet-B3 at 300 px with 22 classes, random weights, through the real export.

Speed does not depend on the weights' values, but agreement between runtimes (fp32 vs int8, say) does, and a
randomly initialised network is a poor stand-in for a trained one: its signal grows through 26 residual
blocks (some images reach activations 50x others'), and in eval mode one class wins every image. So:
residual branches start small (their last BatchNorm gain x RESIDUAL_GAIN, as zero-init-last-BN training
starts, and as trained EfficientNets end up), BatchNorm statistics come from train-mode passes over generated
images, and the head is a linear probe fitted on those images' features, so that predictions differ from
image to image. Top-1 agreement on such a model is still a harder test than on a trained one: its class
margins are small.

    python -m benchmarks.weights --work runs/bench   # writes model.pt and bundle/ (cached)
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.bundle import DISPLAY_NAMES
from runtime.cli import OneLineParser

ARCH = "efficientnet_b3"
IMG_SIZE = 300
CLASS_NAMES = sorted(DISPLAY_NAMES)  # the 22 classes of the reference data set
BN_IMAGES = 64
BN_BATCH = 16
RESIDUAL_GAIN = 0.2


def make_checkpoint(path: str | Path, *, arch: str = ARCH, img_size: int = IMG_SIZE, seed: int = 0) -> Path:
    """Write a random-weight checkpoint in training's format, with BatchNorm statistics from real passes."""
    import torch

    from runtime.bundle import display_names
    from runtime.preprocess import preprocess
    from training.model import IMAGENET_MEAN, IMAGENET_STD, build_model, save_checkpoint
    from training.synthetic import generate

    torch.manual_seed(seed)
    net = build_model(arch, len(CLASS_NAMES), drop_rate=0.0)
    for block in net.modules():
        if getattr(block, "has_skip", False):  # timm's residual blocks: bn3 (inverted residual) or bn2 (DS)
            last = getattr(block, "bn3", None) or block.bn2
            last.weight.data.mul_(RESIDUAL_GAIN)
    per_class = -(-BN_IMAGES // len(CLASS_NAMES))
    with tempfile.TemporaryDirectory(prefix="skin-bench-bn-") as scratch:
        root = generate(
            Path(scratch), class_names=CLASS_NAMES, train_per_class=per_class, test_per_class=0, seed=seed
        )
        files = sorted((root / "train").glob("*/*"))
        pixels = np.stack([preprocess(f, (img_size, img_size)) for f in files])
    labels = np.array([CLASS_NAMES.index(f.parent.name) for f in files])
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x_all = (torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255 - mean) / std
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over all passes
    net.train()
    with torch.no_grad():
        for start in range(0, len(x_all), BN_BATCH):
            net(x_all[start : start + BN_BATCH])
    net.eval()
    _fit_head(net, x_all, labels)
    meta = {
        "arch": arch,
        "img_size": img_size,
        "class_names": CLASS_NAMES,
        "display_names": display_names(CLASS_NAMES),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "resize": "stretch",
        "resize_filter": "bilinear",
        "config": {},
        "data_fingerprint": "",
        "model_name": f"bench-{arch}",
        "model_version": "random-weights",
        "trained_on": "nothing (benchmark weights: random, BatchNorm statistics from generated images)",
        "demo": False,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model=net, meta=meta, epoch=0)
    return path


def _fit_head(net: Any, x: Any, labels: np.ndarray) -> None:
    """A linear probe on the random features: predictions then differ between images, as a trained
    model's do, so top-1 agreement between runtimes measures something."""
    import torch
    from sklearn.linear_model import LogisticRegression

    with torch.no_grad():
        features = torch.cat(
            [
                net.forward_head(net.forward_features(x[i : i + BN_BATCH]), pre_logits=True)
                for i in range(0, len(x), BN_BATCH)
            ]
        ).numpy()
    probe = LogisticRegression(C=10.0, max_iter=5000).fit(features, labels)
    head = net.get_classifier()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.coef_).float())
        head.bias.copy_(torch.from_numpy(probe.intercept_).float())


def prepare(work: str | Path, *, log: Callable[[str], None] = print) -> tuple[Path, Path]:
    """``WORK/model.pt`` and ``WORK/bundle`` (exported with the project's exporter), made once and reused.
    A reused file that cannot be loaded is an error (ModelError, BundleError), not remade: remaking takes
    minutes, and the file may be one someone put there."""
    from benchmarks.run import check_out
    from runtime.bundle import BundleError
    from runtime.engine import Engine
    from training.model import ModelError, load_checkpoint

    work = Path(work)
    check_out(work, "--work")  # one line now, not an OSError after minutes of making the model
    work.mkdir(parents=True, exist_ok=True)
    checkpoint, bundle_dir = work / "model.pt", work / "bundle"
    again = "delete it and run again to make it anew"
    if checkpoint.is_file():
        try:
            load_checkpoint(checkpoint)
        except ModelError as exc:
            raise ModelError(f"cached {exc}; {again}") from None
    else:
        log(f"making a random-weight {ARCH} checkpoint at {checkpoint}")
        make_checkpoint(checkpoint)
    if (bundle_dir / "model.onnx").is_file():
        try:  # opened as the runtime opens it
            Engine(bundle_dir, threads=1)
        except BundleError as exc:
            raise BundleError(f"cached bundle {bundle_dir}: {exc}; {again}") from None
    else:
        from export.bundle import export_bundle  # only when exporting: the exporter's imports are heavy

        log(f"exporting it to {bundle_dir}")
        export_bundle(checkpoint, bundle_dir, no_data=True, int8="off", overwrite=True, log=log)
    return checkpoint, bundle_dir


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m benchmarks.weights",
        description="Make the benchmark's random-weight EfficientNet-B3 checkpoint and export its bundle.",
    )
    parser.add_argument("--work", default="runs/bench", help="folder for model.pt and bundle/ (runs/bench)")
    args = parser.parse_args(argv)
    from benchmarks.run import run_cli  # its one-line errors, and Ctrl-C and SIGTERM, as the others have them

    return run_cli("benchmarks.weights", lambda log: print(*prepare(args.work, log=log), sep="\n"))


if __name__ == "__main__":
    raise SystemExit(main())
