from __future__ import annotations

import json
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from runtime import bundle, int8
from runtime.app import create_app
from runtime.engine import Engine, available_cpus
from runtime.preprocess import preprocess
from runtime.settings import Settings
from tests.bundle_factory import CLASS_NAMES, make_bundle, make_model
from tests.images import solid


def _meta(**overrides: object) -> bundle.BundleMeta:
    fields: dict[str, object] = {
        "class_names": ["A", "B"],
        "display_names": ["A", "B"],
        "input_size": (300, 300),
        "model_name": "m",
        "model_version": "1",
    }
    fields.update(overrides)
    return bundle.BundleMeta(**fields)  # type: ignore[arg-type]


def test_metadata_round_trip() -> None:
    meta = _meta(
        temperature=1.7,
        demo=True,
        thresholds={"confidence": 0.6},
        resize="center_crop",
        cam_grid={"stride": [32.0, 32.0], "offset": [0.5, 11.5]},
    )
    props = meta.to_metadata()
    assert all(isinstance(v, str) for v in props.values())
    assert bundle.BundleMeta.from_metadata(props) == meta


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"class_names": []}, "non-empty", id="no-classes"),
        pytest.param({"class_names": ["A", ""]}, "non-empty list of strings", id="empty-class-name"),
        pytest.param({"class_names": ["A", 5]}, "non-empty list of strings", id="class-name-not-a-string"),
        pytest.param({"class_names": ["A", "A"]}, "unique", id="duplicate-classes"),
        # a folder named in Latin-1: the metadata was written, then could not be read back as JSON
        pytest.param({"class_names": ["A", "B\udce9"]}, "is not UTF-8 text", id="class-name-not-utf8"),
        pytest.param({"display_names": ["A"]}, "display names", id="display-count"),
        pytest.param({"input_size": (4, 4)}, "out of range", id="tiny-input"),
        pytest.param({"temperature": 0.0}, "temperature", id="zero-temperature"),
        pytest.param({"temperature": float("nan")}, "temperature", id="nan-temperature"),
        pytest.param({"temperature": float("inf")}, "temperature", id="inf-temperature"),
        pytest.param({"resize": "squish"}, "resize mode", id="resize-mode"),
        # refused at load: preprocess would fail on every request (a KeyError, answered 500)
        pytest.param({"resize_filter": "nearest"}, "resize filter", id="resize-filter"),
        pytest.param({"model_name": ""}, "model name", id="no-name"),
    ],
)
def test_invalid_metadata_is_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(bundle.BundleError, match=message):
        _meta(**overrides).to_metadata()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({bundle.K_CONTRACT: "99"}, "contract version", id="future-contract"),
        pytest.param({bundle.K_CONTRACT: "0"}, "contract version", id="past-contract"),
        pytest.param({bundle.K_CONTRACT: "10"}, "contract version", id="contract-1-with-a-trailing-0"),
        # str.isdigit() takes these, int() does not: a ValueError of its own, not the contract's line
        pytest.param({bundle.K_CONTRACT: "\u00b9"}, "contract version", id="superscript-contract"),
        pytest.param({bundle.K_CONTRACT: "1" * 5000}, "contract version", id="5000-digit-contract"),
        pytest.param({bundle.K_DISPLAY: "[1, 2]"}, "display names", id="display-names-not-text"),
        pytest.param({bundle.K_CLASSES: "not json"}, "not valid JSON", id="bad-json"),
        pytest.param({bundle.K_INPUT_SIZE: "[300]"}, "height, width", id="bad-size"),
        pytest.param({bundle.K_INPUT_SIZE: "[300, 300, 3]"}, "height, width", id="size-with-channels"),
        pytest.param({bundle.K_TEMPERATURE: "hot"}, "not a number", id="bad-temperature"),
        pytest.param({bundle.K_MEAN: "5"}, "three numbers", id="mean-not-a-list"),
        pytest.param({bundle.K_STD: '["a", "b", "c"]'}, "three numbers", id="std-strings"),
        pytest.param({bundle.K_STD: "[0.2, 0.2]"}, "three numbers", id="std-too-short"),
        pytest.param({bundle.K_MEAN: "[NaN, 0.4, 0.4]"}, "three numbers", id="mean-nan"),
        pytest.param({bundle.K_STD: "[true, 0.2, 0.2]"}, "three numbers", id="std-boolean"),
        pytest.param({bundle.K_RESIZE: "[1]"}, "JSON object", id="resize-not-an-object"),
        pytest.param({bundle.K_CAM_GRID: "[32, 0.5]"}, "skin.cam_grid", id="cam-grid-not-an-object"),
        pytest.param({bundle.K_CAM_GRID: '{"stride": [32, 32]}'}, "skin.cam_grid", id="cam-grid-no-offset"),
        pytest.param(
            {bundle.K_CAM_GRID: '{"stride": [0, 32], "offset": [0.5, 0.5]}'},
            "positive",
            id="cam-grid-stride-0",
        ),
        pytest.param(
            {bundle.K_CAM_GRID: '{"stride": [32, 32], "offset": [NaN, 0.5]}'},
            "skin.cam_grid",
            id="cam-grid-nan",
        ),
        pytest.param(
            {bundle.K_CAM_GRID: '{"stride": [32, true], "offset": [0.5, 0.5]}'},
            "skin.cam_grid",
            id="cam-grid-bool",
        ),
    ],
)
def test_bad_metadata_strings(change: dict[str, str], message: str) -> None:
    props = _meta().to_metadata() | change
    with pytest.raises(bundle.BundleError, match=message):
        bundle.BundleMeta.from_metadata(props)


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        pytest.param((16, 4096), True, id="16x4096"),
        pytest.param((4096, 16), True, id="4096x16"),
        pytest.param((15, 300), False, id="height-15"),
        pytest.param((300, 15), False, id="width-15"),
        pytest.param((4097, 300), False, id="height-4097"),
        pytest.param((300, 4097), False, id="width-4097"),
    ],
)
def test_input_size_limits_are_inclusive(size: tuple[int, int], ok: bool) -> None:
    props = _meta().to_metadata() | {bundle.K_INPUT_SIZE: json.dumps(list(size))}
    if ok:
        assert bundle.BundleMeta.from_metadata(props).input_size == size
    else:
        with pytest.raises(bundle.BundleError, match="out of range"):
            bundle.BundleMeta.from_metadata(props)


