"""Upload handling: body-size limit before buffering, and multipart parsed in memory only.

Uploaded images are health data: Starlette's parser spools parts over 1 MB to a temporary file, so the parser
here never rolls over (the body limit bounds what it can hold) and nothing reaches the disk.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiError(Exception):
    """A client-facing error: HTTP status, a stable machine code and one sentence for people."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def overloaded() -> ApiError:
    return ApiError(503, "overloaded", "the server is busy; retry in a moment", {"retry-after": "1"})


class UploadBudget:
    """Upload bytes held in memory by all requests together, taken as they arrive and given back when their
    request ends: a connection that has sent no body holds nothing, so idle ones shut nobody out."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.capacity:
            raise overloaded()
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


# Set in the request's scope by runtime.protocol when the HTTP framing breaks during the body: uvicorn has
# answered 400 and closed the connection, and the app would otherwise see only a client that went away.
BAD_HTTP = "skin.bad_http"


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class BodyLimitMiddleware:
    """413 from Content-Length before reading, and while streaming when there is none (chunked); 408 past the
    body's deadline; 503 when the body's next bytes would overflow ``budget``, which holds them until the
    request ends. An answer sent before the body has all arrived closes the connection."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, budget: UploadBudget, timeout_s: float = 30.0
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0 or declared > limit:
                status, code = (413, "body_too_large") if declared > limit else (400, "bad_content_length")
                message = (
                    f"the request body is larger than {megabytes(limit)} MB"
                    if status == 413
                    else ("the Content-Length header is not a number")
                )
                await _send_json(send, status, error_body(code, message))
                return
        received = held = 0
        deadline: float | None = None
        has_body = bool(length and length != b"0") or b"transfer-encoding" in headers
        ended = False  # the body's last message has come (with HTTP/2, a body need not declare its length)

        async def limited_receive() -> Message:
            nonlocal received, held, deadline, ended
            if ended:  # nothing more is owed: what comes now is the client hanging up, whenever it does
                return await receive()
            # One deadline for the whole body: a client trickling a byte at a time cannot hold a slot forever.
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                # Sending it again at the same speed would fail again: say what would not.
                slow = (
                    f"the upload took longer than {self.timeout_s:g} s; "
                    "send a smaller image, or use a faster connection"
                )
                raise ApiError(408, "body_timeout", slow) from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                ended = not message.get("more_body", False)
                if received > limit:
                    raise ApiError(
                        413, "body_too_large", f"the request body is larger than {megabytes(limit)} MB"
                    )
                self.budget.take(size)
                held += size
            return message

        async def closing_send(message: Message) -> None:
            # A 408, 413, 503 or 400 sent before the body is read: uvicorn would keep the connection and read
            # and drop the rest, for as long as the client sends it (no timer runs then). Close it instead.
            if message["type"] == "http.response.start" and has_body and not ended:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, limited_receive, closing_send)
        finally:  # the request's parts are gone with it, whether it was answered, refused or cut off
            self.budget.give(held)


def megabytes(size: int) -> str:
    """A byte limit as people read it in messages: 10, 0.5 (MB)."""
    return f"{size / (1024 * 1024):g}"


async def _send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass
class Part:
    filename: str
    content_type: str
    data: bytes


async def read_files(request: Request, field: str, *, max_files: int) -> list[Part]:
    """The files sent under ``field`` in a multipart body, read into memory; ApiError for anything else."""
    content_type = request.headers.get("content-type", "").lower()  # media types are case-insensitive
    if content_type.partition(";")[0].strip() != "multipart/form-data":
        raise ApiError(400, "not_multipart", f"send the image as multipart/form-data in the field '{field}'")
    parser = _Parser(
        field,
        request.headers,
        request.stream(),
        max_files=max_files + 4,
        max_fields=32,
        max_part_size=64 * 1024,
    )
    # Never roll over to disk: the body limit already bounds every part.
    parser.spool_max_size = 1 << 62
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):  # the parser's own bound (max_files + 4) came first
            raise _too_many(field, max_files, in_all=max_files + 4) from None
        raise ApiError(
            400, "bad_multipart", f"the multipart body could not be parsed: {exc.message}"
        ) from None
    except UnicodeError:
        # The client's own charset (multipart/form-data; charset=idna) fails on a field name or text value:
        # Starlette falls back to latin-1 for unknown charsets, but lets this one through.
        raise ApiError(
            400,
            "bad_multipart",
            "the multipart body could not be parsed: a field could not be decoded with its charset",
        ) from None
    except ClientDisconnect:
        if request.scope.get(BAD_HTTP):
            raise ApiError(400, "bad_http", "the request's HTTP framing broke during the upload") from None
        # The client gave up mid-upload (a dropped phone connection): nobody to answer, and not a server
        # error. 499 (nginx's "client closed request") is what the access log and the metrics record.
        raise ApiError(499, "client_closed", "the client closed the connection during the upload") from None
    try:
        values = form.getlist(field)
        if not form:  # the parser keeps only parts that end in a boundary
            message = "the multipart body holds no complete part (none sent, or no closing boundary)"
            raise ApiError(400, "bad_multipart", message)
        if not values:
            sent = ", ".join(sorted({str(k)[:40] for k in form})) or "none"
            raise ApiError(400, "missing_file", f"no file in the field '{field}' (fields sent: {sent})")
        if len(values) > max_files:
            raise _too_many(field, max_files)
        parts = []
        for value in values:
            if not isinstance(value, UploadFile):
                raise _text_in(field)
            data = await value.read()
            await value.close()  # its in-memory copy goes now: a request holds about one body, not two
            parts.append(
                Part(filename=_safe_name(value.filename), content_type=value.content_type or "", data=data)
            )
        return parts
    finally:
        await form.close()
        # A file part cut off before its boundary is in no form: Starlette's parser keeps it only here.
        for file in getattr(parser, "_files_to_close_on_error", []):
            file.close()


class _Parser(MultiPartParser):
    """Starlette's parser, refusing a part of ``field`` without a filename (curl -F 'file=<photo.jpg') once
    its headers are read: it would be kept as text, and one over 64 KB, any real photo, was refused as "Part
    exceeded maximum size of 64KB", not as the small ones were (missing_file)."""

    def __init__(self, field: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.field = field

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        if self._current_part.file is None and self._current_part.field_name == self.field:
            raise _text_in(self.field)


def _text_in(field: str) -> ApiError:
    message = f"the field '{field}' holds text, not a file: send the image as a file (a part with a filename)"
    return ApiError(400, "missing_file", message)


def _too_many(field: str, max_files: int, in_all: int | None = None) -> ApiError:
    """``in_all``: the parser's bound on the files of every field came first, maybe with one in ``field``."""
    counted = f" (the body holds more than {in_all} files in all its fields)" if in_all else ""
    if max_files == 1:
        return ApiError(400, "too_many_files", f"send one file in '{field}'{counted}")
    return ApiError(413, "too_many_files", f"send at most {max_files} files at once{counted}")


def _safe_name(name: str | None) -> str:
    """A display-safe file name: base name only, printable, bounded."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:120]
