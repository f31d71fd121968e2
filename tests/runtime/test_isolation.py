"""The runtime must stay torch-free: it ships in a small CPU image without torch, timm or albumentations."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"


def test_importing_the_app_loads_no_training_stack() -> None:
    code = (
        "import sys, runtime.app, runtime.cli, runtime.engine, runtime.preprocess;"
        "bad = [m for m in ('torch', 'timm', 'albumentations', 'torchvision', 'cv2', 'training', 'export')"
        " if m in sys.modules];"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=RUNTIME.parent
    )
    assert out.stdout.strip() == ""


def test_runtime_sources_import_nothing_of_ours_outside_runtime() -> None:
    forbidden = {"torch", "torchvision", "timm", "albumentations", "training", "export", "cv2", "onnx"}
    for path in RUNTIME.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not forbidden & set(names), f"{path.name} imports {names}"


def test_bundle_contract_is_stdlib_only() -> None:
    tree = ast.parse((RUNTIME / "bundle.py").read_text())
    modules = {
        (n.module or "").split(".")[0] if isinstance(n, ast.ImportFrom) else a.name.split(".")[0]
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in (n.names if isinstance(n, ast.Import) else [n])  # type: ignore[attr-defined]
    }
    assert modules <= set(sys.stdlib_module_names) | {"__future__"}, modules