@pytest.mark.parametrize(
    ("value", "demo"),
    [("true", True), ("True", True), ("false", False), ("False", False)],
)
def test_demo_flag_is_read_case_insensitively(value: str, demo: bool) -> None:
    props = _meta().to_metadata() | {bundle.K_DEMO: value}
    assert bundle.BundleMeta.from_metadata(props).demo is demo


def test_a_bundle_without_the_demo_flag_is_not_a_demo() -> None:
    props = _meta().to_metadata()
    del props[bundle.K_DEMO]
    assert bundle.BundleMeta.from_metadata(props).demo is False


def test_a_bundle_without_a_cam_grid_spreads_the_cells_evenly() -> None:
    props = _meta().to_metadata()
    del props[bundle.K_CAM_GRID]  # written before the layout was traced
    meta = bundle.BundleMeta.from_metadata(props)
    assert meta.cam_grid == {}
    assert bundle.cam_extent(meta, 10, 10) == {"left": 0.0, "top": 0.0, "width": 1.0, "height": 1.0}


def test_cam_extent_places_the_cells_where_the_network_centres_them() -> None:
    # B3 at 300 px: 10 cells 32 px apart, the first centred on the first pixel (export/cam.py).
    meta = _meta(input_size=(300, 300), cam_grid={"stride": [32.0, 32.0], "offset": [0.5, 0.5]})
    extent = bundle.cam_extent(meta, 10, 10)
    assert extent == {"left": -0.051667, "top": -0.051667, "width": 1.066667, "height": 1.066667}
    # Cell c's centre, as a fraction of the image: left + (c + 0.5) * width / 10 = (32 c + 0.5) / 300.
    for c in range(10):
        assert extent["left"] + (c + 0.5) * extent["width"] / 10 == pytest.approx(
            (32 * c + 0.5) / 300, abs=1e-5
        )
    # Per axis: rows and columns may differ (a non-square input, TF-style padding).
    # The offsets are not half a stride, so each of the four numbers shows which side it was divided by.
    wide = _meta(input_size=(200, 400), cam_grid={"stride": [16.0, 32.0], "offset": [4.0, 11.5]})
    assert bundle.cam_extent(wide, 12, 12) == {"left": -0.01125, "top": -0.02, "width": 0.96, "height": 0.96}


