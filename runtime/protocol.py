"""uvicorn's HTTP/1.1 protocol, with six changes for a server that may face clients directly (no nginx):

- malformed HTTP (two Content-Length headers, a bad chunk size, …) never reaches the app: uvicorn answers 400
  itself, in plain text; here the body is JSON, like every other error of the API;
- a request head that does not arrive in full within ``head_timeout_s`` closes the connection. uvicorn has no
  such limit: a client that sends half a header line, or nothing, held its connection open for ever (the body
  has its own limit, SKIN_BODY_TIMEOUT_S, in the app). A client that leaves its answer unread as long (its
  socket full: pipelined requests never read) is cut off too: uvicorn held such a connection for ever;
- a chunked body in more than ``MAX_SMALL_CHUNKS`` chunks under 1 KiB is refused as malformed HTTP. h11 takes
  ~15 us per chunk on the event loop: a 380 KB body of 1-byte chunks stalled every other request (/healthz
  included) for 2 s, so a few such clients could fail a liveness probe;
- an Upgrade request (``Upgrade: websocket`` from any scanner) is an ordinary request, answered by the app.
  The app has no WebSocket route; uvicorn, even with ``ws="none"``, logged two warnings for each;
- an answer sent before the request's body was all read (413, 503, 408, 405, 404, a 400) is followed by
  nginx's "lingering close": uvicorn closed at once, with the client's bytes unread, so the kernel reset the
  connection and clients reported "connection reset by peer" or "broken pipe" instead of the answer;
- a client that closes its sending side once its request is out (``shutdown(SHUT_WR)``, ``nc -N``, some
  HTTP/1.0 tools) gets its answer: uvicorn closed the connection at the client's FIN, answer unsent.

skin-serve uses it with SKIN_BODY_TIMEOUT_S for every time limit; with plain uvicorn:
``uvicorn runtime.app:app --http runtime.protocol:H11Protocol`` (30 s).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import h11
from uvicorn.protocols.http import h11_impl

from runtime.app import SECURITY_HEADERS, take_request_id
from runtime.upload import BAD_HTTP, error_body

# Real clients send chunks of a buffer (4 to 64 KiB); browsers never chunk an upload.
MAX_SMALL_CHUNKS = 1024
SMALL_CHUNK = 1024
# A lingering close ends after head_timeout_s in all, or this long without a byte (nginx: 30 s and 5 s).
LINGER_IDLE_S = 5.0
# h11's states for a client whose request is all in: MUST_CLOSE after an HTTP/1.0 or "Connection: close" one,
# MIGHT_SWITCH_PROTOCOL after an Upgrade one (answered as plain HTTP, see _should_upgrade).
REQUEST_WHOLE = (h11.DONE, h11.MUST_CLOSE, h11.MIGHT_SWITCH_PROTOCOL)


class _Connection(h11.Connection):
    """h11's connection, counting the current request body's small chunks."""

    refusal = ""  # why it raised RemoteProtocolError, for the 400's message
    _small = 0
    _chunk = 0  # bytes of the chunk being read

    def next_event(self) -> Any:
        event = super().next_event()
        if isinstance(event, h11.Request):
            self._small = self._chunk = 0
        elif isinstance(event, h11.Data):  # a chunk may come in several pieces, as its bytes arrive
            self._chunk = len(event.data) + (0 if event.chunk_start else self._chunk)
            if event.chunk_end and self._chunk < SMALL_CHUNK:
                self._small += 1
                if self._small > MAX_SMALL_CHUNKS:
                    self.refusal = (
                        f"the body came in more than {MAX_SMALL_CHUNKS} chunks under {SMALL_CHUNK} bytes; "
                        "send it with a Content-Length or in larger chunks"
                    )
                    raise h11.RemoteProtocolError(self.refusal)
        return event


class _Transport:
    """The transport as uvicorn and the app see it: its close() is the protocol's, which may linger."""

    def __init__(self, transport: asyncio.Transport, protocol: H11Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol.close_transport()

    def is_closing(self) -> bool:  # lingering is closing: no keep-alive timer, no next request
        return self._protocol.lingering or self._transport.is_closing()


class H11Protocol(h11_impl.H11Protocol):
    head_timeout_s = 30.0  # also how long an answer may sit unread, and a lingering close may last
    linger_bytes = 4 * 40 * 1024 * 1024  # the most a lingering close drops: 4 bodies of the default limit
    lingering = False
    _head_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _linger_timer: asyncio.TimerHandle | None = None
    _close_timer: asyncio.TimerHandle | None = None
    _stopping = False  # the server shuts down: nothing lingers
    _client_done = False  # the client sent its FIN after a whole request: answer, then close

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The same connection as uvicorn's (its size limit on an incomplete head), counting small chunks.
        self.conn = _Connection(h11.SERVER, self.conn._max_incomplete_event_size)

    @classmethod
    def with_head_timeout(cls, seconds: float, linger_bytes: int | None = None) -> type[H11Protocol]:
        limits = {"head_timeout_s": seconds, "linger_bytes": linger_bytes or cls.linger_bytes}
        return type(cls.__name__, (cls,), limits)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.raw_transport = transport
        super().connection_made(cast("asyncio.Transport", _Transport(transport, self)))
        self._watch_head()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol allows True
        """The client will send no more. With its request all in and unanswered, the connection stays open for
        the answer (True: asyncio keeps the socket's sending side) and closes once all it sent is answered
        (on_response_complete). Otherwise (nothing asked, a body cut short, a lingering close) it closes now,
        as uvicorn's did."""
        answering = self.cycle is not None and not self.cycle.response_complete
        if not self.lingering and answering and self.conn.their_state in REQUEST_WHOLE:
            self._client_done = True
            return True
        self._time_close()  # asyncio closes it now
        return None

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # Answered with the body unread and no "Connection: close" (a CORS preflight, answered by its
            # middleware): uvicorn kept the connection and dropped that body for as long as it came, no timer
            # running. Closed as any early answer is: lingering, bounded.
            self.transport.close()
        super().on_response_complete()  # starts the next pipelined request, if the client sent one
        idle = self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]
        if self._client_done and idle and not self.transport.is_closing():
            self.transport.close()  # all it sent is answered: its FIN now, not the keep-alive timeout's

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            # The rest of a body already answered: dropped unparsed, neither kept nor counted as an upload.
            self._linger_bytes_left -= len(data)
            self._linger_last = self.loop.time()
            if self._linger_bytes_left < 0:
                self._close_raw()
            return
        super().data_received(data)
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_write_timer()
        for timer in (self._linger_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def close_transport(self) -> None:
        """Every close of the connection (uvicorn's, after an answer with ``Connection: close``, or ours).

        With the client still sending its body, a plain close leaves its bytes unread and the kernel answers
        them with a reset, which may reach the client before it reads the answer. As nginx does: the answer
        goes out with a FIN after it, what the client still sends is read and dropped, and the connection
        closes once the client closes it, after LINGER_IDLE_S without a byte, head_timeout_s in all, or past
        linger_bytes."""
        raw = self.raw_transport
        if (
            self.lingering
            or self._stopping
            or raw.is_closing()
            or self.conn.their_state not in (h11.SEND_BODY, h11.ERROR)  # nothing more to come
            or not raw.can_write_eof()  # TLS cannot half-close
        ):
            self._close_raw()
            return
        try:
            raw.write_eof()  # once the answer is written
        except OSError:  # the client reset the connection (ENOTCONN): nothing left to linger for
            self._close_raw()
            return
        self.lingering = True
        self.flow.resume_reading()  # paused while the unread body piled up
        self._linger_bytes_left = self.linger_bytes
        self._linger_last = self.loop.time()
        self._linger_until = self._linger_last + self.head_timeout_s
        self._linger_timer = self.loop.call_later(min(LINGER_IDLE_S, self.head_timeout_s), self._linger_check)

    def _close_raw(self) -> None:
        self.raw_transport.close()
        self._time_close()

    def _time_close(self) -> None:
        """A closed socket stays open until what was written has gone out: for ever, where the client reads
        none of it and it is too little to fill the transport's buffer (no pause_writing, so no write timer;
        pipelined requests never read, then the keep-alive timeout's close). Cut off as that timer cuts."""
        if self._close_timer is None:
            self._close_timer = self.loop.call_later(self.head_timeout_s, self.raw_transport.abort)

    def _linger_check(self) -> None:
        # One timer, moved on when it fires rather than at every read: a read costs no timer.
        until = min(self._linger_last + LINGER_IDLE_S, self._linger_until)
        if self.loop.time() >= until:
            self._linger_timer = None
            self._close_raw()  # the client's EOF (eof_received) closes it sooner
        else:
            self._linger_timer = self.loop.call_later(until - self.loop.time(), self._linger_check)

    def shutdown(self) -> None:
        self._stopping = True  # uvicorn waits for every connection to close: a lingering one must not hold it
        if self.lingering:
            self._close_raw()
        else:
            super().shutdown()

    def pause_writing(self) -> None:
        """The client reads none of what is sent (the transport's buffer is full): timed, as a head is."""
        super().pause_writing()
        if self._write_timer is None:
            # abort, not close: close() would wait to send what the client does not read
            self._write_timer = self.loop.call_later(self.head_timeout_s, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _watch_head(self) -> None:
        """Timed while the client owes a request head (h11 waits in IDLE); between requests uvicorn's own
        keep-alive timer closes an idle connection, and any byte that arrives cancels that one."""
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()
        elif self._head_timer is None and self.timeout_keep_alive_task is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # no request to answer: h11 cannot send a response before one

    def _should_upgrade(self) -> bool:
        return False  # uvicorn's check, which warns "Unsupported upgrade request" when it says no

    def send_400_response(self, msg: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            # The app has answered already (a 405 or 413 before reading the body): no second answer, which
            # h11 refuses with an exception that asyncio logs as a plain-text traceback; just close.
            self.transport.close()
            return
        request_id = uuid.uuid4().hex  # no request yet: the head itself was bad
        cycle = self.cycle if self.cycle is not None and not self.cycle.response_complete else None
        if cycle is not None:
            # Mid-body: the app sees only the connection close; this lets it log the 400, not a 499, under
            # the id this answer carries.
            scope = cast("dict[str, Any]", cycle.scope)
            scope[BAD_HTTP] = True
            request_id = take_request_id(scope)
        # uvicorn's msg is "Invalid HTTP request received." whatever h11 refused; a limit of ours says which.
        body = error_body("bad_http", getattr(self.conn, "refusal", "") or msg)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *SECURITY_HEADERS,  # the headers every other answer carries (runtime/app.py's middleware)
            (b"x-request-id", request_id.encode()),
            (b"cache-control", b"no-store"),
        ]
        events = [
            h11.Response(status_code=400, headers=headers, reason=h11_impl.STATUS_PHRASES[400]),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ]
        if cycle is not None and cycle.scope["method"] == "HEAD":
            del events[1]  # an answer to HEAD has no body: h11 raises at one, and asyncio logs a traceback
        for event in events:
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()
        if cycle is not None:
            # The app may not have answered yet (a GET, a 405: neither reads the body). What it sends now goes
            # nowhere, as after a hang-up, not into h11, which raised: two server-error tracebacks in the log.
            cycle.disconnected = True
            cycle.message_event.set()
