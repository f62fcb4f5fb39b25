"""Request errors with their HTTP status; each message names the offending field."""

from __future__ import annotations

from typing import ClassVar

from edgepub.shared.errors import EdgepubError, InvalidRequestError, NotFoundError


class RequestError(EdgepubError):
    """Anything the client can fix; ``field`` is the input/field the message is about."""

    status: ClassVar[int] = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Response headers the answer needs besides the JSON body's."""
        return []


class BadRequest(RequestError, InvalidRequestError):
    status = 400


class UnknownTarget(RequestError, NotFoundError):
    """An unknown pipeline or model name, or an unknown path."""

    status = 404
    code = "not_found"


class MethodNotAllowed(RequestError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class NotReady(RequestError):
    """No pipeline loaded yet (first start still pulling)."""

    status = 503
    code = "not_ready"


class Overloaded(RequestError):
    """As many large or slow requests in the works as the edge allows (EDGEPUB_MAX_INFLIGHT)."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, field=None)
        self.retry_after_s = retry_after_s

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"%d" % self.retry_after_s)]
