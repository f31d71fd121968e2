"""What training and export import beyond the standard library, and the line that says what to install.

skin-train, skin-export and skin-demo are installed with the package, also where only the runtime extra is
(the serving image): there a missing module gets this one line instead of a traceback. Standard library only.
"""

# The train and runtime extras' modules, and those they bring that training and export import by name
# (cv2 and scipy come with albumentations, safetensors and huggingface_hub with timm).
# tests/training/test_cli.py checks the list.
NEEDED = frozenset(
    {"torch", "torchvision", "timm", "albumentations", "onnx", "onnxsim", "onnxscript", "sklearn"}
    | {"matplotlib", "tqdm", "yaml", "onnxruntime", "numpy", "PIL"}
    | {"cv2", "scipy", "safetensors", "huggingface_hub"}
)


def missing_module(exc: ModuleNotFoundError) -> str | None:
    """One line naming what to install when ``exc`` is one of training's or export's; None otherwise."""
    name = (exc.name or "").partition(".")[0]
    if name not in NEEDED:
        return None
    need = "training and export need the train and runtime extras"
    return f"{name} is not installed; {need}: pip install -e '.[train,runtime]'"
