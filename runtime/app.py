"""The HTTP service: Starlette routes over one onnxruntime session.

``runtime.app:app`` reads its settings (SKIN_BUNDLE, …) from the environment at start-up;
``create_app(settings, engine=...)`` builds one for tests and for the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime import bundle, logs, openapi
from runtime.engine import Engine, available_cpus
from runtime.gather import Gatherer
from runtime.metrics import MULTIPROCESS_DIR, Metrics
from runtime.page import PageFiles
from runtime.preprocess import ImageError, preprocess
from runtime.settings import DEFAULT_WEBUI, Settings
from runtime.slots import Slots
from runtime.upload import (
    BAD_HTTP,
    ApiError,
    BodyLimitMiddleware,
    Part,
    UploadBudget,
    error_body,
    megabytes,
    overloaded,
    read_files,
)

log = logging.getLogger("runtime")
access_log = logging.getLogger("runtime.access")

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(self), microphone=(), geolocation=()"),
]
PROBE_ROUTES = ("/healthz", "/readyz", "/metrics")
API_ROUTES = ("/api/predict/batch", "/api/predict", "/api/info", "/api/report", "/api/openapi.json")


# ---- request handlers


async def predict(request: Request) -> JSONResponse:
    state = request.app.state
    top_k, heatmap = _query_options(request, state.engine.meta.num_classes, state.settings.top_k)
    state.admission.check()  # shed load before parsing an upload we would refuse anyway
    part = (await read_files(request, "file", max_files=1))[0]
    _check_size(part, state.settings)
    async with state.admission.slot():
        image, size = await _decode(request, part)
        output = await _infer(request, image[None])
    result = _result(
        state.engine,
        output.probabilities[0],
        None if output.cam is None else output.cam[0],
        top_k,
        heatmap,
        output.uncertainty[0],
    )
    result["image"] = size
    result["model"] = _model_summary(state.engine)
    return JSONResponse(result)


async def predict_batch(request: Request) -> JSONResponse:
    state = request.app.state
    top_k, heatmap = _query_options(request, state.engine.meta.num_classes, state.settings.top_k)
    state.admission.check()
    parts = await read_files(request, "files", max_files=state.settings.max_batch_files)
    async with state.admission.slot():
        return await _predict_parts(request, parts, top_k, heatmap)


async def _predict_parts(request: Request, parts: list[Part], top_k: int, heatmap: bool) -> JSONResponse:
    state = request.app.state
    results: list[dict[str, Any]] = []
    images, slots, refused = [], [], []
    for part in parts:
        try:
            _check_size(part, state.settings)
            image, size = await _decode(request, part)
        except ApiError as exc:
            refused.append(exc.code)
            results.append({"filename": part.filename, "error": {"code": exc.code, "message": exc.message}})
            continue
        results.append({"filename": part.filename, "image": size})
        images.append(image)
        slots.append(len(results) - 1)
    if images:
        output = await _infer(request, np.stack(images))
        for row, slot in enumerate(slots):
            cam = None if output.cam is None else output.cam[row]
            probs, judged = output.probabilities[row], output.uncertainty[row]
            results[slot].update(_result(state.engine, probs, cam, top_k, heatmap, judged))
    # Counted here, where the 200 that carries them is sure: the middleware cannot see inside it, and a run
    # that fails (500) or a client that left (499) sends none of these entries.
    for code in refused:
        state.metrics.rejected.labels(code).inc()
    return JSONResponse({"results": results, "model": _model_summary(state.engine)})


async def info(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    body = request.app.state.engine.info()
    body["onnxruntime"]["auto"] = settings.openvino_auto or None  # SKIN_OPENVINO=auto: what it chose and why
    body["limits"] = {
        "max_image_bytes": settings.max_image_bytes,
        "max_body_bytes": settings.max_body_bytes,
        "max_batch_files": settings.max_batch_files,
        "max_pixels": settings.max_pixels,
        "allowed_formats": list(settings.allowed_formats),
        "allowed_types": [f"image/{f.lower()}" for f in settings.allowed_formats],
    }
    return JSONResponse(body)


async def report(request: Request) -> JSONResponse:
    stored = request.app.state.engine.report
    if stored is None:
        raise ApiError(404, "no_report", "this model bundle has no evaluation report (report.json)")
    return JSONResponse(stored)


class ApiFallback:
    """Unknown /api paths get JSON, and known ones a 405 naming their methods, instead of the static mount's
    answers. An ASGI endpoint rather than a function, so that the route matches every method (OPTIONS, …)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        routes = [route for route in scope["app"].routes if isinstance(route, Route)]
        for route in routes:
            if route.path == scope["path"] and route.methods:
                raise HTTPException(405, headers={"allow": ", ".join(sorted(route.methods))})
        # A trailing slash gets a 404 that names the endpoint, not a redirect: the client would upload again.
        meant = scope["path"].rstrip("/")
        if meant != scope["path"] and any(route.path == meant for route in routes):
            raise ApiError(404, "not_found", f"no such endpoint; did you mean {meant}?")
        raise HTTPException(404)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse(
        {"status": "ready", "model": engine.meta.model_name, "version": engine.meta.model_version}
    )


