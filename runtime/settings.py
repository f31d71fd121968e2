"""Runtime configuration from the environment (starlette Config, typed casts). README lists every knob."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from starlette.config import Config

from runtime.bundle import MODEL_VARIANTS
from runtime.preprocess import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS, MAX_PIXELS

DEFAULT_WEBUI = Path(__file__).resolve().parent.parent / "webui"
Number = TypeVar("Number", int, float)
MB = 1024 * 1024
MAX_MB = 1024 * 1024  # 1 TiB: any size limit above it is a typo (and 1e305 MB overflowed to infinity)
MAX_THREADS = 1024  # onnxruntime starts every thread it is told to: 100,000 took GBs and never listened
# Counts that hold memory per unit: past these, a typo (100000) is refused at start-up rather than met as an
# out-of-memory kill under the first load.
MAX_CONCURRENCY = 64  # images on the model at once, each run with its own buffers
MAX_BATCH = 64  # images in one run (SKIN_GATHER, SKIN_MAX_BATCH_FILES): 16 B3 images peaked near 1 GB
MAX_WAITING = 1024  # SKIN_MAX_QUEUE requests (each holds its decoded images), SKIN_MAX_UPLOADS bodies
MAX_WORKERS = 64  # WEB_CONCURRENCY: uvicorn worker processes, each with its own model
OPENVINO_MODES = ("off", "f32", "bf16")  # off: onnxruntime's own CPU kernels (fp32)
OPENVINO_SETTINGS = (*OPENVINO_MODES, "auto")  # auto: bf16 where export measured it safe (runtime/bf16.py)


@dataclass(frozen=True)
class Settings:
    bundle: str = ""
    threads: int = 0  # onnxruntime intra-op threads; 0 = the CPU quota this process really has
    # Single images on the model at once: on onnxruntime each fills the gaps the other leaves (a fifth to a
    # third more answers under load on 2 cores). OpenVINO gained nothing from two (one run better, one
    # worse), so it keeps one at a time, as every OpenVINO number in the README was measured.
    inference_concurrency: int = 2
    gather: int = 1  # single-image requests that wait for the model run together, up to this many (1: off)
    max_queue: int = 8  # requests that may wait beyond the running ones; past that, 503 at once
    max_uploads: int = 16  # upload memory: this x max_body_bytes of body bytes held at once; past it, 503
    body_timeout_s: float = 30.0  # a client that trickles its upload longer than this gets 408
    max_image_bytes: int = 10 * MB
    max_body_bytes: int = 40 * MB
    max_batch_files: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    allowed_formats: tuple[str, ...] = ALLOWED_FORMATS
    top_k: int = 5
    webui_dir: str = str(DEFAULT_WEBUI)
    memory_arena: bool = True
    # onnxruntime's threads busy-wait between the ops of a run (never between runs). Only with one inference
    # at a time: threads of overlapping runs spinning against each other served a quarter fewer requests.
    spinning: bool = False
    cors_origins: tuple[str, ...] = ()  # none by default: the page is served from the same origin
    model_variant: str = "auto"  # auto: int8 when export shipped it and this CPU runs it fast (int8.py)
    openvino: str = "off"  # f32 / bf16: run the graph on OpenVINO's CPU plugin
    openvino_auto: str = ""  # with SKIN_OPENVINO=auto: what it chose and why (logged at start-up)
    providers: tuple[str, ...] = field(default_factory=lambda: ("CPUExecutionProvider",))
    workers: int = 1  # WEB_CONCURRENCY: uvicorn worker processes serving this app (skin-serve: 1)

    @classmethod
    def from_env(
        cls, env_file: str | None = None, *, single_process: bool = False, bundle: str | None = None
    ) -> Settings:
        """``single_process``: the caller runs one server process (skin-serve), so WEB_CONCURRENCY does not
        divide the CPUs. ``bundle``: the caller's bundle directory, instead of SKIN_BUNDLE."""
        config = Config(env_file)

        def whole(name: str, default: int, low: int, high: int | None = None) -> int:
            value = _at_least(name, config(name, cast=int, default=default), low)
            return value if high is None else _at_most(name, value, high)

        # Checked for skin-serve too, which runs one process: the same environment may start uvicorn.
        unset = not config("WEB_CONCURRENCY", default="").strip()
        workers = 1 if unset else whole("WEB_CONCURRENCY", 1, 1, MAX_WORKERS)
        if single_process:
            workers = 1

        def megabytes(name: str, default: float) -> int:
            size = _at_most(name, _positive(name, config(name, cast=float, default=default)), MAX_MB)
            if (limit := int(size * MB)) < 1:  # would refuse every upload as "larger than 0 MB"
                raise ValueError(f"{name} must be at least one byte ({1 / MB:.1g} MB), not {size}")
            return limit

        if bundle is None:
            bundle = config("SKIN_BUNDLE", cast=str, default="")
        openvino, chosen = _choice(config, "SKIN_OPENVINO", "off", OPENVINO_SETTINGS), ""
        variant = _choice(config, "SKIN_MODEL_VARIANT", "auto", MODEL_VARIANTS)
        providers = tuple(
            p.strip()
            for p in config("SKIN_PROVIDERS", cast=str, default="CPUExecutionProvider").split(",")
            if p.strip()
        )
        if openvino == "auto":  # settled here, before the defaults that follow the backend
            if providers != ("CPUExecutionProvider",):  # refused whatever auto would choose on this machine
                raise ValueError("set SKIN_OPENVINO or SKIN_PROVIDERS, not both")
            from runtime.bf16 import choose

            openvino, chosen = choose(bundle, variant)
        _available(providers)
        concurrency = whole("SKIN_INFERENCE_CONCURRENCY", 2 if openvino == "off" else 1, 1, MAX_CONCURRENCY)
        return cls(
            bundle=bundle,
            threads=_threads(whole("SKIN_THREADS", 0, 0, MAX_THREADS), workers),
            workers=workers,
            inference_concurrency=concurrency,
            gather=whole("SKIN_GATHER", 1, 1, MAX_BATCH),
            max_queue=whole("SKIN_MAX_QUEUE", 8, 0, MAX_WAITING),
            max_uploads=whole("SKIN_MAX_UPLOADS", 16, 1, MAX_WAITING),
            body_timeout_s=_positive(
                "SKIN_BODY_TIMEOUT_S", config("SKIN_BODY_TIMEOUT_S", cast=float, default=30.0)
            ),
            max_image_bytes=megabytes("SKIN_MAX_IMAGE_MB", 10),
            max_body_bytes=megabytes("SKIN_MAX_BODY_MB", 40),
            max_batch_files=whole("SKIN_MAX_BATCH_FILES", 16, 1, MAX_BATCH),
            max_pixels=whole("SKIN_MAX_PIXELS", DEFAULT_MAX_PIXELS, 1, MAX_PIXELS),
            allowed_formats=_formats(
                config("SKIN_ALLOWED_FORMATS", cast=str, default=",".join(ALLOWED_FORMATS))
            ),
            top_k=whole("SKIN_TOP_K", 5, 1),
            webui_dir=config("SKIN_WEBUI_DIR", cast=str, default=str(DEFAULT_WEBUI)),
            cors_origins=tuple(
                o.strip() for o in config("SKIN_CORS_ORIGINS", cast=str, default="").split(",") if o.strip()
            ),
            model_variant=variant,
            memory_arena=config("SKIN_ORT_MEMORY_ARENA", cast=bool, default=True),
            spinning=config("SKIN_ORT_SPINNING", cast=bool, default=concurrency == 1),
            openvino=openvino,
            openvino_auto=chosen,
            providers=providers,
        )


