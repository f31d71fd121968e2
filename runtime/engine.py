"""The onnxruntime session: sized to the CPU quota this process really has, validated against the contract."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Before onnxruntime initialises: its Linux wheels send usage telemetry unless told not to (edge boxes are
# offline, and a health-data service should phone nobody).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort

from runtime import bf16, bundle, int8, uncertainty
from runtime.settings import OPENVINO_MODES, Settings


def available_cpus() -> int:
    """CPUs this process may use: affinity mask and cgroup quota (containers), not the host's core count."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:  # rounded down: 1.5 CPUs get 1 thread, so threads never outnumber the quota
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def _cgroup_quota() -> float | None:
    quotas, found = [], False
    for path in _cpu_max_files():
        try:  # cgroup v2: "max 100000" or "150000 100000"
            quota, period = Path(path).read_text().split()[:2]
            found = True
            if quota != "max":
                quotas.append(int(quota) / int(period))
        except (OSError, ValueError, ZeroDivisionError):
            pass
    if found:
        return min(quotas, default=None)
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def _cpu_max_files() -> list[str]:
    """cgroup v2's cpu.max of this process's cgroup and of each one above it: the tightest limits. A container
    sees its own cgroup as the root; a systemd service (CPUQuota=) or a container sharing the host's cgroup
    namespace has its limit further down, where the root's file (there is none on a host) says nothing."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        own = next(line[3:] for line in lines if line.startswith("0::"))
    except (OSError, StopIteration):
        own = "/"
    parts = [part for part in own.strip().split("/") if part]
    if ".." in parts or "." in parts:  # outside this namespace's root: only the root's file can be read
        parts = []
    return ["/".join(["/sys/fs/cgroup", *parts[:depth], "cpu.max"]) for depth in range(len(parts), -1, -1)]


def openvino_session(model: str | bytes, *, threads: int, precision: str) -> Any:
    """The graph on OpenVINO's CPU plugin (package openvino; runtime/openvino_session.py): bf16 runs on AMX or
    AVX-512 BF16 units, Intel's or AMD's."""
    try:
        import openvino  # noqa: F401  (the extra; only its presence is checked here)
    except ImportError:
        raise bundle.BundleError(
            f"OpenVINO {precision} needs the openvino package: pip install 'skinlesion[openvino]'"
        ) from None
    from runtime.openvino_session import OpenVINOSession

    try:
        return OpenVINOSession(model, threads=threads, precision=precision)
    except Exception as exc:
        raise bundle.BundleError(f"OpenVINO could not compile the model: {first_line(exc)}") from None


def session_options(
    *, threads: int, memory_arena: bool = True, spinning: bool = True, exact_int8: bool = True
) -> ort.SessionOptions:
    """How the runtime (and the model benchmark, to measure the same thing) sets up onnxruntime on the CPU.
    ``exact_int8=False`` only for the benchmark, to show what onnxruntime's default int8 kernels do here."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # Threads busy-wait between the ops of a run rather than sleep and wake for each of B3's ~400 ops (one
    # client got 6-7 % more answers on 2 cores), and stop as soon as the run returns: an idle server burns no
    # CPU, and decoding the next upload gets the cores (spinning between runs served fewer requests).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # The arena reuses buffers between runs (~30 % faster single-image serving on B3) but keeps the peak
    # of every batch size it has seen (1.8 GB under mixed batches); so the engine shrinks it after multi-image
    # runs.
    options.enable_cpu_mem_arena = memory_arena
    # An int8 graph must give the answers export measured: without VNNI the fast int8 kernels clip sums
    # (runtime/int8.py). No effect on an fp32 graph, nor on ARM.
    if exact_int8 and int8.clips_sums() is not False:
        options.add_session_config_entry(int8.PRECISION_OPTION, "1")
    return options


def calibration_fit(report: dict[str, Any] | None) -> dict[str, bool] | None:
    """Export's verdict on the temperature (report.json → calibration), so that a fit without a minimum is not
    called calibrated; None where no report says."""
    cal = report.get("calibration") if isinstance(report, dict) else None
    if not isinstance(cal, dict):
        return None
    return {"fitted": "skipped" not in cal, "degenerate": cal.get("degenerate") is True}


def first_line(exc: BaseException) -> str:
    """The first line that says something: OpenVINO's errors open with lines naming its own source files."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not (line.startswith("Exception from ") and line.endswith(":"))]
    return (said or lines or [type(exc).__name__])[0][:300]


@dataclass
class Output:
    probabilities: np.ndarray  # [batch, classes]
    cam: np.ndarray | None  # [batch, classes, h, w]
    # Per image: "confidence" / "in_distribution" / "ood_score" where the bundle has thresholds, else {}.
    uncertainty: list[dict[str, Any]] = field(default_factory=list)


class Engine:
    """One onnxruntime session plus the bundle's metadata and report."""

    def __init__(
        self,
        bundle_dir: str | Path,
        *,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        memory_arena: bool = True,
        spinning: bool = True,
        variant: str = "auto",
        openvino: str = "off",
    ) -> None:
        if not str(bundle_dir):
            raise bundle.BundleError("no bundle given: pass --bundle DIR or set SKIN_BUNDLE")
        if openvino not in OPENVINO_MODES:
            raise bundle.BundleError(
                f"SKIN_OPENVINO must be one of {', '.join(OPENVINO_MODES)}, not {openvino!r}"
            )
        if openvino != "off" and tuple(providers) != ("CPUExecutionProvider",):
            raise bundle.BundleError("set SKIN_OPENVINO or SKIN_PROVIDERS, not both")
        if openvino != "off" and variant in bundle.MODEL_VARIANTS:
            # OpenVINO runs the fp32 graph in the precision asked for; the int8 graph is onnxruntime's.
            if variant == "int8":
                raise bundle.BundleError(
                    "SKIN_OPENVINO serves the fp32 graph: not with SKIN_MODEL_VARIANT=int8"
                )
            variant = "fp32"
        path = bundle.model_path(bundle_dir, variant)
        self.report = bundle.load_report(bundle_dir)
        self.int8_note: str | None = None  # why int8 was passed over, or is served where it is slow
        if path.name == bundle.INT8_MODEL_FILE:
            stale = int8.stale(self.report, path)
            if stale is not None and variant == "int8":
                raise bundle.BundleError(f"{path.name} is not this model's: {stale}")
            served, self.int8_note = int8.serve_int8(variant, stale)
            if not served:
                path = bundle.model_path(bundle_dir, "fp32")
        self.bundle_dir = Path(bundle_dir)
        self.model_file = path.name
        self.threads = threads if threads > 0 else available_cpus()
        self.memory_arena = memory_arena
        self.spinning = spinning
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            have = ", ".join(ort.get_available_providers())
            raise bundle.BundleError(f"execution provider {unknown[0]} is not available (have: {have})")
        self.openvino = openvino
        try:
            if openvino == "off":
                options = session_options(threads=self.threads, memory_arena=memory_arena, spinning=spinning)
                self.session = ort.InferenceSession(
                    str(path), sess_options=options, providers=list(providers)
                )
            else:
                self.session = openvino_session(str(path), threads=self.threads, precision=openvino)
        except bundle.BundleError:
            raise
        except Exception as exc:
            raise bundle.BundleError(f"{path} is not a loadable ONNX model: {first_line(exc)}") from None
        self.meta = bundle.BundleMeta.from_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:  # every run feeds the image alone
            raise bundle.BundleError(
                f"model has {len(inputs)} inputs; the contract has one, {bundle.INPUT_NAME!r}"
            )
        inp = inputs[0]
        outputs = {o.name: list(o.shape) for o in self.session.get_outputs()}
        bundle.check_graph(
            self.meta, input_name=inp.name, input_type=inp.type, input_shape=list(inp.shape), outputs=outputs
        )
        self.has_cam = bundle.CAM_OUTPUT in outputs
        # The decision thresholds come from the bundle; the policy says which extra output they need.
        self.policy = uncertainty.Policy.from_thresholds(self.meta.thresholds, outputs=set(outputs))
        self._fetch = [bundle.PROBS_OUTPUT] + ([bundle.CAM_OUTPUT] if self.has_cam else [])
        self._fetch += self.policy.needs
        self.sha256 = bundle.model_sha256(path)  # read once, also by int8.stale() and SKIN_OPENVINO=auto
        self.providers = self.session.get_providers()
        self.ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Engine:
        """SKIN_OPENVINO=auto is settled in Settings.from_env; settings built in code may still carry it."""
        auto = settings.openvino == "auto"
        openvino = bf16.choose(settings.bundle, settings.model_variant)[0] if auto else settings.openvino
        return cls(
            settings.bundle,
            threads=settings.threads,
            providers=settings.providers,
            memory_arena=settings.memory_arena,
            spinning=settings.spinning,
            variant=settings.model_variant,
            openvino=openvino,
        )

    def run(self, images: np.ndarray) -> Output:
        """images: uint8 [batch, H, W, 3] → probabilities, CAM when the graph has it, and the uncertainty
        fields the bundle's thresholds allow."""
        shrink = self._shrink if self.memory_arena and images.shape[0] > 1 else None
        fetched = self.session.run(self._fetch, {bundle.INPUT_NAME: images}, shrink)
        results = dict(zip(self._fetch, fetched, strict=True))
        probs = np.asarray(results[bundle.PROBS_OUTPUT], dtype=np.float32)
        if probs.shape != (images.shape[0], self.meta.num_classes) or not np.all(np.isfinite(probs)):
            raise RuntimeError("the model returned malformed probabilities")
        cam = np.asarray(results[bundle.CAM_OUTPUT], dtype=np.float32) if self.has_cam else None
        return Output(probabilities=probs, cam=cam, uncertainty=self.policy.judge(results))

    @property
    def bf16_check(self) -> Any:
        """When bf16 is served: what export measured it to change here (report.json openvino_bf16)."""
        return bf16.entry(self.report, self.sha256) if self.openvino == "bf16" else None

    def bf16_warning(self) -> str | None:
        """Why serving bf16 may change answers on this model, or None when export measured it to be safe."""
        if self.openvino != "bf16":
            return None
        why = bf16.concern(self.bf16_check)
        return None if why is None else f"bf16 served, but {why}"

    def warmup(self) -> None:
        h, w = self.meta.input_size
        try:
            self.run(np.zeros((1, h, w, 3), dtype=np.uint8))
        except Exception as exc:  # it loads but cannot answer: damaged weights, shapes it lied about
            raise bundle.BundleError(f"the model fails on a blank image: {first_line(exc)}") from None
        self.ready = True

    def info(self) -> dict[str, Any]:
        m = self.meta
        return {
            "model_name": m.model_name,
            "model_version": m.model_version,
            "architecture": m.architecture,
            "trained_on": m.trained_on,
            "demo": m.demo,
            "created": m.created,
            "data_fingerprint": m.data_fingerprint,
            "classes": [
                {"label": c, "display_name": d} for c, d in zip(m.class_names, m.display_names, strict=True)
            ],
            "num_classes": m.num_classes,
            "input_size": list(m.input_size),
            "resize": {"mode": m.resize, "filter": m.resize_filter},
            "temperature": m.temperature,
            "calibration": calibration_fit(self.report),
            "thresholds": m.thresholds,
            "uncertainty": self.policy.describe(),
            "has_heatmap": self.has_cam,
            "has_report": self.report is not None,
            "onnxruntime": {
                "version": ort.__version__,
                "providers": self.providers,
                "threads": self.threads,
                "openvino": self.openvino,
                "bf16_check": self.bf16_check,
                "int8": self.int8_note,
            },
            "model_file": self.model_file,
            "model_sha256": self.sha256,
        }
