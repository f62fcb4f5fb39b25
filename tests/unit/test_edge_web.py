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
from edgepub.edge_agent.web.exchange import Reply
from edgepub.edge_agent.web.protocol import QUICK_BYTES, Gate, bound_to, canned
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
    def __init__(self, quick: Any = None, keep_alive: int = 5, **limits: Any) -> None:
        self.metrics = EdgeMetrics()
        import structlog

        self.gate = Gate(HttpLimits(**limits), self.metrics, structlog.get_logger("t"), quick)
        self.cls = bound_to(self.gate)
        self.config = uvicorn.Config(
            ok_app,
            http=self.cls,
            ws="none",
            lifespan="off",
            log_config=None,
            timeout_keep_alive=keep_alive,
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


# --- the quick path ---------------------------------------------------------------------------


class Quick:
    """An app's ``answer_now``: answers what it is given, but for the paths it declines."""

    def __init__(self, decline: str = "/slow") -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.decline = decline

    def __call__(self, method: str, path: str, headers: Any, body: bytes) -> Reply | None:
        if path == self.decline:
            return None
        self.seen.append((method, path, body))
        return Reply(200, b'{"quick":"%s"}' % body, extra=[(b"x-quick", b"1")])


def post(path: bytes, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body)


def test_a_small_request_is_answered_at_once_and_in_order() -> None:
    async def go() -> None:
        quick = Quick()
        server = Server(quick)
        t = server.connect()
        t.protocol.data_received(post(b"/a", b"1") + post(b"/b", b"22")[:30])
        assert b'{"quick":"1"}' in t.out and server.gate.answered_quick == 1  # no task
        t.protocol.data_received(post(b"/b", b"22")[30:])
        answers = t.out.split(b"HTTP/1.1 200 OK\r\n")[1:]
        assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [
            b'{"quick":"1"}',
            b'{"quick":"22"}',
        ]
        assert b"x-quick: 1" in answers[0]
        assert quick.seen == [("POST", "/a", b"1"), ("POST", "/b", b"22")] and not t.closed

    run(go())


@pytest.mark.parametrize(
    "raw",
    [
        post(b"/slow", b"x"),  # the app declines: served over ASGI, body and all
        post(b"/big", b"x" * (QUICK_BYTES + 1)),  # too large for the quick path
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % (QUICK_BYTES + 10)
        + b"y" * (QUICK_BYTES + 10)
        + b"\r\n0\r\n\r\n",
        b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
        b"PUT /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
        b"POST /h HTTP/1.0\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ],
    ids=["declined", "large", "chunked", "expect", "put", "http-1.0"],
)
def test_what_the_quick_path_does_not_take_is_served_over_asgi(raw: bytes) -> None:
    async def go() -> None:
        quick = Quick()
        server = Server(quick)
        t = server.connect()
        t.protocol.data_received(raw)
        await asyncio.sleep(0.05)
        assert t.out.endswith(b"ok") and b"quick" not in t.out  # ok_app's answer
        assert server.gate.answered_quick == 0 and not quick.seen

    run(go())


def test_a_quick_body_that_does_not_arrive_in_time_gets_its_408() -> None:
    async def go() -> None:
        server = Server(Quick(), body_timeout_s=0.05)
        t = server.connect()
        t.protocol.data_received(post(b"/a", b"1"))  # one answered request first
        t.protocol.data_received(post(b"/b", b"12345")[:-2])
        await asyncio.sleep(0.2)
        assert t.closed and t.out.count(b"HTTP/1.1 408") == 1

    run(go())


def test_an_idle_connection_is_closed_after_keep_alive_but_not_a_busy_one() -> None:
    async def go() -> None:
        server = Server(Quick(), keep_alive=1)
        idle, busy = server.connect(), server.connect()
        idle.protocol.data_received(post(b"/a", b"1"))
        busy.protocol.data_received(post(b"/a", b"1"))
        for _ in range(12):  # busy: a request every 0.1 s, so never idle for 1 s
            await asyncio.sleep(0.1)
            busy.protocol.data_received(post(b"/a", b"1"))
        assert idle.closed and not busy.closed
        await asyncio.sleep(1.5)
        assert busy.closed

    run(go())