def test_thresholds_that_are_not_an_object_are_dropped() -> None:
    # The uncertainty policy reads them with .get(); a list would fail every load.
    props = _meta().to_metadata() | {bundle.K_THRESHOLDS: "[0.9]"}
    assert bundle.BundleMeta.from_metadata(props).thresholds == {}


def _check_graph(input_shape: list[object], outputs: dict[str, list[object]]) -> None:
    # _meta(): 2 classes, 300x300 input
    bundle.check_graph(
        _meta(), input_name="image", input_type="tensor(uint8)", input_shape=input_shape, outputs=outputs
    )


def test_graph_with_every_optional_output_passes() -> None:
    outputs: dict[str, list[object]] = {
        "probabilities": ["batch", 2],
        "cam": ["batch", 2, 10, 10],
        "logits": ["batch", 2],
        "ood_score": ["batch"],
    }
    _check_graph(["batch", 300, 300, 3], outputs)


@pytest.mark.parametrize(
    ("input_shape", "outputs", "message"),
    [
        pytest.param([1, 300, 300, 3], {}, "model input has a fixed batch of 1", id="input-fixed-batch"),
        pytest.param(
            ["batch", 300, 300, 3],
            {"probabilities": [1, 2]},
            "output probabilities has a fixed batch of 1",
            id="output-fixed-batch",
        ),
        pytest.param(["batch", 300, 300, 3], {"cam": ["batch", 3, 10, 10]}, "output cam", id="cam-classes"),
        pytest.param(["batch", 300, 300, 3], {"cam": ["batch", 2, 10]}, "output cam", id="cam-rank"),
        pytest.param(["batch", 300, 300, 3], {"logits": ["batch", 3]}, "output logits", id="logits-classes"),
        pytest.param(["batch", 300, 300, 3], {"logits": ["batch", 2, 1]}, "output logits", id="logits-rank"),
        pytest.param(["batch", 300, 300, 3], {"ood_score": ["batch", 1]}, "output ood_score", id="ood-rank"),
    ],
)
def test_graph_interface_is_checked(
    input_shape: list[object], outputs: dict[str, list[object]], message: str
) -> None:
    # An output of the wrong shape would load, then fail every prediction (a 500 each time).
    with pytest.raises(bundle.BundleError, match=message):
        _check_graph(input_shape, {"probabilities": ["batch", 2]} | outputs)


def test_missing_contract_key_says_foreign_model() -> None:
    props = _meta().to_metadata()
    del props[bundle.K_CONTRACT]
    with pytest.raises(bundle.BundleError, match="not a skin-lesion bundle"):
        bundle.BundleMeta.from_metadata(props)


def test_display_names_default_from_class_names() -> None:
    def shown(names: list[str]) -> list[str]:
        props = _meta(class_names=names, display_names=names).to_metadata()
        del props[bundle.K_DISPLAY]
        return bundle.BundleMeta.from_metadata(props).display_names

    # The reference data set's names only for its own classes: another set's "Lichen" is not Lichen Planus.
    assert shown(["Lichen", "Sun_Sunlight_Damage", "New_Class"]) == [
        "Lichen",
        "Sun Sunlight Damage",
        "New Class",
    ]
    reference = sorted(bundle.DISPLAY_NAMES)
    assert shown(reference) == [bundle.DISPLAY_NAMES[n] for n in reference]
    # Some of its classes only: still its names ("Seborrh Keratoses" before).
    assert shown(["Seborrh_Keratoses", "Acne", "Sun_Sunlight_Damage"]) == [
        "Seborrheic Keratoses",
        "Acne",
        "Sun/Sunlight Damage",
    ]


def test_engine_loads_factory_bundle(tiny_bundle: Path) -> None:
    engine = Engine(tiny_bundle, threads=1)
    assert engine.meta.class_names == CLASS_NAMES
    assert engine.has_cam and engine.report is not None
    assert len(engine.sha256) == 64


