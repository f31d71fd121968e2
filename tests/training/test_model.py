"""Model construction from local weights and the checkpoint format, on timm's tiny test_efficientnet."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.training.helpers import file_size_limit
from training.model import (
    CHECKPOINT_FORMAT,
    ModelError,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)

ARCH = "test_efficientnet"
META = {"arch": ARCH, "img_size": 64, "class_names": ["Acne", "Eczema", "Moles"]}


def _tiny(num_classes: int = 3) -> Any:
    return build_model(ARCH, num_classes, drop_rate=0.0)


class _Payload:
    """Unpickling this touches a file: code that must never run when weights are read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def test_init_weights_come_from_a_state_dict_our_checkpoint_a_wrapped_state_dict_or_safetensors(
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    donor = _tiny(5)
    theirs = donor.state_dict()
    torch.save(theirs, tmp_path / "plain.pt")
    save_checkpoint(tmp_path / "run.pt", model=donor, meta={**META, "class_names": list("abcde")})
    torch.save({"state_dict": theirs, "epoch": 3}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in theirs.items()}, str(tmp_path / "w.safetensors"))
    for name in ("plain.pt", "run.pt", "wrapped.pth", "w.safetensors"):
        own = build_model(ARCH, 3, init_weights=tmp_path / name).state_dict()
        assert torch.equal(own["conv_stem.weight"], theirs["conv_stem.weight"]), name
        assert torch.equal(own["bn1.running_mean"], theirs["bn1.running_mean"]), name


def test_init_weights_leave_the_head_fresh_and_skip_tensors_of_another_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    donor = _tiny(3)  # the same class count: the head would fit, and still starts fresh
    state = donor.state_dict()
    state["bn1.weight"] = torch.ones(5)
    torch.save(state, tmp_path / "donor.pt")
    with caplog.at_level("WARNING", logger="training.model"):
        own = build_model(ARCH, 3, init_weights=tmp_path / "donor.pt").state_dict()
    backbone = sum(not k.startswith("classifier.") and "num_batches" not in k for k in own)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"--init-weights: 1 of {backbone} backbone tensors of {ARCH} are not in {tmp_path / 'donor.pt'} "
        "or have another shape"
    ]  # what starts random is said
    assert torch.equal(own["conv_stem.weight"], state["conv_stem.weight"])
    assert not torch.equal(own["classifier.weight"], state["classifier.weight"])
    assert own["bn1.weight"].shape == donor.state_dict()["bn1.weight"].shape


def test_init_weights_leave_both_heads_of_a_distilled_arch_fresh_and_unsaid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arch = "deit_tiny_distilled_patch16_224"  # classifier ("head", "head_dist"): two heads
    torch.save(build_model(arch, 5, drop_rate=0.0).state_dict(), tmp_path / "other-classes.pt")
    with caplog.at_level("WARNING", logger="training.model"):
        build_model(arch, 3, init_weights=tmp_path / "other-classes.pt")
    assert [r.getMessage() for r in caplog.records] == []  # the heads are new by design, not "left random"
    donor = build_model(arch, 3, drop_rate=0.0).state_dict()  # the same class count: the heads would fit
    torch.save(donor, tmp_path / "donor.pt")
    own = build_model(arch, 3, init_weights=tmp_path / "donor.pt").state_dict()
    assert torch.equal(own["cls_token"], donor["cls_token"])
    for head in ("head.weight", "head_dist.weight"):
        assert not torch.equal(own[head], donor[head]), head


@pytest.mark.parametrize(
    "case", ["missing", "folder", "fifo", "other-network", "counters-only", "pickled-code", "both"]
)
def test_unusable_init_weights_are_one_line(tmp_path: Path, case: str) -> None:
    path = tmp_path / "w.pt"
    pretrained = False
    expected = {
        "missing": "does not exist",
        "folder": "'.*w.pt' is a folder; pass the weights file in it",
        "fifo": "'.*w.pt' is not a regular file",  # and not read: that would wait for a writer forever
        "other-network": "do not fit",
        "counters-only": "do not fit",
        "pickled-code": "could not read weights",
        "both": "not both",
    }[case]
    if case == "folder":  # a download unpacked into a folder of its own
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "other-network":
        torch.save({"encoder.layer.0.weight": torch.zeros(4, 4), "conv_stem.weight": torch.zeros(1)}, path)
    elif case == "counters-only":  # another network's BatchNorm step counter fits any name-alike
        torch.save({"bn1.num_batches_tracked": torch.tensor(7), "layer1.0.conv1.weight": torch.ones(1)}, path)
    elif case == "pickled-code":
        torch.save({"model": {"conv_stem.weight": _Payload(tmp_path / "pwned")}}, path)
    elif case == "both":
        torch.save(_tiny().state_dict(), path)
        pretrained = True
    with pytest.raises(ModelError, match=expected) as error:
        build_model(ARCH, 3, init_weights=path, pretrained=pretrained)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "pwned").exists()


def test_weights_that_cannot_be_downloaded_name_every_way_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants
    import timm

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no look for the real hub
    with pytest.raises(ModelError) as error:
        build_model(ARCH, 3, pretrained=True)
    said = str(error.value)
    # An offline clinic machine's first try: a quick trial run with random weights was not named.
    assert all(flag in said for flag in ("--pretrained", "--init-weights", "--no-pretrained")), said
    assert "\n" not in said


