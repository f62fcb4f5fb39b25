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
from .transient import TRANSIENT

log = structlog.get_logger("edgepub.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Route(msgspec.Struct, frozen=True):
    request_type: type[Any]
    handler: Callable[[str, Any], Awaitable[msgspec.Struct]]  # (caller, request) -> response


# What a subject says about a request: who sent it (the broker vouches for it), what it asks
# (named in errors) and the route that answers it.
Resolve = Callable[[str], tuple[str, str, Route]]


async def serve(
    nc: NATS,
    service: str,
    routes: Mapping[str, Route],
    stop: asyncio.Event,
    *,
    max_in_flight: int = 64,
) -> None:
    """Answer ``service``'s verbs (``edgepub.req.*.<service>.>``) until ``stop``; finish the
    requests in hand. Every route must belong to ``service``."""
    strays = sorted(v for v in routes if subjects.service_of(v) != service)
    if strays:
        raise ValueError(f"routes {strays} do not belong to the {service} service")

    def resolve(subject: str) -> tuple[str, str, Route]:
        user, verb = subjects.parse_request(subject)
        route = routes.get(verb)
        if route is None:
            raise InvalidRequestError(f"unknown request {verb!r}; known: {sorted(routes)}")
        return user, verb, route

    wildcard = subjects.request_wildcard(service)
    queue = subjects.request_queue(service)
    await serve_subjects(nc, (wildcard,), queue, resolve, stop, max_in_flight=max_in_flight)


async def serve_subjects(
    nc: NATS,
    wildcards: tuple[str, ...],
    queue: str,
    resolve: Resolve,
    stop: asyncio.Event,
    *,
    max_in_flight: int = 64,
) -> None:
    """Answer requests on ``wildcards`` (one queue group) until ``stop``, routing each with
    ``resolve``; finish the requests in hand."""
    slots = asyncio.Semaphore(max_in_flight)
    async with asyncio.TaskGroup() as tg:

        async def on_msg(msg: Msg) -> None:
            await slots.acquire()
            tg.create_task(_answer(nc, msg, resolve, slots))

        subs = [await nc.subscribe(w, queue=queue, cb=on_msg) for w in wildcards]
        log.info("requests_serving", subjects=list(wildcards))
        try:
            await stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
    log.info("requests_stopped", subjects=list(wildcards))


async def _answer(nc: NATS, msg: Msg, resolve: Resolve, slots: asyncio.Semaphore) -> None:
    try:
        caller, what, route = resolve(msg.subject)
        try:
            request = decode(route.request_type, msg.data)
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(f"bad {what} request: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise InvalidRequestError(f"{what} request is not msgpack: {exc}") from exc
        except RecursionError as exc:  # msgspec's guard against nesting past the C stack
            raise InvalidRequestError(f"{what} request nests too deeply") from exc
        response = await route.handler(caller, request)
        await msg.respond(encode(response))
    except EdgepubError as exc:
        # A client's mistake or a known condition: its class says so, no traceback.
        await _respond_error(nc, msg, exc.code, exc.message)
    except TRANSIENT as exc:
        # JetStream had no leader for a moment (a node died): the caller may send the
        # same request again (every request is idempotent), and the SDK does
        log.warning("request_unavailable", subject=msg.subject, error=repr(exc))
        await _respond_error(
            nc,
            msg,
            ServiceUnavailableError.code,
            f"{msg.subject}: JetStream is unavailable for a moment ({type(exc).__name__}); "
            "send the request again",
        )
    except Exception as exc:
        # Anything else is a bug here, not the caller's fault (a ValueError included).
        log.error("request_failed", subject=msg.subject, error=repr(exc), exc_info=exc)
        await _respond_error(
            nc, msg, EdgepubError.code, f"internal error in {msg.subject}: {type(exc).__name__}"
        )
    finally:
        slots.release()


def _service(subject: str) -> str:
    try:
        return subjects.service_of(subjects.parse_request(subject)[1])
    except ValueError:
        return "edgepub"


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
            f"no {_service(subject)} service answers {subject}; is it running?"
        ) from None
    except (TimeoutError, NatsTimeoutError):
        raise ServiceUnavailableError(
            f"no answer from the {_service(subject)} service on {subject} within "
            f"{timeout:.0f}s; is it running?"
        ) from None
    if reply.headers and subjects.HEADER_ERROR_CODE in reply.headers:
        err = decode(ErrorReply, reply.data)
        raise from_code(err.code, err.message)
    return decode(response_type, reply.data)
