from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from export import onnx as export_onnx
from export.errors import ExportError
from runtime import bundle

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    """A tiny timm CNN and its exported core graph (logits + cam)."""
    import timm
    import torch

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", num_classes=3).eval()
    return net, export_onnx.export_core(net, size=(64, 64), mean=MEAN, std=STD)


@pytest.fixture(scope="module")
def pooled(tiny: tuple[Any, Any]) -> Any:
    """The same CNN's core graph with the pooled stage features export chooses the OOD score from."""
    net, _ = tiny
    return export_onnx.export_core(net, size=(64, 64), mean=MEAN, std=STD, pooled=True)


def normalized(images: np.ndarray) -> Any:
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def torch_logits(net: Any, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(normalized(images)).numpy()


def test_graph_takes_uint8_nhwc_with_a_dynamic_batch_in_one_file(tiny: tuple[Any, Any]) -> None:
    import onnx

    _, core = tiny
    model = export_onnx.add_temperature(core, 1.0)
    (image,) = model.graph.input
    assert image.name == bundle.INPUT_NAME
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 3]
    assert [o.name for o in model.graph.output] == [
        bundle.PROBS_OUTPUT,
        bundle.CAM_OUTPUT,
        bundle.LOGITS_OUTPUT,
    ]
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("batch", [1, 3])
def test_graph_matches_torch_and_bakes_in_normalization_and_temperature(
    tiny: tuple[Any, Any], batch: int
) -> None:
    from export.infer import session

    net, core = tiny
    sess = session(export_onnx.to_bytes(export_onnx.add_temperature(core, 2.5)))
    images = np.random.default_rng(batch).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    probs, cam, logits = sess.run(None, {bundle.INPUT_NAME: images})
    expected = torch_logits(net, images)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    scaled = np.exp(expected / 2.5) / np.exp(expected / 2.5).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, scaled, atol=1e-5)
    assert cam.shape == (batch, 3, 2, 2)


def test_cam_is_the_head_applied_at_every_place(tiny: tuple[Any, Any]) -> None:
    """CAM_c = sum_k w_ck A_k: its spatial mean plus the bias is the logit; each cell is w·A at that place."""
    import torch

    from export.infer import session

    net, core = tiny
    images = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    _, cam, logits = session(export_onnx.to_bytes(export_onnx.add_temperature(core, 1.0))).run(
        None, {bundle.INPUT_NAME: images}
    )
    bias = net.classifier.bias.detach().numpy()
    np.testing.assert_allclose(cam.mean(axis=(2, 3)) + bias, logits, atol=1e-4)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        features = net.forward_features(x).numpy()
    weight = net.classifier.weight.detach().numpy()
    np.testing.assert_allclose(cam, np.einsum("ck,nkhw->nchw", weight, features), atol=1e-4)


def test_heads_that_are_not_pool_plus_linear_get_no_cam() -> None:
    import timm

    assert (
        export_onnx.linear_head_weight(timm.create_model("test_resnet", num_classes=3).eval(), (64, 64))
        is not None
    )
    # ConvNeXt normalizes after pooling: a CAM would not add up to the logits, so none is exported.
    assert (
        export_onnx.linear_head_weight(timm.create_model("test_convnext", num_classes=3).eval(), (64, 64))
        is None
    )
    assert (
        export_onnx.linear_head_weight(timm.create_model("test_vit", num_classes=3).eval(), (160, 160))
        is None
    )


@pytest.mark.parametrize(
    "arch",
    [pytest.param("test_maxvit", id="maxvit"), pytest.param("test_vit_relpos", id="vit-relpos")],
)
def test_attention_with_a_bias_exports_with_a_dynamic_batch(arch: str) -> None:
    """The exporter's fused attention with a bias (relative positions) could not be reshaped under a dynamic
    batch; the graph matches torch at two batch sizes, and the net keeps its own attention afterwards."""
    import timm
    import torch

    from export.infer import session

    if not timm.list_models(arch):
        pytest.skip(f"timm {timm.__version__} has no {arch} (1.0.31 brought it)")
    torch.manual_seed(0)
    net = timm.create_model(arch, num_classes=3).eval()
    attention = [m for m in net.modules() if getattr(m, "fused_attn", None) is not None]
    before = [m.fused_attn for m in attention]
    sess = session(export_onnx.to_bytes(export_onnx.export_core(net, size=(160, 160), mean=MEAN, std=STD)))
    for batch in (1, 3):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 160, 160, 3), dtype=np.uint8)
        (logits,) = sess.run([bundle.LOGITS_OUTPUT], {bundle.INPUT_NAME: images})
        np.testing.assert_allclose(logits, torch_logits(net, images), atol=1e-4)
    assert attention and [m.fused_attn for m in attention] == before


