"""uvicorn's httptools protocol with the bounds it lacks, per connection.

uvicorn + httptools has no limit on header size (httptools buffers a header value until it
ends), no deadline for a request's headers or body (only a keep-alive timer, armed after a
response), and accepts connections until file descriptors run out. Here:

- more than ``max_connections`` open: the new one gets a 503 and is closed at once;
- request line and headers past ``max_header_bytes``: 431, closed;
- headers not complete ``header_timeout_s`` after the connection opened (or after the first
  byte of a later request): 408, closed (closed quietly if nothing was sent);
- a body not complete ``body_timeout_s`` after its headers: 408, closed;
- idle ``keep_alive_s`` between requests: closed (one timer per connection, moved on
  rather than made anew for every request as uvicorn's is);
- bytes that are not HTTP: 400, closed.

Each refusal is counted in ``edgepub_edge_request_errors_total{protocol="http",code=...}``
and logged through a ``LogThrottle``. The timers are armed only when a read leaves headers
or body incomplete, so a request that arrives in one read costs no timer at all.

The quick path: uvicorn's per-request machinery (a task, a request-response cycle, ASGI
messages, header checks) costs more than a small inference itself. A GET or POST on an
idle keep-alive HTTP/1.1 connection, with no ``Expect``, is held back from uvicorn at its
headers; its body (up to ``QUICK_BYTES``) is kept here, and once complete the app's
``answer_now`` answers it on the spot and the reply is written straight to the transport.
When the app declines (its answer needs the event loop: a slow model), when the body grows
past ``QUICK_BYTES``, or when anything about the request is unusual, the request is handed
to uvicorn as if it had just arrived, headers and body so far, and served over ASGI.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..config import HttpLimits
from ..metrics import EdgeMetrics
from ..offload import INLINE_BYTES
from .exchange import Reply, error_body
from .throttle import LogThrottle

# where a connection is in its current request
_IDLE, _HEADERS, _BODY = 0, 1, 2
QUICK_BYTES = INLINE_BYTES  # a body up to this may be answered without ASGI
_QUICK_METHODS = (b"GET", b"POST")
Quick = Callable[[str, str, Sequence[tuple[bytes, bytes]], bytes], Reply | None]


def canned(status: int, message: str, code: str, field: str | None) -> bytes:
    """A whole response, written straight to the socket before closing it."""
    body = error_body(message, code, field)
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return STATUS_LINE[status] + head % len(body) + body


class Gate:
    """What every connection of one server shares: its limits, the count, the refusals."""

    def __init__(
        self, limits: HttpLimits, metrics: EdgeMetrics, log: Any, quick: Quick | None = None
    ) -> None:
        self.limits = limits
        self.metrics = metrics
        self.throttle = LogThrottle(log)
        self.quick = quick  # the app's answer_now: the quick path (none: ASGI only)
        self.open = 0
        self.answered_quick = 0  # requests answered on the quick path
        self._defaults: tuple[list[tuple[bytes, bytes]] | None, bytes] = (None, b"")

    def default_lines(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """uvicorn's default headers (the date) as lines, remade when uvicorn renews them
        (its server replaces the list once a second)."""
        seen, lines = self._defaults
        if seen is not headers:
            lines = b"".join(b"%s: %s\r\n" % pair for pair in headers)
            self._defaults = (headers, lines)
        return lines

    def refused(self, code: str, status: int, message: str, client: Any) -> None:
        self.metrics.errors.inc(("http", code))
        self.throttle.emit(
            code,
            "connection_refused",
            level="warning",
            status=status,
            error=message,
            client=client[0] if client else None,
            open_connections=self.open,
        )


class EdgeHttpProtocol(HttpToolsProtocol):
    gate: ClassVar[Gate]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._admitted = False
        self._phase = _HEADERS  # a new connection owes its first request's headers
        self._received = 0  # bytes read while headers were incomplete
        self._deadline: asyncio.TimerHandle | None = None
        self._quick: list[bytes] | None = None  # the body so far, on the quick path
        self._quick_size = 0
        self._close_after = False  # shutting down: close once the quick answer is out
        self._idle_since = 0.0  # when the last answer went out (keep-alive)

    # --- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        gate = self.gate
        if gate.open >= gate.limits.max_connections:
            self.transport = transport
            message = (
                f"this edge has {gate.open} connections open, its limit "
                "(EDGEPUB_MAX_CONNECTIONS); retry shortly"
            )
            transport.write(canned(503, message, "too_many_connections", None))
            transport.close()
            gate.refused("too_many_connections", 503, message, transport.get_extra_info("peername"))
            return
        self._admitted = True
        gate.open += 1
        super().connection_made(transport)
        self._arm(gate.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._quick = None
        if not self._admitted:
            return
        self._admitted = False
        self.gate.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # On every request's path: locals, and the usual case (a request that arrived
        # whole, leaving the connection idle) decided first.
        parser = self.parser
        if parser is None or not self._admitted:
            return
        if self._phase != _BODY:
            self._received += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request is served as plain HTTP/1.1
        except httptools.HttpParserError as exc:
            self._refuse(400, "invalid_http", f"not a valid HTTP/1.1 request: {exc}", None)
            return
        phase = self._phase
        if phase == _IDLE:
            return
        limits = self.gate.limits
        if phase == _HEADERS:
            if self._received > limits.max_header_bytes:
                message = (
                    f"request line and headers exceed {limits.max_header_bytes} bytes "
                    "(EDGEPUB_MAX_HEADER)"
                )
                self._refuse(431, "header_too_large", message, "headers")
            elif self._deadline is None:
                self._arm(limits.header_timeout_s, self._headers_late)
        elif self._deadline is None:
            self._arm(limits.body_timeout_s, self._body_late)

    # --- parser callbacks (each calls its base directly: cheaper than super()) -------------

    def on_message_begin(self) -> None:
        self._phase = _HEADERS
        # uvicorn's, but for its ASGI scope, built only for a request served over ASGI
        # (``_scoped``): the quick path does without
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def _scoped(self) -> None:
        """uvicorn's scope for this request, its URL and headers as already parsed."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        HttpToolsProtocol.on_message_begin(self)
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_headers_complete(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = _BODY
        if self._may_be_quick():
            self._quick = []
            self._quick_size = 0
            return
        self._scoped()
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        quick = self._quick
        if quick is None:
            HttpToolsProtocol.on_body(self, body)
            return
        self._quick_size += len(body)
        quick.append(body)
        if self._quick_size > QUICK_BYTES:
            self._to_asgi()

    def on_message_complete(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = _IDLE
        self._received = 0
        quick = self._quick
        if quick is not None:
            self._quick = None
            if self._answer_now(quick):
                return
            self._quick = quick
            self._to_asgi()
        HttpToolsProtocol.on_message_complete(self)

    def on_response_complete(self) -> None:
        # uvicorn's, but its keep-alive timer is armed once and then only moved on (not made
        # and cancelled for every request): ``_keep_alive_due`` closes an idle connection
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self._keep_alive_due
            )

    def _keep_alive_due(self) -> None:
        self.timeout_keep_alive_task = None
        cycle = self.cycle
        idle = (
            self._phase == _IDLE
            and self._quick is None
            and (cycle is None or cycle.response_complete)
        )
        left = self.timeout_keep_alive - (self.loop.time() - self._idle_since)
        if idle and left <= 0:
            self.timeout_keep_alive_handler()
            return
        self.timeout_keep_alive_task = self.loop.call_later(
            left if idle else self.timeout_keep_alive, self._keep_alive_due
        )

    def shutdown(self) -> None:
        if self._quick is not None:  # answer the request being read, then close
            self._close_after = True
            return
        super().shutdown()

    # --- the quick path --------------------------------------------------------------------

    def _may_be_quick(self) -> bool:
        for name, value in self.headers:  # a large body goes to ASGI now: admission first
            if name == b"content-length" and (len(value) > 5 or int(value) > QUICK_BYTES):
                return False
        cycle = self.cycle
        parser = self.parser
        return (
            self.gate.quick is not None
            and (cycle is None or cycle.response_complete)  # nothing before it to answer
            and not self.flow.write_paused
            and not self.expect_100_continue
            and parser.get_method() in _QUICK_METHODS
            and parser.get_http_version() == "1.1"
            and parser.should_keep_alive()
            and not parser.should_upgrade()
        )

    def _to_asgi(self) -> None:
        """Hand the request to uvicorn as if its headers had just arrived, with the body
        read so far."""
        parts, self._quick = self._quick or [], None
        self._scoped()
        HttpToolsProtocol.on_headers_complete(self)
        for part in parts:
            HttpToolsProtocol.on_body(self, part)

    def _answer_now(self, parts: list[bytes]) -> bool:
        """Answer from here if the app can; False (nothing done) if it cannot."""
        try:
            raw = httptools.parse_url(self.url).path.decode("ascii")
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            return False  # uvicorn decides what to make of it
        path = urllib.parse.unquote(raw) if "%" in raw else raw
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        method = self.parser.get_method().decode("ascii")
        quick = self.gate.quick
        assert quick is not None  # (_may_be_quick)
        reply = quick(method, self.root_path + path, self.headers, body)
        if reply is None:
            return False
        self._write(reply)
        self.gate.answered_quick += 1
        return True

    def _write(self, reply: Reply) -> None:
        body = reply.body if isinstance(reply.body, bytes) else b"".join(reply.body)
        head = [
            STATUS_LINE[reply.status],
            self.gate.default_lines(self.server_state.default_headers),
        ]
        head.append(b"content-type: %s\r\ncontent-length: %d\r\n" % (reply.content_type, len(body)))
        close = self._close_after
        for name, value in reply.extra or ():
            head += (name, b": ", value, b"\r\n")
            close = close or (name == b"connection" and value == b"close")
        head += (b"\r\n", body)
        self.transport.write(b"".join(head))
        if close:
            self.server_state.total_requests += 1
            self.transport.close()
        else:
            self.on_response_complete()  # keep-alive timer, as after any answer

    # --- deadlines -------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        seconds = self.gate.limits.header_timeout_s
        message = f"request headers did not arrive within {seconds} s (EDGEPUB_HEADER_TIMEOUT_S)"
        self._refuse(408, "header_timeout", message, "headers", answer=self._received > 0)

    def _body_late(self) -> None:
        self._deadline = None
        seconds = self.gate.limits.body_timeout_s
        message = f"request body did not arrive within {seconds} s (EDGEPUB_BODY_TIMEOUT_S)"
        self._refuse(408, "body_timeout", message, "body")

    def _refuse(
        self, status: int, code: str, message: str, field: str | None, answer: bool = True
    ) -> None:
        """Answer ``status`` (unless a response already began) and close the connection."""
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        cycle = self.cycle  # the current request's, or the last one's if it was answered
        started = (
            self._quick is None
            and cycle is not None
            and cycle.response_started
            and not cycle.response_complete
        )
        self._quick = None
        if answer and not started:
            transport.write(canned(status, message, code, field))
        if cycle is not None:  # the app, if still reading or about to answer, sees a disconnect
            cycle.disconnected = True
            cycle.message_event.set()
        transport.close()
        self.gate.refused(code, status, message, self.client)


def bound_to(gate: Gate) -> type[EdgeHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, sharing ``gate``."""
    return type("EdgeHttpProtocolBound", (EdgeHttpProtocol,), {"gate": gate})
