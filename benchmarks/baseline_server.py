"""The reference-style server: what users run today, rebuilt as the yardstick for the benchmark.

FastAPI + torch eager fp32, OpenCV decode, albumentations Resize + Normalize + ToTensorV2, the model run
inline in an ``async def`` handler, one uvicorn process, and the reference JSON
(``{"predictions": {...}}``). It loads the same checkpoint the runtime's bundle was exported from, but
safely (``weights_only=True``); the reference's other habits are kept on purpose: this is the yardstick.

    python -m benchmarks.baseline_server --checkpoint runs/bench/model.pt \\
        --report runs/bench/bundle/report.json --port 8001
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import (
    FastAPI,
    File,
    HTTPException,
    UploadFile,
)  # module level: FastAPI resolves annotations here

from runtime.cli import OneLineParser, check_port
from training.files import not_a_file

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations asks the network for a newer release


def load(checkpoint: str | Path, report: str | Path | None = None) -> dict[str, Any]:
    """What the reference loads at start-up: the model, its transform, its info, and the report. ValueError in
    one line when the checkpoint or the report cannot be used."""
    import albumentations as A
    import timm
    import torch
    from albumentations.pytorch import ToTensorV2

    try:  # torch's own message for a file that is no checkpoint suggests weights_only=False: the type only
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint {checkpoint} is not readable ({type(exc).__name__})") from None
    try:
        model = timm.create_model(ckpt["arch"], pretrained=False, num_classes=len(ckpt["class_names"]))
        model.load_state_dict(ckpt["model"])
        size = int(ckpt["img_size"])
        state: dict[str, Any] = {
            "model": model.eval(),
            "class_names": list(ckpt["class_names"]),
            "info": {"model_name": ckpt["model_name"], "model_version": ckpt["model_version"]},
            "transform": A.Compose(
                [A.Resize(size, size), A.Normalize(mean=ckpt["mean"], std=ckpt["std"]), ToTensorV2()]
            ),
        }
    except Exception as exc:  # whatever torch, timm or a missing key raise: one line for people
        raise ValueError(f"checkpoint {checkpoint} cannot be served: {_first_line(exc)}") from None
    try:
        state["report"] = json.loads(Path(report).read_text()) if report else {}
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"report {report} is not readable JSON: {_first_line(exc)}") from None
    if not isinstance(state["report"], dict):
        raise ValueError(f"report {report} must hold a JSON object")
    return state


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: " + (str(exc).strip().splitlines() or [""])[0][:200]


def create_app(checkpoint: str | Path, *, report: str | Path | None = None) -> FastAPI:
    """The FastAPI app, its model loaded now, before serving (as the reference's start-up does, but here a
    bad checkpoint is a ValueError, not a traceback from uvicorn's lifespan)."""
    import cv2
    import numpy as np
    import torch

    state = load(checkpoint, report)
    app = FastAPI()

    @app.post("/api/predict")
    async def predict(file: UploadFile = File(...)) -> dict[str, Any]:  # noqa: B008 (FastAPI's idiom)
        data = await file.read()
        # The reference has no EXIF handling; IMREAD_COLOR alone would turn a phone photo upright (~45 ms of
        # a 12 MP one's time here) and the model would see another image.
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
        try:  # cv2 raises on an empty file or one over its pixel limit: a 400 as for any undecodable file
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error:
            image = None
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
    parser = OneLineParser(
        prog="python -m benchmarks.baseline_server",
        description="Serve a checkpoint the way the reference system does (FastAPI + torch eager fp32).",
    )
    parser.add_argument(
        "--checkpoint", required=True, help="skin-checkpoint/1 file (e.g. runs/bench/model.pt)"
    )
    parser.add_argument("--report", help="report.json served at /api/report")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],  # uvicorn's
        help="uvicorn's (default info, as the reference runs)",
    )
    args = parser.parse_args(argv)
    for path in (args.checkpoint, args.report):
        if path and not Path(path).is_file():
            print(f"baseline_server: {path} {not_a_file(Path(path))}", file=sys.stderr)  # or a folder
            return 2
    try:  # before loading: a busy port or unknown host is the commonest start-up failure
        check_port(args.host, args.port)
        app = create_app(args.checkpoint, report=args.report)
    except ValueError as exc:
        print(f"baseline_server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # loading torch and the model takes seconds: Ctrl-C then is one line too
        print("baseline_server: interrupted", file=sys.stderr)
        return 130
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