async def prometheus(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


async def openapi_json(request: Request) -> JSONResponse:
    state = request.app.state
    return JSONResponse(
        openapi.spec(
            state.engine.meta.model_version or "0",
            default_top_k=state.settings.top_k,
            num_classes=state.engine.meta.num_classes,
            max_files=state.settings.max_batch_files,
            formats=state.settings.allowed_formats,
            page=any(isinstance(route, Mount) for route in request.app.routes),
        )
    )


# ---- helpers


def _query_options(request: Request, num_classes: int, default_top_k: int) -> tuple[int, bool]:
    # A repeated option would be read as its last value, so "top_k=abc&top_k=2" passed and the reverse failed.
    if len(request.query_params.getlist("top_k")) > 1:
        raise ApiError(422, "bad_top_k", "top_k is given more than once; give it once")
    if len(request.query_params.getlist("heatmap")) > 1:
        raise ApiError(422, "bad_heatmap", "heatmap is given more than once; give it once")
    raw = request.query_params.get("top_k")
    top_k = default_top_k
    if raw is not None:
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if not (raw.isascii() and raw.isdigit()) or not raw.strip("0"):
            raise ApiError(422, "bad_top_k", "top_k must be a whole number of at least 1")
        digits = raw.lstrip("0")  # "0001" is 1; only the significant digits say whether it is huge
        top_k = int(digits) if len(digits) <= 18 else num_classes  # int() refuses 4300+ digit strings
    flag = request.query_params.get("heatmap", "true").lower()
    if flag not in ("true", "false", "1", "0"):
        raise ApiError(422, "bad_heatmap", "heatmap must be true or false")
    return min(top_k, num_classes), flag in ("true", "1")


def _check_size(part: Part, settings: Settings) -> None:
    if len(part.data) > settings.max_image_bytes:
        raise ApiError(
            413, "file_too_large", f"the image is larger than {megabytes(settings.max_image_bytes)} MB"
        )


def _timed(histogram: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn``'s own run time into ``histogram``, taken in the worker thread: no wait for a slot counts."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    histogram.observe(time.perf_counter() - start)
    return out


async def _decode(request: Request, part: Part) -> tuple[np.ndarray, dict[str, Any]]:
    state = request.app.state
    meta, settings = state.engine.meta, state.settings
    try:
        async with state.decoding:
            array = await run_in_threadpool(
                _timed,
                state.metrics.decode,
                preprocess,
                part.data,
                meta.input_size,
                resize_mode=meta.resize,
                resize_filter=meta.resize_filter,
                max_pixels=settings.max_pixels,
                allowed_formats=settings.allowed_formats,
            )
    except ImageError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return array, {"bytes": len(part.data)}


async def _infer(request: Request, images: np.ndarray) -> Any:
    state = request.app.state
    try:
        if state.gather is not None and len(images) == 1:
            # May run together with other waiting images; checked again when its run is about to start.
            output = await state.gather.infer(images[0], check=lambda: _still_wanted(request))
        else:
            async with state.admission.running.take(len(images)):
                await _still_wanted(request)
                output = await run_in_threadpool(_timed, state.metrics.inference, state.engine.run, images)
    except ApiError:
        raise
    except Exception:
        # Never echo onnxruntime's message (it can name files); the log has it with the request id.
        request_id = request.scope.get("request_id", "-")
        log.exception(
            "inference failed (request %s)", request_id, extra={"fields": {"request_id": request_id}}
        )
        raise ApiError(
            500, "inference_failed", "the model failed on this request; it has been logged"
        ) from None
    state.metrics.images.inc(len(images))
    return output


async def _still_wanted(request: Request) -> None:
    """499 when the client hung up while its request waited for the model (a timed-out phone, a proxy's
    deadline): its run would answer nobody and delay every request queued behind it."""
    if await request.is_disconnected():
        message = "the client closed the connection before its image was classified"
        raise ApiError(499, "client_closed", message)


def _result(
    engine: Engine,
    probs: np.ndarray,
    cam: np.ndarray | None,
    top_k: int,
    heatmap: bool,
    uncertainty: dict[str, Any] | None = None,
) -> dict[str, Any]:
    meta = engine.meta
    order = np.argsort(-probs, kind="stable")
    top = [
        {
            "label": meta.class_names[i],
            "display_name": meta.display_names[i],
            "probability": round(float(probs[i]), 6),
        }
        for i in order[:top_k]
    ]
    result: dict[str, Any] = {
        "predictions": {name: round(float(p), 6) for name, p in zip(meta.class_names, probs, strict=True)},
        "top": top,
        "primary": top[0],
        "heatmap": None,
    }
    if heatmap and cam is not None:
        result["heatmap"] = _heatmap(cam[order[0]], meta.class_names[order[0]], meta)
    # "confidence" / "in_distribution" / "ood_score", only when the bundle has those thresholds.
    result.update(uncertainty or {})
    return result


def _heatmap(values: np.ndarray, label: str, meta: bundle.BundleMeta) -> dict[str, Any]:
    """The CAM of one class scaled to 0..1 (its own min→0, max→1), rows top to bottom, and where its cells lie
    on the image the model saw."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    height, width = int(values.shape[0]), int(values.shape[1])
    return {
        "label": label,
        "height": height,
        "width": width,
        "values": np.round(scaled, 3).tolist(),
        "extent": bundle.cam_extent(meta, height, width),
    }


def _model_summary(engine: Engine) -> dict[str, Any]:
    m = engine.meta
    return {"name": m.model_name, "version": m.model_version, "demo": m.demo}


# ---- errors and middleware


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return Response(error_body(exc.code, exc.message), exc.status, exc.headers, media_type="application/json")


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: "no such page or endpoint", 405: "method not allowed here"}.get(
        exc.status_code, exc.detail
    )
    return Response(
        error_body(codes.get(exc.status_code, "http_error"), str(message)),
        exc.status_code,
        exc.headers,
        media_type="application/json",
    )


INTERNAL_ERROR = error_body("internal_error", "internal error; it has been logged")
SHUTTING_DOWN = error_body("shutting_down", "the server is shutting down; send the request again")


async def server_error(request: Request, exc: Exception) -> Response:
    return Response(INTERNAL_ERROR, 500, media_type="application/json")


class Admission:
    """Bounded work: ``running`` runs on the model at once (a multi-image run counts one per image, see
    runtime/slots.py), ``queued`` more requests wait; the rest get 503. Upload memory is bounded apart, by the
    bytes that have arrived (runtime/upload.py, UploadBudget)."""

    def __init__(self, running: int, queued: int) -> None:
        self.running = Slots(running)
        self.capacity = running + queued
        self.active = 0

    def check(self) -> None:
        """503 now if the running and queued places are all taken. A place is taken only after the upload is
        read (``slot``), so a slow client never holds one while it trickles its body."""
        if self.active >= self.capacity:
            raise overloaded()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.check()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1


class RequestMiddleware:
    """Request id, security headers, no caching of API answers, and per-route metrics on every response."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = next((r for r in API_ROUTES if path == r), None) or (
            path if path in PROBE_ROUTES else "api-other" if path.startswith("/api/") else "static"
        )
        if scope["method"] == "OPTIONS":  # a browser's CORS preflight is no prediction: kept apart
            route = "options"
        request_id = take_request_id(scope)
        status = 500
        error = ""
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, error
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                headers.append((b"x-request-id", request_id.encode()))
                # API answers are never cached; the page is, but checked again each time (its ETag), so an
                # upgraded server never runs next to a stale app.js.
                headers.append((b"cache-control", b"no-store" if route != "static" else b"no-cache"))
                message["headers"] = headers
            elif message["type"] == "http.response.body" and status >= 400 and not error:
                error = _error_code(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if scope.get(BAD_HTTP):  # runtime/protocol.py answered 400 mid-body: the app's own went nowhere
                status, error = 400, "bad_http"
            elapsed = time.perf_counter() - start
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if error:  # every error answer, whoever made it (the app, a middleware, the page's files)
                self.metrics.rejected.labels(error).inc()
            fields = {"request_id": request_id, "method": scope["method"], "route": route, "status": status}
            if error:
                fields["error"] = error
            fields["ms"] = round(elapsed * 1000, 1)
            # A probe or scrape that succeeds (kubelet's every few seconds, Prometheus's: ~26,000 lines a day
            # a pod) is a debug line; one that fails stays an info line, where it is seen.
            quiet = route in PROBE_ROUTES and status < 400
            access_log.log(logging.DEBUG if quiet else logging.INFO, "request", extra={"fields": fields})


class ServerErrors:
    """A bug, not a client error: logged with the request id (as a JSON line), answered as generic JSON.
    Inside the CORS middleware, so that a page on an allowed origin can read this 500 like any other answer
    (Starlette's own handler sits outside every middleware); RequestMiddleware adds the usual headers. Never
    the exception text: it may hold data. A request the server cancels as it stops gets a 503 here too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except logs.Logged:
            raise  # from the ServerErrors inside CORS (SKIN_CORS_ORIGINS puts one on each side)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when its shutdown grace ends (skin-serve: 30 s). Its own answer
            # was a plain-text 500 and a traceback; this server is going away, so retrying elsewhere is right.
            # Not raised on: uvicorn would log it as a crash; the request's task ends here, answered.
            if started:
                log.warning("answer cut short: the server is shutting down", extra=_request_fields(scope))
                raise logs.Logged from None
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(SHUTTING_DOWN)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": SHUTTING_DOWN})
        except Exception:
            log.exception("unhandled error", extra=_request_fields(scope))
            if started:
                # Too late for a clean answer: uvicorn closes the connection, the client sees the answer cut
                # short, and uvicorn's own line with the same traceback is dropped (logs.NotLoggedTwice).
                raise logs.Logged from None
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": INTERNAL_ERROR})


def _request_fields(scope: Scope) -> dict[str, Any]:
    return {"fields": {"request_id": take_request_id(scope)}}


def take_request_id(scope: Scope) -> str:
    """The request's id, kept in its scope: the client's X-Request-ID if short and printable, else a new one.
    runtime/protocol.py may take it first, when it answers a request whose body broke before the app ran."""
    if "request_id" not in scope:
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        valid = 0 < len(incoming) <= 64 and incoming.isascii() and incoming.isprintable()
        scope["request_id"] = incoming if valid else uuid.uuid4().hex
    return str(scope["request_id"])


def _error_code(body: bytes) -> str:
    """The machine code of an error answer ({"error": {"code": …}}) for the access log, or ""."""
    try:
        code = json.loads(body)["error"]["code"] if len(body) < 4096 else ""
    except (ValueError, TypeError, KeyError):
        return ""
    return code if isinstance(code, str) else ""


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the API's JSON error shape and an allowed one
    with an empty body (Starlette's is a text/plain "OK", in an API whose every answer is JSON)."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        headers = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        if response.status_code != 400:
            return Response(b"", response.status_code, headers)
        refused = bytes(response.body).decode().removeprefix("Disallowed CORS ")  # "origin, headers"
        body = error_body("cors_refused", f"cross-origin request refused (not allowed: {refused})")
        return Response(body, 400, headers, media_type="application/json")


class OneLineStartupErrors:
    """uvicorn prints a start-up failure's whole traceback; people need its last line (what is wrong)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and message.get("message"):
                last = str(message["message"]).strip().splitlines()[-1]
                message = {**message, "message": "cannot start: " + last.split(": ", 1)[-1]}
            await send(message)

        await self.app(scope, receive, send_wrapper if scope["type"] == "lifespan" else send)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> Starlette:
    """The ASGI app. Without ``settings`` they come from the environment (SKIN_BUNDLE, …)."""
    metrics = Metrics()
    cfg = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # uvicorn has set its loggers to --log-level by now (skin-serve passes it on): the runtime's follow.
        logs.setup(logging.getLogger("uvicorn.error").level or logging.INFO)
        served = engine or Engine.from_settings(cfg)
        app.state.settings = cfg
        app.state.engine = served
        app.state.admission = Admission(max(1, cfg.inference_concurrency), max(0, cfg.max_queue))
        # Decoding is CPU-bound and briefly holds a full-size image (~160 MB at the pixel cap): no more
        # decodes at once than there are CPUs, however many requests are admitted.
        app.state.decoding = asyncio.Semaphore(available_cpus())
        app.state.gather = None
        if cfg.gather > 1:

            async def run_gathered(images: np.ndarray) -> Any:
                metrics.gathered.observe(len(images))
                return await run_in_threadpool(_timed, metrics.inference, served.run, images)

            app.state.gather = Gatherer(run_gathered, app.state.admission.running, cfg.gather)
        if not served.ready:  # skin-serve warms up before uvicorn starts, so that a failure is one line
            await run_in_threadpool(served.warmup)
        m = served.meta
        metrics.model.labels(m.model_name, m.model_version, served.sha256).set(1)
        log.info("serving %s %s from %s", m.model_name, m.model_version, served.bundle_dir)
        if not webui.is_dir():
            log.warning("no web page at %s: serving the API only (set SKIN_WEBUI_DIR)", webui)
        if cfg.workers > 1 and not MULTIPROCESS_DIR:
            log.warning(
                "WEB_CONCURRENCY=%d: /metrics answers for the one worker that takes the scrape; set "
                "PROMETHEUS_MULTIPROC_DIR to an empty folder to add up every worker's",
                cfg.workers,
            )
        if cfg.openvino_auto:
            log.info("SKIN_OPENVINO=auto: serving %s", cfg.openvino_auto)
        if (warning := served.bf16_warning()) is not None:
            log.warning("%s", warning)
        if served.int8_note is not None:  # int8 passed over (auto), or served where it is slow (asked for)
            slow = served.model_file == bundle.INT8_MODEL_FILE
            (log.warning if slow else log.info)("SKIN_MODEL_VARIANT: %s", served.int8_note)
        yield
        if app.state.gather is not None:
            await app.state.gather.close()
        metrics.close()

    webui = Path(cfg.webui_dir)
    try:  # a page folder or one of its files that cannot be read: start-up stops
        if webui.is_dir():
            # Every file, not only index.html: StaticFiles finds a file by its stat alone, so an app.js that
            # could not be opened was answered 200 and its connection then dropped, a page without its script.
            for page_file in webui.iterdir():
                if page_file.is_file():
                    page_file.open("rb").close()
    except OSError as exc:  # is_dir() raises too, where a folder on the way may not be searched
        which = f" ({Path(exc.filename).name})" if exc.filename and Path(exc.filename).parent == webui else ""
        raise ValueError(f"SKIN_WEBUI_DIR {cfg.webui_dir!r} cannot be read: {exc.strerror}{which}") from None
    if not webui.is_dir() and webui != DEFAULT_WEBUI:
        raise ValueError(f"SKIN_WEBUI_DIR {cfg.webui_dir!r} is not a folder")
    if webui.is_dir() and webui != DEFAULT_WEBUI and not (webui / "index.html").is_file():
        # The folder above the page's (/app for /app/webui), an empty one: it served, and / was a 404.
        raise ValueError(f"SKIN_WEBUI_DIR {cfg.webui_dir!r} has no index.html (the page at /)")
    routes: list[BaseRoute] = [
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/predict/batch", predict_batch, methods=["POST"]),
        Route("/api/info", info),
        Route("/api/report", report),
        Route("/api/openapi.json", openapi_json),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", prometheus),
        Route("/api/{rest:path}", ApiFallback()),
    ]
    if webui.is_dir():
        routes.append(Mount("/", PageFiles(directory=webui, html=True), name="webui"))
    # The worst case of SKIN_MAX_UPLOADS full bodies, counted in bytes as they arrive, not in requests: a
    # connection that sent a head and no body holds no memory, so it must not hold a place.
    uploads = UploadBudget(max(1, cfg.max_uploads) * cfg.max_body_bytes)
    middleware = [
        Middleware(RequestMiddleware, metrics=metrics),
        Middleware(ServerErrors),
        Middleware(
            BodyLimitMiddleware,
            max_body_bytes=cfg.max_body_bytes,
            budget=uploads,
            timeout_s=cfg.body_timeout_s,
        ),
    ]
    if cfg.cors_origins:  # no CORS unless configured: the page comes from the same origin
        middleware[1:1] = [
            # Outside CORS too: an error in CORS itself fell through to Starlette's bare 500 (no request id,
            # no security headers, no log line).
            Middleware(ServerErrors),
            Middleware(
                JsonCORSMiddleware,
                allow_origins=list(cfg.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["x-request-id"],  # clients may send their own id (README: HTTP API)
                expose_headers=["x-request-id", "retry-after"],  # and read ours back
            ),
        ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: server_error},
    )
    app.state.metrics = metrics
    app.state.uploads = uploads
    return app


_from_env: ASGIApp | None = None


def __getattr__(name: str) -> ASGIApp:
    """``runtime.app:app`` for uvicorn and gunicorn, built from the environment on first use (not on import:
    skin-serve imports this module with its own settings). A bad setting is one line and exit 3."""
    global _from_env
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _from_env is None:
        try:
            _from_env = OneLineStartupErrors(create_app())
        except ValueError as exc:
            print(f"runtime.app: {exc}", file=sys.stderr, flush=True)
            # uvicorn's (and gunicorn's) status for an app that cannot start, as for a bad bundle: with any
            # other, uvicorn --workers N restarted each worker for ever, failing the same way every time.
            raise SystemExit(3) from None
    return _from_env