def branching_net() -> Any:
    """A net that branches on its data: torch.export cannot trace it."""
    import torch

    class Branching(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 3)

        def forward_features(self, x: Any) -> Any:
            y = self.conv(x)
            return y * 2 if y.sum() > 0 else y

        def forward_head(self, features: Any, pre_logits: bool = False) -> Any:
            pooled = features.mean(dim=(2, 3))
            return pooled if pre_logits else self.fc(pooled)

    return Branching().eval()


def test_a_net_the_exporter_cannot_take_is_one_line_naming_the_cause() -> None:
    """torch.onnx's own message opens with advice in terminal colours; the cause is what is said."""
    with pytest.raises(ExportError) as caught:
        export_onnx.export_core(branching_net(), size=(32, 32), mean=MEAN, std=STD)
    message = str(caught.value)
    assert "data-dependent" in message and "\x1b" not in message and "\n" not in message, message


@pytest.mark.slow
def test_draft_export_asked_for_in_the_environment_is_not_used() -> None:
    """torch reads the variable when its exporter is first imported: a fresh interpreter, as a user's."""
    code = (
        "from export import onnx as export_onnx\n"
        "from export.errors import ExportError\n"
        "from tests.export.test_onnx import MEAN, STD, branching_net\n"
        "from torch.onnx import _flags\n"
        "assert _flags.ENABLE_DRAFT_EXPORT\n"  # the variable took effect in torch
        "try:\n"
        "    export_onnx.export_core(branching_net(), size=(32, 32), mean=MEAN, std=STD)\n"
        "except ExportError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), export_onnx.DRAFT_EXPORT_FLAG: "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused: ") and "data-dependent" in done.stdout, done.stdout


def test_where_torch_keeps_no_strategies_the_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another torch's layout: the variable set is one line before any export work."""

    def missing(name: str) -> Any:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(export_onnx.importlib, "import_module", missing)
    monkeypatch.setenv(export_onnx.DRAFT_EXPORT_FLAG, "1")
    with pytest.raises(ExportError, match="TORCH_ONNX_ENABLE_DRAFT_EXPORT=1 would let torch export"):
        export_onnx.export_core(branching_net(), size=(32, 32), mean=MEAN, std=STD)


def test_the_exporters_type_hint_warnings_are_not_printed(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """torch 2.9 warns of torchvision's ops at each export (2.14, which CI runs, does not): as it would."""
    import logging

    import torch

    export = torch.onnx.export
    schemas = "torch.onnx._internal.exporter._schemas"  # the module that warns

    def warning_export(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger(schemas).warning(
            "Missing annotation for parameter 'input' from (input, rois). Treating as an Input."
        )
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", warning_export)
    net, _ = tiny
    with caplog.at_level(logging.DEBUG):
        export_onnx.export_core(net, size=(64, 64), mean=MEAN, std=STD)
    assert not [r for r in caplog.records if r.name == schemas]
    assert logging.getLogger(schemas).level == logging.NOTSET  # as it was


@pytest.mark.parametrize("step", ["onnxsim", "checker"])
def test_a_failing_simplifier_or_checker_is_one_line(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Both say what failed over many lines (the node, its inputs, the shapes): the CLI prints one."""
    import onnx
    import onnxsim

    check = onnx.checker.check_model

    def failing(*args: Any, **kwargs: Any) -> Any:
        if step == "checker" and not kwargs.get("full_check"):  # onnxsim's own check, not export's
            return check(*args, **kwargs)
        raise RuntimeError(
            "[ShapeInferenceError] Inferred shape and existing shape differ\n\nnode: Conv\n  x"
        )

    if step == "onnxsim":
        monkeypatch.setattr(onnxsim, "simplify", failing)
    else:
        monkeypatch.setattr(onnx.checker, "check_model", failing)
    net, _ = tiny
    with pytest.raises(ExportError) as caught:
        export_onnx.export_core(net, size=(64, 64), mean=MEAN, std=STD)
    message = str(caught.value)
    assert message.endswith(": [ShapeInferenceError] Inferred shape and existing shape differ"), message
    assert ("onnxsim failed" if step == "onnxsim" else "onnx.checker") in message


def test_old_opsets_are_refused(tiny: tuple[Any, Any]) -> None:
    net, _ = tiny
    with pytest.raises(ExportError, match="opset 16"):
        export_onnx.export_core(net, size=(64, 64), mean=MEAN, std=STD, opset=16)


def test_metadata_round_trips_through_the_contract(tiny: tuple[Any, Any]) -> None:
    import onnx

    _, core = tiny
    meta = bundle.BundleMeta(
        class_names=["Acne", "Eczema", "Moles"],
        display_names=["Acne", "Eczema", "Moles"],
        input_size=(64, 64),
        model_name="m",
        model_version="1",
        architecture="test_efficientnet",
        temperature=1.75,
        created="2026-01-01T00:00:00Z",
        demo=True,
    )
    model = export_onnx.add_temperature(core, 1.75)
    export_onnx.set_metadata(model, meta)
    loaded = onnx.load_from_string(export_onnx.to_bytes(model))
    assert bundle.BundleMeta.from_metadata({p.key: p.value for p in loaded.metadata_props}) == meta


def test_opsets_from_the_floor_to_the_newest_onnx_knows_are_accepted() -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    export_onnx.check_opset(export_onnx.MIN_OPSET)
    export_onnx.check_opset(newest)
    with pytest.raises(ExportError, match="is not supported"):
        export_onnx.check_opset(export_onnx.MIN_OPSET - 1)
    with pytest.raises(ExportError, match="newer than this onnx knows"):
        export_onnx.check_opset(newest + 1)


def test_the_graph_has_the_opset_asked_for(tiny: tuple[Any, Any]) -> None:
    net, _ = tiny
    opset = export_onnx.MIN_OPSET + 1
    core = export_onnx.export_core(net, size=(32, 32), mean=MEAN, std=STD, opset=opset)
    assert max(o.version for o in core.opset_import if o.domain in ("", "ai.onnx")) == opset


def test_the_temperature_step_is_added_only_once(tiny: tuple[Any, Any]) -> None:
    _, core = tiny
    once = export_onnx.add_temperature(core, 1.5)
    with pytest.raises(ExportError, match="already uses the names of the temperature step"):
        export_onnx.add_temperature(once, 1.5)


def test_pooled_outputs_are_stage_means_and_the_served_graph_drops_them(
    tiny: tuple[Any, Any], pooled: Any
) -> None:
    """Each skin_pool_<i> is stage i's feature map averaged over the image; serving keeps none of them."""
    import torch

    from export.infer import session

    net, _ = tiny
    names = [o.name for o in pooled.graph.output]
    stages = [n for n in names if n.startswith(export_onnx.POOL_PREFIX) and n != "skin_pool_head"]
    assert stages and "skin_pool_head" in names
    images = np.random.default_rng(7).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    got = session(export_onnx.to_bytes(pooled)).run([*stages, "skin_pool_head"], {bundle.INPUT_NAME: images})
    with torch.no_grad():
        x = normalized(images)
        _, maps = net.forward_intermediates(x)
        head = net.forward_head(net.forward_features(x), pre_logits=True)
    expected = [m.mean(dim=(2, 3)).numpy() for m in maps] + [head.numpy()]
    assert len(got) == len(expected)
    for value, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(value, want, atol=1e-4)
    served = export_onnx.add_temperature(pooled, 1.0)
    assert [o.name for o in served.graph.output] == [
        bundle.PROBS_OUTPUT,
        bundle.CAM_OUTPUT,
        bundle.LOGITS_OUTPUT,
    ]
    produced = {v for n in served.graph.node for v in n.output}
    assert not produced & set(stages)  # the stage pooling is pruned, not left computing unused values
