"""One HTTP exchange over raw ASGI: the request (headers read once), a size-limited body,
one response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
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


_media_types: dict[bytes, str] = {}


def _media_type(raw: bytes) -> str:
    """``Content-Type`` without parameters, lower case (remembered: clients repeat it)."""
    kind = raw.split(b";", 1)[0].strip().decode("latin-1").lower()
    if len(_media_types) < 64:
        _media_types[raw] = kind
    return kind


class ClientGone(Exception):
    """The client disconnected before its body arrived; nothing to answer."""


class Request:
    """What a handler needs of one request."""

    __slots__ = ("headers", "media_type", "method", "path", "receive", "route", "send")

    def __init__(self, scope: Scope, receive: Receive, send: Send, route: Route | None) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.receive = receive
        self.send = send
        self.route = route
        raw = self.headers.get(b"content-type")
        self.media_type: str = "" if raw is None else _media_types.get(raw) or _media_type(raw)

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

    async def body(self, limit: int) -> bytes:
        """The whole body, refusing more than ``limit`` bytes before reading them."""
        declared = self.headers.get(b"content-length")
        if declared is not None:
            size = self.int_header(b"content-length", "Content-Length") or 0
            if size > limit:
                raise PayloadTooLarge(
                    f"request body is {size} bytes; this edge accepts at most {limit} "
                    "(EDGEPUB_MAX_BODY)",
                    field="body",
                )
            message = await self.receive()
            if not message.get("more_body") and message["type"] == "http.request":
                return message.get("body", b"")  # type: ignore[no-any-return]
        else:
            message = await self.receive()
        return await self._more(message, limit)

    async def _more(self, message: Message, limit: int) -> bytes:
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
                return b"".join(chunks)
            message = await self.receive()

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if extra:
            headers.extend(extra)
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def respond_json(self, status: int, value: Any) -> None:
        await self.respond(status, _encoder.encode(value))


def error_body(message: str, code: str, field: str | None) -> bytes:
    """``{"error": ...}`` is what KServe v2 clients read; code and field help everyone else."""
    body: dict[str, Any] = {"error": message, "code": code}
    if field is not None:
        body["field"] = field
    return _encoder.encode(body)
