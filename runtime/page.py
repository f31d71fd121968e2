"""The web page's files: Starlette's StaticFiles, with Range headers handled as RFC 9110 has them.

Starlette answers a Range it cannot parse (``bytes=abc``, ``items=0-1``) 400 and one with any range past the
end 416, both in plain text. Here the first is ignored (the whole file, as RFC 9110 allows), a set with some
ranges inside the file gets those, and one with none is a 416 in the API's JSON error shape.

A folder asked for without its trailing slash (``/.``, ``/%2e``) is redirected to a path on this server, never
to a URL that names a host: Starlette builds that from the request's Host header, which a client can forge,
and a cache in front would then send everyone to the forged host.
"""

from __future__ import annotations

import math

from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from runtime.upload import error_body


class PageFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if isinstance(response, RedirectResponse):  # the only redirect: a folder without its trailing slash
            # ``path`` is normalised and relative ("." or "a/b"): no Location starting "//" (another host).
            location = f"{scope.get('root_path', '')}/{'' if path == '.' else path + '/'}"
            query = scope.get("query_string", b"").decode("latin-1")
            location = f"{location}?{query}" if query else location
            return RedirectResponse(location, status_code=response.status_code)
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(name == b"range" for name, _ in scope["headers"]):
            await super().__call__(scope, receive, send)
            return
        refused: list[Message] = []

        async def hold_range_errors(message: Message) -> None:
            # 400 and 416 come only from the Range (a missing file raises HTTPException instead).
            if message["type"] == "http.response.start" and message["status"] in (400, 416):
                refused.append(message)
            elif not refused:
                await send(message)

        await super().__call__(scope, receive, hold_range_errors)
        if not refused:
            return
        if refused[0]["status"] == 400:
            headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
            await super().__call__({**scope, "headers": headers}, receive, send)
            return
        content_range = dict(refused[0]["headers"]).get(b"content-range", b"bytes */0")
        size = content_range.rpartition(b"/")[2].decode("latin-1")
        satisfiable = _satisfiable(scope, int(size) if size.isdigit() else 0)
        if satisfiable is not None:  # a set with some ranges inside the file: those (RFC 9110, 14.1.1)
            headers = [(name, value) for name, value in scope["headers"] if name != b"range"]
            await self({**scope, "headers": [*headers, (b"range", satisfiable)]}, receive, send)  # as any
            return
        message = f"the requested range starts past the end of the file ({size} bytes)"
        body = error_body("range_not_satisfiable", message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"content-range", content_range),
        ]
        await send({"type": "http.response.start", "status": 416, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _satisfiable(scope: Scope, size: int) -> bytes | None:
    """The Range header without its ranges that start past the end (Starlette refuses the whole set for one of
    them), or None when that leaves none, or nothing was dropped."""
    value = dict(scope["headers"])[b"range"].decode("latin-1")
    unit, _, ranges = value.partition("=")
    parts = ranges.split(",")
    kept = [part for part in parts if _inside(part, size)]
    if not kept or len(kept) == len(parts):
        return None
    return f"{unit}={','.join(kept)}".encode("latin-1")


def _inside(part: str, size: int) -> bool:
    """Whether one range of a set starts inside a file of ``size`` bytes ("-N", the last N, when N > 0)."""
    start, _, end = (text.strip() for text in part.strip().partition("-"))
    if not start:
        return _number(end) > 0 and size > 0
    return 0 <= _number(start) < size


def _number(text: str) -> float:
    """ASCII digits as a number, -1 for anything else: str.isdigit() also takes "²" (Latin-1 in a header),
    which int() refuses, as it does 4,300 digits or more. Past 18 digits, infinity: past any file's end."""
    if not (text.isascii() and text.isdigit()):
        return -1
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= 18 else math.inf
