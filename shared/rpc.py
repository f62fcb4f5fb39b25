"""Request/reply over NATS with typed bodies and typed errors.

A reply is the msgpack of the response Struct; a failure is an ``ErrorReply`` with the
``Edgepub-Error`` header set, which ``call`` turns back into the same error class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from . import subjects
from .errors import EdgepubError, InvalidRequestError, ServiceUnavailableError, from_code
from .schemas import ErrorReply, decode, encode

log = structlog.get_logger("edgepub.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Route(msgspec.Struct, frozen=True):
    request_type: type[Any]
    handler: Callable[[str, Any], Awaitable[msgspec.Struct]]  # (user, request) -> response


async def serve(
    nc: NATS,
    routes: Mapping[str, Route],
    stop: asyncio.Event,
    *,
    max_in_flight: int = 64,
) -> None:
    """Answer requests on ``edgepub.req.*.>`` until ``stop``; finish those in hand."""
    slots = asyncio.Semaphore(max_in_flight)
    async with asyncio.TaskGroup() as tg:

        async def on_msg(msg: Msg) -> None:
            await slots.acquire()
            tg.create_task(_answer(nc, msg, routes, slots))

        sub = await nc.subscribe(
            subjects.request_wildcard(), queue=subjects.REQUEST_QUEUE, cb=on_msg
        )
        log.info("requests_serving", subject=subjects.request_wildcard())
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
    log.info("requests_stopped")


async def _answer(
    nc: NATS, msg: Msg, routes: Mapping[str, Route], slots: asyncio.Semaphore
) -> None:
    try:
        user, verb = subjects.parse_request(msg.subject)
        route = routes.get(verb)
        if route is None:
            raise InvalidRequestError(f"unknown request {verb!r}; known: {sorted(routes)}")
        try:
            request = decode(route.request_type, msg.data)
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(f"bad {verb} request: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise InvalidRequestError(f"{verb} request is not msgpack: {exc}") from exc
        response = await route.handler(user, request)
        await msg.respond(encode(response))
    except EdgepubError as exc:
        await _respond_error(nc, msg, exc.code, exc.message)
    except ValueError as exc:
        await _respond_error(nc, msg, InvalidRequestError.code, str(exc))
    except Exception as exc:
        log.error("request_failed", subject=msg.subject, error=repr(exc), exc_info=exc)
        await _respond_error(nc, msg, EdgepubError.code, f"internal error: {exc}")
    finally:
        slots.release()


async def _respond_error(nc: NATS, msg: Msg, code: str, message: str) -> None:
    if not msg.reply:
        return
    await nc.publish(
        msg.reply,
        encode(ErrorReply(code=code, message=message)),
        headers={subjects.HEADER_ERROR_CODE: code},
    )


async def call(
    nc: NATS,
    subject: str,
    request: msgspec.Struct,
    response_type: type[Resp],
    *,
    timeout: float = 10.0,  # noqa: ASYNC109 - passed to nc.request, which owns the wait
) -> Resp:
    """Send a request and decode the answer, re-raising a service's error as its class."""
    try:
        reply = await nc.request(subject, encode(request), timeout=timeout)
    except NoRespondersError:
        raise ServiceUnavailableError(
            f"no service answers {subject}; is the publish service running?"
        ) from None
    except (TimeoutError, NatsTimeoutError):
        raise ServiceUnavailableError(
            f"no answer on {subject} within {timeout:.0f}s; is the publish service running?"
        ) from None
    if reply.headers and subjects.HEADER_ERROR_CODE in reply.headers:
        err = decode(ErrorReply, reply.data)
        raise from_code(err.code, err.message)
    return decode(response_type, reply.data)
