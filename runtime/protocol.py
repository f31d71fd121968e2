"""uvicorn's HTTP/1.1 protocol with a JSON answer to malformed HTTP, like every other error of the API.

A request h11 cannot parse (two Content-Length headers, a bad chunk size, …) never reaches the app: uvicorn
answers 400 itself, in plain text. This keeps its behaviour and changes only the body. skin-serve uses it;
with plain uvicorn: ``uvicorn runtime.app:app --http runtime.protocol:H11Protocol``.
"""

from __future__ import annotations

import h11
from uvicorn.protocols.http import h11_impl

from runtime.upload import error_body


class H11Protocol(h11_impl.H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = error_body("bad_http", msg)  # "Invalid HTTP request received." and the like
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
