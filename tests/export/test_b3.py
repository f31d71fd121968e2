"""The production architecture: EfficientNet-B3 at 300 px exports, loads in the runtime and keeps parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.bundle import export_bundle
from runtime import bundle
from runtime.preprocess import preprocess
from tests.export.conftest import set_bn_stats, write_checkpoint
from training.synthetic import generate

CLASSES = ["Acne", "Eczema", "Moles"]


@pytest.mark.slow
def test_efficientnet_b3_bundle_serves_and_matches_torch(tmp_path: Path) -> None:
    import torch

    from runtime.engine import Engine
    from training.data import EvalDataset
    from training.model import IMAGENET_MEAN, IMAGENET_STD, build_model

    root = generate(tmp_path / "data", class_names=CLASSES, train_per_class=6, test_per_class=2)
    torch.manual_seed(0)
    net = build_model("efficientnet_b3", len(CLASSES), drop_rate=0.0)
    set_bn_stats(net, sorted((root / "train").glob("*/*"))[:8], 300)
    # timm's head init gives logits in the hundreds on 1536 features; a trained head is far smaller.
    torch.nn.init.normal_(net.classifier.weight, std=0.02)
    checkpoint = write_checkpoint(
        tmp_path / "run" / "best.pt",
        data=root,
        arch="efficientnet_b3",
        img_size=300,
        class_names=CLASSES,
        net=net,
    )
    out = export_bundle(checkpoint, tmp_path / "bundle", int8="off", parity_images=6)

    report = json.loads((out / bundle.REPORT_FILE).read_text())
    assert report["parity"]["n"] == 6
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["parity"]["top1_agree"] == 1.0
    engine = Engine(out)
    assert engine.meta.architecture == "efficientnet_b3" and engine.meta.input_size == (300, 300)

    # Our own parity check, not the exporter's: runtime preprocessing + engine vs EvalDataset + torch.
    files = sorted((root / "test").glob("*/*"))
    got = engine.run(np.stack([preprocess(p, (300, 300)) for p in files]))
    data = EvalDataset([(p, 0) for p in files], 300, IMAGENET_MEAN, IMAGENET_STD)
    with torch.no_grad():
        logits = net(torch.stack([data[i][0] for i in range(len(data))]))
    expected = torch.softmax(logits / engine.meta.temperature, dim=1).numpy()
    assert expected.max() < 0.999  # not saturated, so the comparison means something
    assert np.abs(got.probabilities - expected).max() <= 1e-4
    assert (got.probabilities.argmax(1) == expected.argmax(1)).all()
    assert got.cam is not None and got.cam.shape == (len(files), len(CLASSES), 10, 10)
