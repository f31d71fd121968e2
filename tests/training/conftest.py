from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import CLASSES
from training.synthetic import generate


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x (16 train + 6 test) images, 64-128 px, mixed formats."""
    root = tmp_path_factory.mktemp("data")
    return generate(root, class_names=CLASSES, train_per_class=16, test_per_class=6, size_range=(64, 128))
