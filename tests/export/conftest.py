from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from training.synthetic import generate

CLASSES = ["Acne", "Eczema", "Moles"]
TINY_ARCH = "test_efficientnet"
TINY_SIZE = 64
VAL_FRACTION = 0.34


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x (6 train + 4 test) images, 64-112 px, mixed formats."""
    root = tmp_path_factory.mktemp("data")
    return generate(root, class_names=CLASSES, train_per_class=6, test_per_class=4, size_range=(64, 112))


def set_bn_stats(net: Any, files: list[Path], img_size: int) -> Any:
    """Random weights saturate in eval mode unless BatchNorm has seen realistic images: show it some."""
    import torch

    from training.data import EvalDataset
    from training.model import IMAGENET_MEAN, IMAGENET_STD

    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    data = EvalDataset([(f, 0) for f in files], img_size, IMAGENET_MEAN, IMAGENET_STD)
    x = torch.stack([data[i][0] for i in range(len(data))])
    net.train()
    with torch.no_grad():
        for start in range(0, len(x), 8):
            net(x[start : start + 8])
    return net.eval()


def write_checkpoint(
    path: Path,
    *,
    data: Path | None,
    arch: str = TINY_ARCH,
    img_size: int = TINY_SIZE,
    class_names: list[str] | None = None,
    net: Any = None,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """A skin-checkpoint/1 file as training writes it (random weights with BN statistics unless ``net``)."""
    import torch

    from training.model import IMAGENET_MEAN, IMAGENET_STD, build_model, save_checkpoint

    names = class_names or CLASSES
    if net is None:
        torch.manual_seed(seed)
        net = build_model(arch, len(names), drop_rate=0.0)
        if data is not None:
            set_bn_stats(net, sorted((data / "train").glob("*/*"))[:24], img_size)
    meta: dict[str, Any] = {
        "arch": arch,
        "img_size": img_size,
        "class_names": names,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "resize": "stretch",
        "resize_filter": "bilinear",
        "config": {"data": str(data) if data else "", "val_fraction": VAL_FRACTION, "seed": 7},
        "data_fingerprint": "",
        "epoch": 3,
        "model_name": "skin-test",
        "model_version": "0.1",
        "trained_on": "generated images",
        "demo": True,
    }
    meta.update(overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model=net, meta=meta)
    return path


def terminate_self(*args: Any, **kwargs: Any) -> None:
    """Stands in for a CLI's work: a real SIGTERM to this process, as docker stop sends it. Without a handler
    it would end pytest itself: check there is one first."""
    import os
    import signal

    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")