# Run twice: with nothing in huggingface_hub's cache, then with weights put there as a download leaves them.
_OFFLINE = """
from pathlib import Path
import safetensors.torch, sys, timm, torch
from training.model import ModelError, build_model

try:
    build_model("test_efficientnet", 3, pretrained=True)
except ModelError as exc:
    print(exc)
repo = "models--" + timm.models.get_pretrained_cfg("test_efficientnet").hf_hub_id.replace("/", "--")
(Path(sys.argv[1]) / "hub" / repo / "refs").mkdir(parents=True)
(Path(sys.argv[1]) / "hub" / repo / "refs" / "main").write_text("a" * 40)
snapshot = Path(sys.argv[1]) / "hub" / repo / "snapshots" / ("a" * 40)
snapshot.mkdir(parents=True)
donor = timm.create_model("test_efficientnet").state_dict()
safetensors.torch.save_file(donor, snapshot / "model.safetensors")
own = build_model("test_efficientnet", 3, pretrained=True).state_dict()
print("from the cache:", torch.equal(own["conv_stem.weight"], donor["conv_stem.weight"]))
"""


@pytest.mark.slow  # a fresh interpreter: huggingface_hub reads HF_ENDPOINT and HF_HOME when imported
def test_pretrained_weights_with_the_hub_unreachable_fail_at_once_or_come_from_the_cache(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys

    # Offline, huggingface_hub retried each file for half a minute, a warning line a try, before the error.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:1", "HF_HOME": str(tmp_path / "hf")}  # port 1: refused
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE, str(tmp_path / "hf")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    said, loaded = done.stdout.splitlines()
    assert said.startswith(
        "could not download ImageNet weights for test_efficientnet (http://127.0.0.1:1 cannot be reached); "
    )
    assert "Retrying" not in done.stderr and "thrown while requesting" not in done.stderr
    assert loaded == "from the cache: True"


def test_the_hub_check_works_with_huggingface_hub_0x(monkeypatch: pytest.MonkeyPatch) -> None:
    # timm asks for any huggingface_hub: 0.x has the HF_HUB_OFFLINE attribute but no is_offline_mode()
    # (an AttributeError with a traceback, before the download's own error handling).
    from huggingface_hub import constants

    from training import model as model_module

    monkeypatch.delattr(constants, "is_offline_mode", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")  # port 1: refused
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert model_module._hub_unreachable() == "http://127.0.0.1:1"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline already: no check
    assert model_module._hub_unreachable() is None


def test_checkpoint_round_trip_unwraps_data_parallel_and_loads_in_eval_mode(tmp_path: Path) -> None:
    net = _tiny()
    path = tmp_path / "best.pt"
    save_checkpoint(path, model=torch.nn.DataParallel(net), meta=META, epoch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # no temporary file left
    ckpt = load_checkpoint(path)
    assert (
        ckpt["format"] == CHECKPOINT_FORMAT
        and ckpt["epoch"] == 2
        and ckpt["class_names"] == META["class_names"]
    )
    assert not any(k.startswith("module.") for k in ckpt["model"])
    model = model_from_checkpoint(ckpt)
    assert model.training is False
    assert torch.equal(model.state_dict()["conv_stem.weight"], net.state_dict()["conv_stem.weight"])


def test_a_checkpoint_the_disk_has_no_room_for_is_an_oserror_and_the_old_one_stays(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=_tiny(), meta=META, epoch=1)
    before = path.read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(OSError) as error:
        save_checkpoint(path, model=_tiny(), meta=META, epoch=2)
    assert error.value.filename == str(path) and error.value.strerror  # the CLI's one line
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no half-written file holds the space


def test_a_stop_during_a_checkpoint_write_leaves_the_old_one_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=_tiny(), meta=META, epoch=1)
    before = path.read_bytes()

    def stopped_midway(payload: Any, file: Any) -> None:  # Ctrl-C or SIGTERM while torch.save writes
        with open(file, "wb") if isinstance(file, str | Path) else contextlib.nullcontext(file) as fh:
            fh.write(before[:1000])
            fh.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", stopped_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=_tiny(), meta=META, epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_checkpoint_meta_must_name_arch_size_and_classes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_names"):
        save_checkpoint(tmp_path / "x.pt", model=_tiny(), meta={"arch": ARCH, "img_size": 64})
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param({"class_names": ["a"], "model": {}}, "is not a skin-checkpoint/1", id="no-format"),
        pytest.param({"format": "skin-checkpoint/0", "class_names": ["a"]}, "is not a skin", id="old-format"),
        pytest.param({"format": CHECKPOINT_FORMAT, "class_names": []}, "has no class names", id="no-classes"),
        pytest.param({"format": CHECKPOINT_FORMAT, "class_names": "ab"}, "has no class names", id="text"),
    ],
)
def test_checkpoints_not_in_our_format_are_refused(
    tmp_path: Path, payload: dict[str, Any], message: str
) -> None:
    path = tmp_path / "c.pt"
    torch.save(payload, path)
    with pytest.raises(ModelError, match=message):
        load_checkpoint(path)
