"""One HTTP exchange: the request (headers read once), a size-limited body, one reply.

A ``Request`` is built from the method, path and header list, whichever way the request
came; a ``Reply`` is the whole answer as data. Over ASGI, ``Request`` reads the body from
``receive`` and ``send_reply`` sends the reply; the protocol's quick path (``protocol.py``)
hands the body in and writes the reply itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import msgspec

from ..errors import BadRequest, PayloadTooLarge
from .routes import Route

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"
_encoder = msgspec.json.Encoder()


class Reply(msgspec.Struct, frozen=True, gc=False):
    """A whole answer: built once per request, positionally (msgspec's are the cheapest)."""

    status: int
    body: bytes | list[Any]  # bytes, or pieces (bytes, memoryviews) that make it
    content_type: bytes = JSON
    extra: list[tuple[bytes, bytes]] | None = None


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, _encoder.encode(value))


def error_body(message: str, code: str, field: str | None) -> bytes:
    """``{"error": ...}`` is what KServe v2 clients read; code and field help everyone else."""
    body: dict[str, Any] = {"error": message, "code": code}
    if field is not None:
        body["field"] = field
    return _encoder.encode(body)


_media_types: dict[bytes, str] = {}


def _media_type(raw: bytes) -> str:
    """``Content-Type`` without parameters, lower case (remembered: clients repeat it)."""
    kind = raw.split(b";", 1)[0].strip().decode("latin-1").lower()
    if len(_media_types) < 64:
        _media_types[raw] = kind
    return kind


def check_length(declared: int | None, limit: int) -> None:
    """A declared body over ``limit`` is refused (413) before any of it is read."""
    if declared is not None and declared > limit:
        raise PayloadTooLarge(
            f"request body is {declared} bytes; this edge accepts at most {limit} "
            "(EDGEPUB_MAX_BODY)",
            field="body",
        )


class ClientGone(Exception):
    """The client disconnected before its body arrived; nothing to answer."""


class Request:
    """What a handler needs of one request."""

    __slots__ = ("consumed", "headers", "media_type", "method", "path", "receive", "route", "send")

    def __init__(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        route: Route | None,
        receive: Receive | None = None,
        send: Send | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.headers: dict[bytes, bytes] = dict(headers)
        self.route = route
        self.receive = receive
        self.send = send
        raw = self.headers.get(b"content-type")
        self.media_type: str = "" if raw is None else _media_types.get(raw) or _media_type(raw)
        self.consumed = False  # the body was read (else a refusal closes the connection)

    def header(self, name: bytes) -> str:
        return self.headers.get(name, b"").decode("latin-1")

    def int_header(self, name: bytes, label: str) -> int | None:
        raw = self.headers.get(name)
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise BadRequest(
                f"{label} {raw.decode('latin-1')!r} is not a whole number", field=label
            ) from None

    def length(self) -> int | None:
        """``Content-Length``, or None for a chunked body."""
        return self.int_header(b"content-length", "Content-Length")

    # --- over ASGI -----------------------------------------------------------------------

    async def body(self, limit: int, declared: int | None = None) -> bytes:
        """The whole body, refusing more than ``limit`` bytes before reading them;
        ``declared``: ``Content-Length`` if the caller already read it."""
        check_length(self.length() if declared is None else declared, limit)
        message = await self.receive()  # type: ignore[misc]
        self.consumed = True
        if not message.get("more_body") and message["type"] == "http.request":
            return message.get("body", b"")  # type: ignore[no-any-return]
        return b"".join(await self._parts(message, limit))

    async def body_parts(self, limit: int, declared: int | None = None) -> list[bytes]:
        """``body`` as the chunks it arrived in, for a large body: joining 64 MiB takes the
        event loop tens of milliseconds, so the worker that decodes it joins it
        (``answers.joined``)."""
        check_length(self.length() if declared is None else declared, limit)
        message = await self.receive()  # type: ignore[misc]
        self.consumed = True
        return await self._parts(message, limit)

    async def _parts(self, message: Message, limit: int) -> list[bytes]:
        chunks: list[bytes] = []
        size = 0
        while True:
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(
                    f"request body exceeds {limit} bytes (EDGEPUB_MAX_BODY)", field="body"
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks
            message = await self.receive()  # type: ignore[misc]

    async def send_reply(self, reply: Reply) -> None:
        """The reply; a body in pieces is sent one piece at a time (never joined: a large
        answer is not copied again, and sending waits while the client reads slowly)."""
        send = self.send
        assert send is not None  # over ASGI
        body = reply.body
        pieces = type(body) is not bytes
        length = sum(map(len, body)) if pieces else len(body)
        headers = [(b"content-type", reply.content_type), (b"content-length", b"%d" % length)]
        if reply.extra:
            headers.extend(reply.extra)
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if not pieces:
            await send({"type": "http.response.body", "body": body})
            return
        last = len(body) - 1
        for index, piece in enumerate(body):
            await send({"type": "http.response.body", "body": piece, "more_body": index < last})
