"""Scratch: onnxruntime against MNN, ncnn and LiteRT (XNNPACK) on the benchmark model, batch 1, two threads.

Not part of the project (none of these engines is a dependency); kept so the record can be reproduced. In a
scratch venv: `pip install onnxruntime==1.32.0 MNN ncnn pnnx ai-edge-litert pillow`, and in another
`pip install tensorflow-cpu onnx2tf onnx_graphsurgeon sng4onnx tf-keras` for the conversion. From the bundle
`runs/bench/bundle/model.onnx` (uint8 NHWC in, normalization baked in):

- `b1.onnx`: batch fixed to 1, only `logits`, onnxsim (so the batch `Shape` folds away);
  `core.onnx`: `onnx.utils.extract_model("b1.onnx", "core.onnx", ["sub_3"], ["logits"])`, float NCHW in;
- MNN: `mnnconvert -f ONNX --modelFile model.onnx --MNNModel model.mnn --bizCode skin`;
- ncnn: `pnnx core.onnx inputshape=[1,3,300,300] fp16=0`, then the identity `Gather` before the classifier
  (indices 0..1535, which ncnn does not implement) cut out of `core.ncnn.param` (`fixed.param`);
- LiteRT: `onnx2tf -i core.onnx -o tfl -osd` (it wants its calibration file in the working folder; any
  20x128x128x3 float32 array saved under its name will do, offline).

Run from that folder: `python engines.py ROUNDS`.
"""

import sys
import time
from importlib.metadata import version

import MNN.expr as F
import MNN.nn as nn
import ncnn
import numpy as np
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter

sys.path.insert(0, "/work/main")
from benchmarks.images import KINDS, encode  # noqa: E402
from runtime.preprocess import preprocess  # noqa: E402

print({p: version(p) for p in ("onnxruntime", "mnn", "ncnn", "ai-edge-litert")})
u8 = [preprocess(encode(k, seed=s)) for k in KINDS for s in range(4)]  # 16 images of the mix, uint8 HWC
mean = np.array([0.485, 0.456, 0.406], np.float32)
std = np.array([0.229, 0.224, 0.225], np.float32)
f32 = [np.ascontiguousarray(((x.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)) for x in u8]

so = ort.SessionOptions()
so.intra_op_num_threads = 2
full = ort.InferenceSession("model.onnx", so, providers=["CPUExecutionProvider"])
core = ort.InferenceSession("core.onnx", so, providers=["CPUExecutionProvider"])
manager = nn.create_runtime_manager(({"precision": "normal", "backend": "CPU", "numThread": 2},))
mnn_net = nn.load_module_from_file("model.mnn", ["image"], ["logits"], runtime_manager=manager)
ncnn_net = ncnn.Net()
ncnn_net.opt.num_threads = 2
ncnn_net.opt.use_fp16_storage = ncnn_net.opt.use_fp16_packed = ncnn_net.opt.use_fp16_arithmetic = False
ncnn_net.load_param("ncnn/fixed.param")
ncnn_net.load_model("ncnn/core.ncnn.bin")
lite = Interpreter(model_path="tfl/core_float32.tflite", num_threads=2)  # XNNPACK is its default delegate
lite.allocate_tensors()
lite_in, lite_out = lite.get_input_details()[0]["index"], lite.get_output_details()[0]["index"]


def run_mnn(i):
    image = F.const(u8[i][None], [1, 300, 300, 3], F.NCHW, F.uint8)  # NCHW: pass the bytes as they are
    return np.array(mnn_net.forward([image])[0].read()).ravel()


def run_ncnn(i):
    with ncnn_net.create_extractor() as ex:
        ex.input("in0", ncnn.Mat(f32[i]))
        return np.array(ex.extract("out0")[1]).ravel()


def run_lite(i):
    lite.set_tensor(lite_in, np.ascontiguousarray(f32[i].transpose(1, 2, 0))[None])
    lite.invoke()
    return lite.get_tensor(lite_out).ravel()


fns = {
    "onnxruntime, the bundle's graph (uint8)": lambda i: full.run(["logits"], {"image": u8[i][None]})[0][0],
    "onnxruntime, float graph": lambda i: core.run(None, {"sub_3": f32[i][None]})[0].ravel(),
    "MNN (precision normal)": run_mnn,
    "ncnn (pnnx, fp32 weights)": run_ncnn,
    "LiteRT + XNNPACK (onnx2tf, fp32)": run_lite,
}
ref = [next(iter(fns.values()))(i) for i in range(len(u8))]
for name, fn in fns.items():
    out = [fn(i) for i in range(len(u8))]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(out, ref, strict=True))
    agree = np.mean([a.argmax() == b.argmax() for a, b in zip(out, ref, strict=True)])
    print(f"{name}: max |logit diff| {diff:.2e}, top-1 agreement {agree:.0%}")
times: dict[str, list[float]] = {name: [] for name in fns}
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 8):  # interleaved rounds: the hour's noise hits all
    for name, fn in fns.items():
        fn(0), fn(1)
        start = time.perf_counter()
        for i in range(len(u8)):
            fn(i)
        times[name].append((time.perf_counter() - start) / len(u8) * 1000)
for name, v in times.items():
    print(f"{name}: median {np.median(v):.1f} ms (rounds {min(v):.1f}-{max(v):.1f})")
