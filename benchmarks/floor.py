"""How near onnxruntime fp32 runs the model to what this CPU can do, for the model benchmark.

The floor is the model's multiply-adds at this CPU's fp32 matrix-multiply peak through onnxruntime (the same
MLAS kernels the convolutions use, set up as the runtime sets them up): the time the arithmetic alone
takes, which no fp32 path gets far under. A profiled batch-1 run says where the time above the floor goes.

    python -m benchmarks.floor                       # the benchmark's model (runs/bench), nothing else
    python -m benchmarks.floor --bundle bundles/demo --threads 1
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.words import count
from runtime import bundle as contract
from runtime.engine import session_options

CONV_OPS = {"Conv", "FusedConv"}  # FusedConv: onnxruntime's Conv with its activation folded in


def conv_kind(weight: list[int], group: int) -> str:
    """The multiply-adds' kind of a convolution with weights [O, I/group, kh, kw]: depthwise ones read their
    input once per output, so memory, not arithmetic, bounds them."""
    if group > 1 and weight[1] == 1:
        return "depthwise conv"
    return "1x1 conv" if list(weight[2:]) == [1, 1] else "other conv"


def multiply_adds(model: Path) -> dict[str, int]:
    """Multiply-adds of one image through the graph's convolutions and matrix products, by kind."""
    import onnx
    from onnx import shape_inference

    proto = onnx.load(str(model))
    for value in proto.graph.input:  # the batch axis is dynamic: one image
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_value = 1
    graph = shape_inference.infer_shapes(proto, data_prop=True).graph
    # Leading axes left dynamic (the outputs' declared batch) are the one image; any other unknown stays 0.
    shapes = {
        v.name: [d.dim_value or int(i == 0) for i, d in enumerate(v.type.tensor_type.shape.dim)]
        for v in [*graph.input, *graph.value_info, *graph.output]
    }
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    found: Counter[str] = Counter()
    for node in graph.node:
        if node.op_type == "Conv":
            # A shape not inferred counts 0, which refuses the graph below.
            out, weight = shapes.get(node.output[0], [0, 0, 0]), shapes.get(node.input[1], [0, 0])
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kind = conv_kind(weight, group)
            found[kind] += int(np.prod(weight)) * int(np.prod(out[2:]))  # per output pixel: O·I/g·kh·kw
        elif node.op_type in ("MatMul", "Gemm"):
            a, y = shapes.get(node.input[0], [0]), shapes.get(node.output[0], [0])
            transposed = any(x.name == "transA" and x.i for x in node.attribute)
            inner = a[-2] if transposed else a[-1]
            found["matmul"] += int(np.prod(y)) * inner
    if any(v <= 0 for v in found.values()) or not found:
        raise contract.BundleError(f"{model}: shapes not inferred, multiply-adds unknown")
    return dict(found)


