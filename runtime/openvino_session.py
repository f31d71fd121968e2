"""SKIN_OPENVINO: the bundle's graph on OpenVINO's CPU plugin, behind the few calls the engine makes of an
onnxruntime session (run, inputs, outputs, metadata, providers).

OpenVINO's own runtime rather than onnxruntime's OpenVINO plugin EP: that plugin offers devices on Intel CPUs
only, while the CPU plugin itself runs on any x86-64 CPU, AMD EPYC included (bf16 on AVX-512 BF16 or AMX). It
reads the ONNX file itself and keeps its metadata (rt_info "framework"), so the contract checks are the same.
"""

from __future__ import annotations

import functools
import queue
from dataclasses import dataclass
from typing import Any

import numpy as np

# onnxruntime's names for the element types the contract checks
_TYPES = {"u8": "tensor(uint8)", "f32": "tensor(float)"}


@dataclass(frozen=True)
class NodeArg:
    name: str
    type: str
    shape: list[Any]  # a dynamic axis is None, as onnxruntime reports an unnamed one


@dataclass(frozen=True)
class ModelMeta:
    custom_metadata_map: dict[str, str]


class OpenVINOSession:
    """One compiled model; each run borrows an infer request, so concurrent runs are safe."""

    def __init__(self, model: str | bytes, *, threads: int, precision: str) -> None:
        core = _core()
        graph = core.read_model(model)
        framework = graph.get_rt_info()["framework"] if graph.has_rt_info("framework") else {}
        self._meta = {key: value.astype(str) for key, value in framework.items()}
        # LATENCY: one request uses every thread (the runtime runs one inference at a time on OpenVINO).
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
        }
        self._compiled = core.compile_model(graph, "CPU", config)
        self._inputs = [_arg(port) for port in graph.inputs]
        self._outputs = [_arg(port) for port in graph.outputs]
        self._ports = {arg.name: self._compiled.output(arg.name) for arg in self._outputs}
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def get_modelmeta(self) -> ModelMeta:
        return ModelMeta(dict(self._meta))

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return ["OpenVINO CPU"]

    def run(
        self, names: list[str] | None, feed: dict[str, np.ndarray], run_options: Any = None
    ) -> list[np.ndarray]:
        """As onnxruntime's: ``names`` None means every output. ``run_options`` (onnxruntime's arena
        shrinkage) has no meaning here and is ignored."""
        names = [arg.name for arg in self._outputs] if names is None else names
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self._compiled.create_infer_request()
        try:
            result = request.infer(feed)
            # Copies: the request reuses its output buffers on the next run.
            return [np.array(result[self._ports[name]]) for name in names]
        finally:
            self._requests.put(request)


@functools.cache
def _core() -> Any:
    """One OpenVINO Core for the process, never released. Each Core's CPU plugin sets its own alternate signal
    stack on the thread that compiles and, with several Cores alive, can leave another one's installed; once
    that Core is freed, the next signal on the thread (a Python handler: SIGCHLD from a DataLoader worker,
    SIGTERM) lands on unmapped memory and the process dies with SIGSEGV. One Core keeps that stack mapped."""
    import openvino as ov

    return ov.Core()


def _arg(port: Any) -> NodeArg:
    shape = [dim.get_length() if dim.is_static else None for dim in port.get_partial_shape()]
    kind = port.get_element_type().get_type_name()
    return NodeArg(port.get_any_name(), _TYPES.get(kind, kind), shape)
