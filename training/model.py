"""Model construction and the checkpoint format (a self-describing dict, loadable with weights_only=True)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from training.config import first_line
from training.files import atomic_file, not_a_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "skin-checkpoint/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_CONNECT_TIMEOUT_S = 5.0


class ModelError(Exception):
    """A model or checkpoint that cannot be used; the message is one line for people."""


def known_arch(arch: str) -> bool:
    """Whether timm can build ``arch`` (importing timm takes a few seconds)."""
    import timm

    return arch in timm.list_models()


def build_model(
    arch: str = "efficientnet_b3",
    num_classes: int = 22,
    *,
    pretrained: bool = False,
    init_weights: str | Path | None = None,
    drop_rate: float = 0.3,
) -> Any:
    """A timm classifier. ImageNet weights come from timm's hub (``pretrained``) or a local file."""
    import timm
    import torch

    if not known_arch(arch):
        raise ModelError(f"unknown architecture {arch!r} (not a timm model name)")
    if pretrained and init_weights:
        raise ModelError("use either --pretrained or --init-weights, not both")
    unreachable = _hub_unreachable() if pretrained else None
    try:
        with _hub_cache_only(unreachable is not None):
            model = timm.create_model(
                arch, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate
            )
    except Exception as exc:
        if pretrained:
            why = f"{unreachable} cannot be reached" if unreachable else type(exc).__name__
            raise ModelError(
                f"could not download ImageNet weights for {arch} ({why}); "
                "connect to the hub for --pretrained, pass --init-weights PATH to a local weights file, or "
                "--no-pretrained to start from random weights (far weaker on a small dataset)"
            ) from None
        raise
    if init_weights:
        path = Path(init_weights)
        if path.is_dir():
            raise ModelError(
                f"--init-weights {str(path)!r} is a folder; pass the weights file in it (.pth, .pt or "
                ".safetensors)"
            )
        if not path.is_file():
            raise ModelError(
                f"--init-weights file {str(path)!r} {not_a_file(path)}; pass a local weights file "
                "or use --pretrained when the hub is reachable"
            )
        try:
            state = _load_weights_file(path, torch)
        except Exception as exc:
            raise ModelError(f"could not read weights from {str(path)!r}: {type(exc).__name__}") from None
        # The classifier head has another class count: keep the backbone, leave the head fresh.
        pretrained_cfg: dict[str, Any] = getattr(model, "pretrained_cfg", {})  # a plain dict on timm models
        classifier = pretrained_cfg.get("classifier", "classifier")
        # A distilled arch (deit_*_distilled) has two heads, named as a tuple: both start fresh.
        names = classifier if isinstance(classifier, tuple | list) else (classifier,)
        heads = tuple(f"{name}." for name in names)
        own = model.state_dict()
        usable = {
            k: v for k, v in state.items() if k in own and not k.startswith(heads) and own[k].shape == v.shape
        }
        # Another architecture's weights fit a few tensors by chance (BatchNorm's step counters always do):
        # most of the backbone must come from the file, and what stays random is said, never silent.
        backbone = [k for k in own if not k.startswith(heads) and not k.endswith("num_batches_tracked")]
        missing = [k for k in backbone if k not in usable]
        if 2 * len(missing) > len(backbone):
            raise ModelError(
                f"weights in {str(path)!r} do not fit {arch}: {len(missing)} of its {len(backbone)} backbone "
                f"tensors are missing or shaped otherwise (the first: {missing[0]}); are they {arch}'s?"
            )
        if missing:
            log.warning(
                "--init-weights: %d of %d backbone tensors of %s are not in %s or have another shape "
                "(the first: %s); they start random",
                len(missing),
                len(backbone),
                arch,
                path,
                missing[0],
            )
        model.load_state_dict(usable, strict=False)
    return model


