"""The one error type of the export package, and the line for a missing dependency."""

# What export imports beyond the standard library. skin-export and skin-demo are installed with the package,
# also where only the runtime extra is (the serving image): there they say what to install.
NEEDED = frozenset(
    {"torch", "torchvision", "timm", "albumentations", "onnx", "onnxsim", "onnxscript", "sklearn"}
    | {"matplotlib", "tqdm", "yaml", "onnxruntime", "numpy", "PIL"}
)


class ExportError(Exception):
    """An export that cannot go on; the message is one line for people."""


def missing_module(exc: ModuleNotFoundError) -> str | None:
    """One line naming what to install when ``exc`` is a dependency of export's; None for anything else."""
    name = (exc.name or "").partition(".")[0]
    if name not in NEEDED:
        return None
    need = "training and export need the train and runtime extras"
    return f"{name} is not installed; {need}: pip install -e '.[train,runtime]'"
