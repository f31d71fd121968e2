"""The exported CAM points at the evidence: a tiny CNN learns classes whose pattern sits at a random place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export.bundle import export_bundle
from runtime.bundle import cam_extent
from runtime.preprocess import preprocess
from tests.export.conftest import write_checkpoint
from training.synthetic import generate

CLASSES = ["Acne", "Eczema", "Moles", "Warts"]
SIZE = 256  # the tiny net has stride 32: an 8x8 map


def train_tiny(root: Path, epochs: int = 8) -> object:
    import torch

    from training.data import EvalDataset, load_splits
    from training.model import IMAGENET_MEAN, IMAGENET_STD, build_model

    torch.manual_seed(0)
    splits = load_splits(root, val_fraction=0.2, seed=7)
    data = EvalDataset(splits.train, SIZE, IMAGENET_MEAN, IMAGENET_STD)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.tensor([label for _, label in splits.train])
    net = build_model("test_efficientnet", len(CLASSES), drop_rate=0.0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(16):
            batch = x[idx].flip(3) if torch.rand(()) < 0.5 else x[idx]
            loss = torch.nn.functional.cross_entropy(net(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.mark.slow
def test_cam_peak_of_the_true_class_falls_inside_the_planted_pattern(tmp_path: Path) -> None:
    from runtime.engine import Engine

    root = generate(
        tmp_path / "data", class_names=CLASSES, train_per_class=30, test_per_class=10, size_range=(224, 288)
    )
    net = train_tiny(root)
    checkpoint = write_checkpoint(
        tmp_path / "best.pt",
        data=root,
        img_size=SIZE,
        class_names=CLASSES,
        net=net,
        config={"data": str(root), "val_fraction": 0.2, "seed": 7},
    )
    engine = Engine(export_bundle(checkpoint, tmp_path / "bundle", int8="off", parity_images=4))
    boxes = json.loads((root / "boxes.json").read_text())
    tests = sorted((root / "test").glob("*/*"))
    out = engine.run(np.stack([preprocess(p, (SIZE, SIZE)) for p in tests]))
    assert out.cam is not None and out.cam.shape == (len(tests), len(CLASSES), 8, 8)

    # Where the bundle says the cells lie (export/cam.py traced them): the net pads symmetrically, so cell c
    # is centred on input pixel 32 c, not 32 c + 16 as an even division would put it.
    extent = cam_extent(engine.meta, 8, 8)
    assert extent["left"] == pytest.approx(-15.5 / SIZE, abs=1e-6) and extent["width"] == pytest.approx(1.0)
    hits, correct, placed, even = 0, 0, [], []
    for i, path in enumerate(tests):
        label = CLASSES.index(path.parent.name)
        correct += int(out.probabilities[i].argmax() == label)
        cam = out.cam[i, label]
        row, col = np.unravel_index(cam.argmax(), cam.shape)
        # The stretch resize maps the image onto the square input: cell centre → original pixel.
        with Image.open(path) as img:
            width, height = img.size
        x = (extent["left"] + (col + 0.5) * extent["width"] / cam.shape[1]) * width
        y = (extent["top"] + (row + 0.5) * extent["height"] / cam.shape[0]) * height
        x0, y0, x1, y1 = boxes[path.relative_to(root).as_posix()]
        hits += int(x0 <= x < x1 and y0 <= y < y1)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        placed.append(np.hypot((x - cx) / width, (y - cy) / height))
        ex, ey = (col + 0.5) / cam.shape[1] * width, (row + 0.5) / cam.shape[0] * height
        even.append(np.hypot((ex - cx) / width, (ey - cy) / height))
    assert correct / len(tests) >= 0.9
    assert hits / len(tests) >= 0.9, f"CAM peak inside the pattern for {hits} of {len(tests)} images"
    # The traced placement puts the peak nearer the pattern's centre than an even spread of the cells does.
    assert np.mean(placed) < np.mean(even), (np.mean(placed), np.mean(even))