@pytest.mark.parametrize(
    ("given", "message"),
    [
        # skin-train's run folder, its checkpoint, the graph itself: what a new user tries first.
        pytest.param(
            "run",
            "has no model.onnx: it is a training run; make a bundle of it first: skin-export ",
            id="run",
        ),
        pytest.param(
            "run/best.pt", "is a file, not a directory: it is a training checkpoint; make a", id="ckpt"
        ),
        pytest.param("b/model.onnx", "is a file, not a directory: pass the folder it is in, ", id="graph"),
    ],
)
def test_a_run_or_a_file_given_as_a_bundle_says_what_to_pass(
    tmp_path: Path, given: str, message: str
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"checkpoint")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.onnx").write_bytes(make_model())
    with pytest.raises(bundle.BundleError) as info:
        bundle.model_path(tmp_path / given)
    said = str(info.value)
    assert message in said and "\n" not in said, said
    if given.startswith("run"):
        assert said.endswith(f"skin-export {tmp_path / 'run' / 'best.pt'} --out bundles/NAME")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda d: None, "has no model.onnx", id="missing-model"),
        pytest.param(lambda d: (d / "model.onnx").write_bytes(b""), "not a loadable ONNX", id="empty-model"),
        pytest.param(
            lambda d: (d / "model.onnx").write_bytes(make_model()[:300]),
            "not a loadable ONNX",
            id="truncated",
        ),
        pytest.param(
            lambda d: (d / "model.onnx").write_bytes(make_model(metadata={bundle.K_CONTRACT: "7"})),
            "contract version",
            id="future-contract",
        ),
        pytest.param(
            lambda d: (d / "model.onnx").write_bytes(
                make_model(
                    meta_overrides={bundle.K_CLASSES: ["A", "B", "C"], bundle.K_DISPLAY: ["A", "B", "C"]}
                )
            ),
            "lists 3 classes",
            id="class-count-mismatch",
        ),
        pytest.param(
            lambda d: (d / "model.onnx").write_bytes(
                make_model(meta_overrides={bundle.K_INPUT_SIZE: [32, 32]})
            ),
            "input shape",
            id="input-size-mismatch",
        ),
        pytest.param(
            lambda d: (d / "model.onnx").write_bytes(make_model(batch=1)),
            "input has a fixed batch of 1",
            id="fixed-batch",
        ),
        pytest.param(
            lambda d: (d / "model.onnx").write_bytes(make_model(output_batch=1)),
            "output probabilities has a fixed batch of 1",
            id="fixed-output-batch",
        ),
        pytest.param(
            lambda d: ((d / "model.onnx").write_bytes(make_model()), (d / "report.json").write_text("{oops")),
            "not readable JSON",
            id="corrupt-report",
        ),
    ],
)
def test_bad_bundles_are_refused_with_one_line(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    make(tmp_path)
    with pytest.raises(bundle.BundleError, match=message) as info:
        Engine(tmp_path, threads=1)
    assert "\n" not in str(info.value)


def test_a_graph_with_a_second_input_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(make_model())
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(bundle.BundleError, match="model has 2 inputs; the contract has one, 'image'"):
        Engine(tmp_path, threads=1)


def test_a_model_that_fails_on_a_blank_image_is_a_bundle_error(tmp_path: Path) -> None:
    make_bundle(
        tmp_path, temperature=1e-45
    )  # logits / T overflow: NaN probabilities, as damaged weights give
    engine = Engine(tmp_path, threads=1)
    with pytest.raises(bundle.BundleError, match="fails on a blank image: .*malformed probabilities"):
        engine.warmup()
    assert not engine.ready


def test_non_square_bundle_loads_and_predicts(tmp_path: Path) -> None:
    # input_size is (height, width): the graph takes [batch, 32, 48, 3] and the CAM is 4 x 6.
    make_bundle(tmp_path, size=(32, 48))
    assert preprocess(solid("blue"), (32, 48)).shape == (32, 48, 3)
    with TestClient(create_app(Settings(bundle=str(tmp_path), threads=1))) as client:
        assert client.get("/api/info").json()["input_size"] == [32, 48]
        response = client.post("/api/predict", files={"file": ("x.jpg", solid("blue"), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["primary"]["label"] == "Moles"
    assert (body["heatmap"]["height"], body["heatmap"]["width"]) == (4, 6)


def test_foreign_onnx_model_is_refused(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(bundle.BundleError, match="not a skin-lesion bundle"):
        Engine(tmp_path, threads=1)


def test_missing_report_is_allowed(tmp_path: Path) -> None:
    make_bundle(tmp_path, report=False)
    assert Engine(tmp_path, threads=1).report is None


def test_report_must_be_an_object(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps([1, 2]))
    with pytest.raises(bundle.BundleError, match="JSON object"):
        bundle.load_report(tmp_path)


@pytest.mark.parametrize(
    ("text", "served"),
    [
        # Python's json writes NaN and Infinity (a report attached with --report, one by another tool)
        pytest.param('{"accuracy": NaN, "n": 3}', {"accuracy": None, "n": 3}, id="nan"),
        pytest.param('{"nll": [Infinity, -Infinity]}', {"nll": [None, None]}, id="infinity"),
    ],
)
def test_report_numbers_that_json_lacks_are_served_as_null(
    tmp_path: Path, text: str, served: dict[str, object]
) -> None:
    make_bundle(tmp_path)
    (tmp_path / "report.json").write_text(text)
    with TestClient(create_app(Settings(bundle=str(tmp_path), threads=1))) as client:
        response = client.get("/api/report")
    assert response.status_code == 200 and response.json() == served


def test_thresholds_that_json_lacks_are_unusable_not_a_500(tmp_path: Path) -> None:
    thresholds = (
        '{"confidence": {"min_probability": NaN}, "ood": {"score": "max_prob", "min_score": Infinity}}'
    )
    make_bundle(tmp_path, metadata={bundle.K_THRESHOLDS: thresholds})
    with TestClient(create_app(Settings(bundle=str(tmp_path), threads=1))) as client:
        response = client.get("/api/info")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["thresholds"]["confidence"]["min_probability"] is None
    assert info["uncertainty"]["fields"] == [] and len(info["uncertainty"]["notes"]) == 2


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="nested-too-deeply"),
        pytest.param('{"name": "\\ud800"}', id="lone-surrogate"),  # parses, but cannot be sent as UTF-8
    ],
)
def test_report_json_that_cannot_be_sent_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    make_bundle(tmp_path)
    (tmp_path / "report.json").write_text(text)
    with pytest.raises(bundle.BundleError, match="not readable JSON") as info:
        Engine(tmp_path, threads=1)
    assert "\n" not in str(info.value)


def test_metadata_nested_too_deeply_is_refused_in_one_line() -> None:
    props = _meta().to_metadata() | {bundle.K_CLASSES: "[" * 100_000 + "]" * 100_000}
    with pytest.raises(bundle.BundleError, match="skin.class_names is not valid JSON"):
        bundle.BundleMeta.from_metadata(props)


def test_available_cpus_is_positive_and_bounded() -> None:
    import os

    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_fingerprint_depends_on_names_and_sizes(tmp_path: Path) -> None:
    a = tmp_path / "a.jpg"
    a.write_bytes(b"123")
    first = bundle.fingerprint_files(tmp_path, [a])
    a.write_bytes(b"1234")
    assert bundle.fingerprint_files(tmp_path, [a]) != first


@pytest.mark.parametrize(
    ("variant", "with_int8", "expected"),
    [
        pytest.param("auto", False, "model.onnx", id="auto-fp32-only"),
        pytest.param("auto", True, "model.int8.onnx", id="auto-prefers-int8"),
        pytest.param("fp32", True, "model.onnx", id="fp32-forced"),
        pytest.param("int8", True, "model.int8.onnx", id="int8"),
    ],
)
def test_model_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variant: str, with_int8: bool, expected: str
) -> None:
    monkeypatch.setattr(int8, "clips_sums", lambda: False)  # a CPU with VNNI (tests/runtime/test_int8.py)
    make_bundle(tmp_path)
    if with_int8:
        (tmp_path / bundle.INT8_MODEL_FILE).write_bytes((tmp_path / bundle.MODEL_FILE).read_bytes())
    engine = Engine(tmp_path, threads=1, variant=variant)
    assert engine.model_file == expected and engine.info()["model_file"] == expected


def test_int8_variant_missing_is_one_line(tmp_path: Path) -> None:
    make_bundle(tmp_path)
    with pytest.raises(bundle.BundleError, match="did not ship int8"):
        Engine(tmp_path, threads=1, variant="int8")


def test_a_bundle_path_that_is_not_utf8_is_one_line_naming_it(tmp_path: Path) -> None:
    import os

    directory = make_bundle(os.fsdecode(bytes(tmp_path) + b"/Ecz\xe9ma"))  # a Latin-1 folder name
    # onnxruntime takes only UTF-8 paths: its own error blamed the model ("not a loadable ONNX model")
    with pytest.raises(bundle.BundleError, match="is not a UTF-8 path, which onnxruntime cannot open"):
        Engine(directory, threads=1)
