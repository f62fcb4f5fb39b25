"""The HTTP bounds without a socket: the refusal throttle, the descriptor fit, and the
protocol driven through an in-memory transport (bytes in, bytes out, a real event loop)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import uvicorn
from structlog.testing import capture_logs
from uvicorn.server import ServerState

from edgepub.edge_agent.config import HttpLimits
from edgepub.edge_agent.metrics import EdgeMetrics
from edgepub.edge_agent.web.protocol import Gate, bound_to, canned
from edgepub.edge_agent.web.server import FD_RESERVE, fit_descriptors
from edgepub.edge_agent.web.throttle import LogThrottle

# --- the throttle -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_logs_a_burst_then_counts() -> None:
    import structlog

    clock = Clock()
    throttle = LogThrottle(structlog.get_logger("t"), burst=3, window_s=10.0, clock=clock)
    with capture_logs() as logs:
        logged = [throttle.emit("bad", "request_refused", n=i) for i in range(10)]
        assert throttle.emit("other", "request_refused")  # each code has its own burst
        clock.now = 10.0
        assert throttle.emit("bad", "request_refused", n=10)
    assert logged == [True] * 3 + [False] * 7
    events = [(e["event"], e.get("code"), e.get("count")) for e in logs]
    assert events == [
        ("request_refused", "bad", None),
        ("request_refused", "bad", None),
        ("request_refused", "bad", None),
        ("request_refused", "other", None),
        ("refusals_suppressed", "bad", 7),
        ("request_refused", "bad", None),
    ]
    assert all("exc_info" not in e for e in logs)


def test_the_fd_limit_lowers_the_connection_cap() -> None:
    limits = HttpLimits(max_connections=1000)
    assert fit_descriptors(limits, 100_000) is limits
    assert fit_descriptors(limits, 1024).max_connections == 1024 - FD_RESERVE
    assert fit_descriptors(limits, 10).max_connections == 1


def test_a_canned_answer_is_a_whole_response() -> None:
    raw = canned(431, "too big", "header_too_large", "headers")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"connection: close" in head and b"content-length: %d" % len(body) in head
    assert json.loads(body) == {"error": "too big", "code": "header_too_large", "field": "headers"}


# --- the protocol, in memory ------------------------------------------------------------------


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        self.out += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class Server:
    def __init__(self, **limits: Any) -> None:
        self.metrics = EdgeMetrics()
        import structlog

        self.gate = Gate(HttpLimits(**limits), self.metrics, structlog.get_logger("t"))
        self.cls = bound_to(self.gate)
        self.config = uvicorn.Config(
            ok_app, http=self.cls, ws="none", lifespan="off", log_config=None
        )
        self.config.load()
        self.state = ServerState()

    def connect(self) -> Transport:
        proto = self.cls(config=self.config, server_state=self.state, app_state={})
        transport = Transport()
        transport.protocol = proto
        proto.connection_made(transport)
        return transport

    def errors(self, code: str) -> float:
        return self.metrics.errors.get(("http", code))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_request_in_one_read_is_answered() -> None:
    async def go() -> None:
        server = Server()
        t = server.connect()
        t.protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.01)
        assert t.out.startswith(b"HTTP/1.1 200") and not t.closed

    run(go())


def test_headers_past_the_limit_get_a_431() -> None:
    async def go() -> None:
        server = Server(max_header_bytes=1024)
        t = server.connect()
        t.protocol.data_received(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 600)
        assert not t.closed
        t.protocol.data_received(b"a" * 600)
        assert t.closed and t.out.startswith(b"HTTP/1.1 431")
        assert b"EDGEPUB_MAX_HEADER" in t.out
        await asyncio.sleep(0)
        assert server.errors("header_too_large") == 1 and server.gate.open == 0

    run(go())


def test_a_large_body_in_the_same_read_as_its_headers_is_no_header_overflow() -> None:
    async def go() -> None:
        server = Server(max_header_bytes=1024)
        t = server.connect()
        body = b"x" * 4096
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        t.protocol.data_received(head + body)
        await asyncio.sleep(0.01)
        assert t.out.startswith(b"HTTP/1.1 200")

    run(go())


@pytest.mark.parametrize(
    "sent,status",
    [
        (b"", None),  # nothing at all: closed without an answer
        (b"GET / HTTP/1.1\r\nHost:", b"408"),  # half the headers
    ],
)
def test_headers_that_do_not_arrive_in_time(sent: bytes, status: bytes | None) -> None:
    async def go() -> None:
        server = Server(header_timeout_s=0.05)
        t = server.connect()
        if sent:
            t.protocol.data_received(sent)
        await asyncio.sleep(0.2)
        assert t.closed
        assert t.out.startswith(b"HTTP/1.1 " + status) if status else t.out == b""
        assert server.errors("header_timeout") == 1

    run(go())


def test_a_body_that_does_not_arrive_in_time() -> None:
    async def go() -> None:
        server = Server(body_timeout_s=0.05)
        t = server.connect()
        t.protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab")
        await asyncio.sleep(0.2)
        assert t.closed and t.out.startswith(b"HTTP/1.1 408") and b"body" in t.out
        assert server.errors("body_timeout") == 1

    run(go())


def test_a_trickle_of_header_bytes_does_not_reset_the_deadline() -> None:
    async def go() -> None:
        server = Server(header_timeout_s=0.1)
        t = server.connect()
        for byte in b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaa":
            if t.closed:
                break
            t.protocol.data_received(bytes([byte]))
            await asyncio.sleep(0.01)
        assert t.closed and t.out.startswith(b"HTTP/1.1 408")

    run(go())


def test_connections_past_the_cap_get_a_503_and_freed_ones_are_reused() -> None:
    async def go() -> None:
        server = Server(max_connections=2)
        first, second = server.connect(), server.connect()
        third = server.connect()
        assert third.closed and third.out.startswith(b"HTTP/1.1 503")
        assert not first.closed and server.gate.open == 2
        first.close()
        await asyncio.sleep(0)
        fourth = server.connect()
        assert not fourth.closed and server.gate.open == 2
        assert server.errors("too_many_connections") == 1
        second.close()
        fourth.close()

    run(go())


def test_bytes_that_are_not_http_get_a_400() -> None:
    async def go() -> None:
        server = Server()
        t = server.connect()
        t.protocol.data_received(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # TLS hello
        assert t.closed and t.out.startswith(b"HTTP/1.1 400")
        assert server.errors("invalid_http") == 1

    run(go())
