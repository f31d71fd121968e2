"""The reference-style server: what users run today, rebuilt as the yardstick for the benchmark.

FastAPI + torch eager fp32, OpenCV decode, albumentations Resize + Normalize + ToTensorV2, the model run
inline in an ``async def`` handler, one uvicorn process, and the reference JSON
(``{"predictions": {...}}``). It loads the same checkpoint the runtime's bundle was exported from, but
safely (``weights_only=True``); the reference's other habits are kept on purpose: this is the yardstick.

    python -m benchmarks.baseline_server --checkpoint runs/bench/model.pt \\
        --report runs/bench/bundle/report.json --port 8001
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import (
    FastAPI,
    File,
    HTTPException,
    UploadFile,
)  # module level: FastAPI resolves annotations here

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks the network for a newer release


def create_app(checkpoint: str | Path, *, report: str | Path | None = None) -> FastAPI:
    """The FastAPI app; the model is loaded at start-up, as the reference does."""
    import albumentations as A
    import cv2
    import numpy as np
    import timm
    import torch
    from albumentations.pytorch import ToTensorV2

    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model = timm.create_model(ckpt["arch"], pretrained=False, num_classes=len(ckpt["class_names"]))
        model.load_state_dict(ckpt["model"])
        state["model"] = model.eval()
        state["class_names"] = list(ckpt["class_names"])
        state["info"] = {"model_name": ckpt["model_name"], "model_version": ckpt["model_version"]}
        size = int(ckpt["img_size"])
        state["transform"] = A.Compose(
            [A.Resize(size, size), A.Normalize(mean=ckpt["mean"], std=ckpt["std"]), ToTensorV2()]
        )
        state["report"] = json.loads(Path(report).read_text()) if report else {}
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        data = await file.read()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise HTTPException(400, "invalid image")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        tensor = state["transform"](image=image)["image"].unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(state["model"](tensor), dim=1)[0]
        return {"predictions": {n: float(p) for n, p in zip(state["class_names"], probs, strict=True)}}

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        return dict(state["info"])

    @app.get("/api/report")
    async def get_report() -> dict[str, Any]:
        return dict(state["report"])

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baseline_server",
        description="Serve a checkpoint the way the reference system does (FastAPI + torch eager fp32).",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="skin-checkpoint/1 file (e.g. runs/bench/model.pt)"
    )
    parser.add_argument("--report", help="report.json served at /api/report")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="info", help="uvicorn's (default info, as the reference runs)")
    args = parser.parse_args(argv)
    for path in (args.checkpoint, args.report):
        if path and not Path(path).is_file():
            print(f"baseline_server: {path} does not exist", file=sys.stderr)
            return 2
    import uvicorn

    app = create_app(args.checkpoint, report=args.report)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