def threads_per_worker(workers: int, cpus: int) -> int:
    """onnxruntime threads per worker process, so that workers × threads stays within ``cpus``."""
    return max(1, cpus // max(1, workers))


def _threads(threads: int, workers: int) -> int:
    # uvicorn --workers reads WEB_CONCURRENCY; each worker would otherwise size itself to the whole quota.
    if threads > 0 or workers <= 1:
        return threads
    from runtime.engine import available_cpus

    return threads_per_worker(workers, available_cpus())


def _formats(value: str) -> tuple[str, ...]:
    formats = tuple(f.strip().upper() for f in value.split(",") if f.strip())
    unknown = [f for f in formats if f not in ALLOWED_FORMATS]
    if unknown or not formats:
        raise ValueError(f"SKIN_ALLOWED_FORMATS may list only {', '.join(ALLOWED_FORMATS)}")
    return formats


def _choice(config: Config, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = config(name, cast=str, default=default)
    chosen = value.strip().lower()
    if chosen not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return chosen


def _available(providers: tuple[str, ...]) -> None:
    import onnxruntime as ort  # here, not at import: the settings' other checks need no onnxruntime

    have = ort.get_available_providers()
    unknown = [p for p in providers if p not in have]
    if unknown or not providers:
        named = f"{unknown[0]} is not available" if unknown else "is empty"
        raise ValueError(f"SKIN_PROVIDERS: {named} (have: {', '.join(have)})")


def _at_least(name: str, value: int, low: int) -> int:
    if value < low:
        raise ValueError(f"{name} must be at least {low}, not {value}")
    return value


def _at_most(name: str, value: Number, high: Number) -> Number:
    if value > high:
        raise ValueError(f"{name} must be at most {high:,}, not {value}")
    return value


def _positive(name: str, value: float) -> float:
    """A finite number above zero (sizes in MB, seconds): 0, -1, nan and inf would refuse or never end."""
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a number above 0, not {value}")
    return value