def gemm_peak_gflops(*, threads: int, size: int = 1536, rounds: int = 7) -> float:
    """This CPU's fp32 matrix-multiply speed through onnxruntime: the best of ``rounds`` square products.
    The best, not the median: a busy spell can only make a round slower."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        [weight],
    )
    # Opset 17's IR version, not this onnx's newest: onnxruntime 1.20 (the runtime's floor) loads IR <= 10.
    model = helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(
        model.SerializeToString(), session_options(threads=threads), providers=["CPUExecutionProvider"]
    )
    x = {"x": rng.standard_normal((size, size), dtype=np.float32)}
    for _ in range(2):
        session.run(None, x)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(3):
            session.run(None, x)
        best = min(best, (time.perf_counter() - start) / 3)
    return 2 * size**3 / best / 1e9


def op_time_ms(
    model: Path, image: np.ndarray, *, threads: int, runs: int = 20, warmup: int = 3
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean time per batch-1 run in each op type of the graph onnxruntime optimized for this CPU (its
    profiler), most first; and the convolutions' time by the kinds ``multiply_adds`` counts. The runtime's
    session settings, with spinning between ops; the first ``warmup`` runs are left out."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as scratch:
        options = session_options(threads=threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run([contract.PROBS_OUTPUT], {contract.INPUT_NAME: image})
        events = json.loads(Path(session.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    counted_from = starts[warmup]
    spent: Counter[str] = Counter()
    convs: Counter[str] = Counter()
    for event in events:
        if (
            event.get("cat") == "Node"
            and event["name"].endswith("_kernel_time")
            and event["ts"] >= counted_from
        ):
            op = event["args"]["op_name"]
            spent[op] += event["dur"]  # microseconds
            inputs = event["args"].get("input_type_shape") or []
            if op in CONV_OPS and len(inputs) >= 2:
                # The profiler names each input's shape as the graph had it (weights not yet in NCHWc).
                x, weight = (next(iter(s.values())) for s in inputs[:2])
                convs[conv_kind(weight, x[1] // max(1, weight[1]))] += event["dur"]
    return (
        {op: round(us / runs / 1000, 3) for op, us in spent.most_common()},
        {kind: round(us / runs / 1000, 3) for kind, us in convs.most_common()},
    )


def measure(model: Path, image: np.ndarray, *, threads: int) -> dict[str, Any]:
    """The floor and a profiled run, for model.json."""
    macs = multiply_adds(model)
    peak = gemm_peak_gflops(threads=threads)
    ops, conv_kinds = op_time_ms(model, image, threads=threads)
    conv_ms = sum(ms for op, ms in ops.items() if op in CONV_OPS)
    conv_macs = sum(n for kind, n in macs.items() if kind.endswith("conv"))
    conv_gflops = 2 * conv_macs / conv_ms / 1e6 if conv_ms > 0 else None  # a graph without convolutions
    by_kind = {
        kind: {"ms": ms, "gflops": round(2 * macs[kind] / ms / 1e6, 1)}
        for kind, ms in conv_kinds.items()
        if ms > 0 and macs.get(kind)
    }
    return {
        "threads": threads,
        "multiply_adds": macs,
        "total_multiply_adds": sum(macs.values()),
        "gemm_peak_gflops": round(peak, 1),
        "floor_ms": round(2 * sum(macs.values()) / peak / 1e6, 2),
        "profiled_ms_by_op": ops,
        "profiled_run_ms": round(sum(ops.values()), 2),
        "conv_ms": round(conv_ms, 2),
        "conv_gflops": conv_gflops and round(conv_gflops, 1),
        "conv_share_of_peak": conv_gflops and round(conv_gflops / peak, 3),
        "conv_by_kind": by_kind,
    }


def markdown(floor: dict[str, Any], fp32_ms: float | None) -> str:
    """One paragraph for model.md. ``fp32_ms``: onnxruntime fp32's batch-1 median, when it was timed."""
    if "error" in floor:
        return f"Floor: not measured ({floor['error']})."
    macs = floor["multiply_adds"]
    kinds = ", ".join(
        f"{kind} {n / 1e9:.2f} G" for kind, n in sorted(macs.items(), key=lambda kv: -kv[1]) if n >= 5e6
    )
    ops = floor["profiled_ms_by_op"]
    top = [(op, ms) for op, ms in list(ops.items())[:6] if ms >= 0.05]
    rest = sum(ops.values()) - sum(ms for _, ms in top)
    spent = ", ".join(f"{op} {ms:.1f}" for op, ms in top) + (f", the rest {rest:.1f}" if rest > 0.05 else "")
    timed = (
        f"; onnxruntime fp32 took {fp32_ms} ms at batch 1 above, {fp32_ms / floor['floor_ms']:.1f}× the floor"
        if fp32_ms and floor["floor_ms"]  # a tiny model's floor rounds to 0.00 ms: no ratio to it
        else ""
    )
    convs = (
        f"; the convolutions reach {floor['conv_gflops']:.0f} GFLOP/s, "
        f"{floor['conv_share_of_peak']:.0%} of the peak"
        if floor["conv_gflops"]
        else ""
    )
    peak = floor["gemm_peak_gflops"]
    per_kind = [
        f"{kind} {k['ms']:.1f} ms at {k['gflops']:.0f} GFLOP/s, {k['gflops'] / peak:.0%}"
        for kind, k in (floor.get("conv_by_kind") or {}).items()  # absent from model.json before it
    ]
    if len(per_kind) > 1:
        convs += f" ({'; '.join(per_kind)})"
    return (
        f"Floor (fp32, {count(floor['threads'], 'thread')}): the model is "
        f"{floor['total_multiply_adds'] / 1e9:.2f} G "
        f"multiply-adds per image{f' ({kinds})' if kinds else ''}. This CPU multiplies fp32 matrices at "
        f"{floor['gemm_peak_gflops']:.0f} GFLOP/s through onnxruntime: at that speed the arithmetic alone "
        f"takes {floor['floor_ms']:.1f} ms{timed}. A profiled onnxruntime fp32 run, "
        f"{floor['profiled_run_ms']:.1f} ms by op type: {spent} ms{convs}."
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.images import pixels
    from benchmarks.machine import OtherCpu, load1
    from benchmarks.run import BenchError, run_cli, threads_or_cpus
    from runtime.cli import OneLineParser
    from runtime.engine import Engine

    parser = OneLineParser(
        prog="python -m benchmarks.floor",
        description="The model's multiply-adds at this CPU's fp32 matrix speed, and where a profiled "
        "onnxruntime fp32 run spends its time (the model benchmark's floor, alone).",
    )
    parser.add_argument(
        "--work", default="runs/bench", help="the benchmark's model, made if missing (runs/bench)"
    )
    parser.add_argument("--bundle", help="measure this bundle instead of the benchmark's own")
    parser.add_argument(
        "--threads", type=int, default=0, help="at most the CPUs this process may use (0: all of them)"
    )
    args = parser.parse_args(argv)

    def floor(log: Any) -> None:
        from benchmarks.weights import prepare

        threads = threads_or_cpus(args.threads)
        bundle = Path(args.bundle) if args.bundle else prepare(args.work, log=log)[1]
        if not (bundle / contract.MODEL_FILE).is_file():
            raise BenchError(f"--bundle {bundle}: no {contract.MODEL_FILE} there")
        meta = Engine(bundle, threads=1).meta  # the bundle checked as the runtime checks it: one line if not
        height, width = meta.input_size
        image = pixels((width, height))[None]
        load, other = load1(), OtherCpu()
        found = measure(bundle / contract.MODEL_FILE, image, threads=threads)
        print(markdown(found, None))  # its numbers are this machine's only when nothing else runs on it:
        print(f"Load average (1 min) {load:.2f} at the start; other processes used {other.cores()} cores.")

    return run_cli("benchmarks.floor", floor)


if __name__ == "__main__":
    raise SystemExit(main())
