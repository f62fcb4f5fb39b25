"""uvicorn's httptools protocol with the bounds it lacks, per connection.

uvicorn + httptools has no limit on header size (httptools buffers a header value until it
ends), no deadline for a request's headers or body (only a keep-alive timer, armed after a
response), and accepts connections until file descriptors run out. Here:

- more than ``max_connections`` open: the new one gets a 503 and is closed at once;
- request line and headers past ``max_header_bytes``: 431, closed;
- headers not complete ``header_timeout_s`` after the connection opened (or after the first
  byte of a later request): 408, closed (closed quietly if nothing was sent);
- a body not complete ``body_timeout_s`` after its headers: 408, closed;
- idle ``keep_alive_s`` between requests: closed (uvicorn's own timer);
- bytes that are not HTTP: 400, closed.

Each refusal is counted in ``edgepub_edge_request_errors_total{protocol="http",code=...}``
and logged through a ``LogThrottle``. The timers are armed only when a read leaves headers
or body incomplete, so a request that arrives in one read costs no timer at all.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from ..config import HttpLimits
from ..metrics import EdgeMetrics
from .exchange import error_body
from .throttle import LogThrottle

# where a connection is in its current request
_IDLE, _HEADERS, _BODY = 0, 1, 2


def canned(status: int, message: str, code: str, field: str | None) -> bytes:
    """A whole response, written straight to the socket before closing it."""
    body = error_body(message, code, field)
    head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return STATUS_LINE[status] + head % len(body) + body


class Gate:
    """What every connection of one server shares: its limits, the count, the refusals."""

    def __init__(self, limits: HttpLimits, metrics: EdgeMetrics, log: Any) -> None:
        self.limits = limits
        self.metrics = metrics
        self.throttle = LogThrottle(log)
        self.open = 0

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
        if not self._admitted:
            return
        self._admitted = False
        self.gate.open -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted or self.parser is None:
            return
        self._unset_keepalive_if_required()
        if self._phase != _BODY:
            self._received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no protocol upgrades here: the request is served as plain HTTP/1.1
        except httptools.HttpParserError as exc:
            self._refuse(400, "invalid_http", f"not a valid HTTP/1.1 request: {exc}", None)
            return
        limits = self.gate.limits
        if self._phase == _HEADERS:
            if self._received > limits.max_header_bytes:
                message = (
                    f"request line and headers exceed {limits.max_header_bytes} bytes "
                    "(EDGEPUB_MAX_HEADER)"
                )
                self._refuse(431, "header_too_large", message, "headers")
            elif self._deadline is None:
                self._arm(limits.header_timeout_s, self._headers_late)
        elif self._phase == _BODY and self._deadline is None:
            self._arm(limits.body_timeout_s, self._body_late)

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._phase = _HEADERS
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._deadline is not None:  # (inline: on every request's path)
            self._deadline.cancel()
            self._deadline = None
        self._phase = _BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = _IDLE
        self._received = 0
        super().on_message_complete()

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
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
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