def _hub_unreachable() -> str | None:
    """The weights hub's address when no connection to it opens (no network, a firewall), else None. Offline,
    huggingface_hub retried each weights file for half a minute, a warning a try, before failing. Not tried
    where a proxy carries the hub's traffic or HF_HUB_OFFLINE is already set."""
    import urllib.parse
    import urllib.request

    from huggingface_hub import constants

    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    proxies = urllib.request.getproxies()  # as httpx reads them: HTTPS_PROXY, ALL_PROXY, …
    # the attribute, not is_offline_mode(): huggingface_hub 0.x (timm takes any version) has no such function
    if constants.HF_HUB_OFFLINE or proxies.get(endpoint.scheme) or proxies.get("all"):
        return None
    if endpoint.hostname is None:  # a malformed HF_ENDPOINT: huggingface_hub's own error says so
        return None
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        socket.create_connection((endpoint.hostname, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except ValueError:  # a port that is no number
        return None
    except OSError:
        return constants.ENDPOINT
    return None


@contextlib.contextmanager
def _hub_cache_only(on: bool) -> Iterator[None]:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE) while the block runs: weights downloaded before still
    load from its cache, and none there fails at once."""
    from huggingface_hub import constants

    earlier = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = earlier or on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = earlier


def normalization(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the arch's timm weights were trained with: ImageNet's for most CNNs, 0.5/0.5 for ViTs,
    Inception, MaxViT and others, which fine-tuned on ImageNet's saw inputs twice as large as in pretraining.
    The same for a run from scratch: one arch is always fed alike. The checkpoint records them (export uses
    what it records)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    mean, std = getattr(cfg, "mean", None), getattr(cfg, "std", None)
    if not (isinstance(mean, tuple | list) and isinstance(std, tuple | list) and len(mean) == len(std) == 3):
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(m) for m in mean), tuple(float(v) for v in std)


def check_input_size(model: Any, arch: str, img_size: int) -> None:
    """One blank image through the network before any epoch: a size too small for its strides fails here in
    one line, not as a traceback from the first training step."""
    import torch

    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size))
    except Exception as exc:
        why = f"{type(exc).__name__}: {first_line(exc)}"
        raise ModelError(
            f"--arch {arch} cannot take --img-size {img_size} images ({why}); pick another --img-size"
        ) from None
    finally:
        model.train(was_training)


def _load_weights_file(path: Path, torch: Any) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our own checkpoints
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{str(path)!r} holds no state dict")
    return state


def save_checkpoint(path: str | Path, *, model: Any, meta: dict[str, Any], **extra: Any) -> None:
    """Write a checkpoint atomically. ``meta`` must hold arch, img_size, class_names and friends."""
    import torch

    required = ("arch", "img_size", "class_names")
    missing = [k for k in required if k not in meta]
    if missing:
        raise ValueError(f"checkpoint meta lacks {missing}")
    # A file object, not a path: Python's writes raise the OSError (ENOSPC, EFBIG) that the CLI says in one
    # line; torch's own writer only said "unexpected pos", a RuntimeError and a traceback.
    with atomic_file(Path(path)) as fh:
        torch.save(_payload(model, meta, extra), fh)


def checkpoint_size(*, model: Any, meta: dict[str, Any], **extra: Any) -> int:
    """The bytes save_checkpoint would write, counted without writing them: room can be checked first."""
    import torch

    class Counter:
        size = 0

        def write(self, data: bytes) -> int:
            self.size += len(data)
            return len(data)

        def flush(self) -> None:
            pass

    counter = Counter()
    torch.save(_payload(model, meta, extra), cast(BinaryIO, counter))  # torch needs only write()
    return counter.size


def _payload(model: Any, meta: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    net = getattr(model, "module", model)  # unwrap DDP
    return {"format": CHECKPOINT_FORMAT, **meta, "model": net.state_dict(), **extra}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint without executing pickled code; raises ModelError with one line on any problem."""
    import torch

    path = Path(path)
    if path.is_dir():  # a run's folder instead of a file in it
        raise ModelError(f"checkpoint {str(path)!r} is a folder; pass the checkpoint file in it (best.pt)")
    if not path.is_file():  # a FIFO or a device is not read: torch.load would wait, or never end
        raise ModelError(f"checkpoint {str(path)!r} {not_a_file(path)}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"checkpoint {str(path)!r} {_unreadable(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise ModelError(
                f"{str(path)!r} holds only weights (a state_dict), without the architecture, image size "
                f"and class names of a {CHECKPOINT_FORMAT} checkpoint; pass the best.pt or last.pt "
                "skin-train wrote"
            )
        raise ModelError(f"{str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint")
    names = ckpt.get("class_names")
    if not isinstance(names, list) or not names:
        raise ModelError(f"checkpoint {str(path)!r} has no class names")
    return ckpt


def _unreadable(path: Path, exc: Exception) -> str:
    """Why torch could not load ``path``, for the files people pass by mistake; else the error's type."""
    if isinstance(exc, OSError):  # no permission, an I/O error: not the file's contents
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    with open(path, "rb") as fh:
        head = fh.read(2)
    if not head:
        return "is empty (0 bytes): a copy or a save that did not finish?"
    if path.suffix.lower() == ".onnx":
        return "is an ONNX model, not a training checkpoint; pass the best.pt or last.pt skin-train wrote"
    if "Unsupported global" in str(exc):  # pickled objects, which a weights-only load never runs
        return "is not readable: it holds pickled Python objects beyond tensors and plain values (not loaded)"
    if head == b"PK":  # torch's format is a zip archive
        return "is not readable: cut short (a copy or a save that did not finish?), or a zip of other files"
    return f"is not readable ({type(exc).__name__})"


def model_from_checkpoint(ckpt: dict[str, Any]) -> Any:
    """Rebuild the network a checkpoint describes and load its weights (eval mode)."""
    model = build_model(ckpt["arch"], len(ckpt["class_names"]), drop_rate=0.0)
    try:
        model.load_state_dict(ckpt["model"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise ModelError(
            f"checkpoint weights do not fit {ckpt['arch']} with {len(ckpt['class_names'])} classes: {first}"
        ) from None
    return model.eval()
