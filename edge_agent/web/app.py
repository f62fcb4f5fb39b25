"""The edge's HTTP surface: a raw ASGI application, and the same answers without ASGI for
requests that arrive whole and are quick.

No framework: the routes are a dict and a few prefixes (``routes.py``). Every handler is a
plain function from a ``Request`` (and its body) to a ``Reply``; two shells run them:

- ``__call__`` (ASGI): reads the body, works off the event loop what is not known to be
  quick (``offload.py``), sends the reply;
- ``answer_now``: the protocol's quick path (``protocol.py``) calls it from the parser's
  callback with a small body already read, and writes the reply itself, with no task and
  no ASGI messages (uvicorn's per-request machinery was the largest cost of a small
  request; ``bench/inference.py``). It returns None, having done nothing, when the request
  needs the event loop's help (a slow model): the protocol then serves it over ASGI.

Errors a client can fix are ``RequestError``s answered with their status and
``{"error", "code", "field"}``, counted by code and logged one line each (no traceback)
through a ``LogThrottle``; a 500 is left for the agent's own bugs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from .. import answers
from ..answers import Answer, Answerer, Ask, Fed, Feeder
from ..config import DEFAULT_MAX_RECORDS
from ..errors import (
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    RequestError,
    UnknownTarget,
    UnsupportedMediaType,
)
from ..inference import InferenceService
from ..metrics import EdgeMetrics
from ..offload import INLINE_BYTES, INLINE_RUN_NS
from ..protocols import arrow, oip
from ..runtime import LoadedPipeline
from .exchange import (
    ClientGone,
    Receive,
    Reply,
    Request,
    Scope,
    Send,
    check_length,
    error_body,
    json_reply,
)
from .routes import Route, route
from .throttle import LogThrottle

log = structlog.get_logger("edgepub.edge.http")
Plan = tuple[LoadedPipeline, Feeder, Answerer, Ask]
_ARROW = {arrow.FILE, arrow.STREAM}
_JSON_TYPES = {"", "application/json", "text/json"}
_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_CLOSE = (b"connection", b"close")
_PIPELINE_ENDPOINTS = frozenset({"infer", "pipeline_infer"})
_INFER_ENDPOINTS = frozenset({"infer", "pipeline_infer", "model_infer"})
_OIP_ENDPOINTS = frozenset({"model_metadata", "model_ready", "model_infer"})


def _refusal(request: Request, found: Route | None) -> RequestError:
    if found is None:
        return UnknownTarget(f"no endpoint at {request.path!r}", field="path")
    return MethodNotAllowed(
        f"{request.method} is not allowed on {request.path}; use {found.method}", field="method"
    )


def _protocol(found: Route | None, media_type: str) -> str:
    """The protocol a request is counted under in ``/metrics``."""
    if found is None:
        return "admin"
    if found.endpoint in _PIPELINE_ENDPOINTS:
        return "arrow" if media_type in _ARROW else "records"
    return "oip" if found.endpoint in _OIP_ENDPOINTS else "admin"


def _arrow_reply(request: Request) -> str | None:
    """Arrow flavour of the answer: what Accept asks for, else what the request was."""
    accept = request.header(b"accept").lower()
    for kind in (arrow.STREAM, arrow.FILE):
        if kind in accept:
            return kind
    if "json" in accept:
        return None
    return request.media_type if request.media_type in _ARROW else None


class EdgeApp:
    def __init__(
        self,
        service: InferenceService,
        metrics: EdgeMetrics,
        max_body: int,
        max_records: int = DEFAULT_MAX_RECORDS,
        status: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.service = service
        self.status_view = status or (lambda: {"ready": service.ready})
        self.metrics = metrics
        self.max_body = max_body  # on the wire, and what an Arrow body decodes to
        self.max_records = max_records
        self.ask = Ask(max_body, max_records)  # what most requests ask for
        self.throttle = LogThrottle(log)
        # inference requests inside the ASGI app right now, by protocol (the quick path's
        # are never in flight: each is answered within one call)
        self.in_flight = dict.fromkeys(("records", "arrow", "oip", "admin"), 0)
        metrics.gauge(
            "edgepub_edge_inference_requests_in_flight",
            "Inference requests being served, by protocol.",
            lambda: {(p,): float(n) for p, n in self.in_flight.items() if p != "admin"},
            ("protocol",),
        )
        offload = service.offload
        metrics.gauge(
            "edgepub_edge_offloaded_requests",
            "Inference requests worked on off the event loop now, waiting or running "
            f"(at most {offload.max_inflight}, EDGEPUB_MAX_INFLIGHT; 503 past it).",
            lambda: float(offload.inflight),
        )
        self.planners: dict[str, Callable[[Request], Plan]] = {
            "infer": self._plan_pipeline,
            "pipeline_infer": self._plan_pipeline,
            "model_infer": self._plan_model,
        }
        self.handlers: dict[str, Callable[[Request], Reply]] = {
            "list_pipelines": self.list_pipelines,
            "list_models": self.list_models,
            "metrics": self.metrics_text,
            "status": self.status,
            "server_metadata": self.server_metadata,
            "live": self.live,
            "ready": self.ready,
            "model_metadata": self.model_metadata,
            "model_ready": self.model_ready,
        }

    # --- the two shells ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        found = route(scope["path"])
        request = Request(scope["method"], scope["path"], scope["headers"], found, receive, send)
        protocol = _protocol(found, request.media_type)
        try:
            if found is None or request.method != found.method:
                raise _refusal(request, found)
            if found.endpoint in _INFER_ENDPOINTS:
                flight = self.in_flight
                flight[protocol] += 1
                try:
                    reply = await self._infer(request)
                finally:
                    flight[protocol] -= 1
            else:
                reply = self.handlers[found.endpoint](request)
        except RequestError as exc:
            reply = self._refused(request, protocol, exc)
        except ClientGone:
            return
        except Exception as exc:
            reply = self._failed(request, protocol, exc)
        await request.send_reply(reply)
        infer = found is not None and found.endpoint in _INFER_ENDPOINTS
        self.metrics.observe(protocol, reply.status, time.perf_counter() - started, infer)

    def answer_now(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> Reply | None:
        """The reply to a request whose whole (small) body is ``body``, or None (nothing
        done) if it should be served over ASGI instead."""
        started = time.perf_counter()
        found = route(path)
        request = Request(method, path, headers, found)
        request.consumed = True
        protocol = _protocol(found, request.media_type)
        try:
            if found is None or method != found.method:
                raise _refusal(request, found)
            if found.endpoint in _INFER_ENDPOINTS:
                arrived = time.time_ns() // 1_000_000
                check_length(len(body), self.max_body)  # (EDGEPUB_MAX_BODY may be < 64Ki)
                plan = self.planners[found.endpoint](request)
                done = self._infer_inline(plan, body, arrived)
                if type(done) is Fed:
                    return None  # a slow model: the ASGI path runs it off the loop
                reply: Reply = done  # type: ignore[assignment]
            else:
                reply = self.handlers[found.endpoint](request)
        except RequestError as exc:
            reply = self._refused(request, protocol, exc)
        except Exception as exc:
            reply = self._failed(request, protocol, exc)
        infer = found is not None and found.endpoint in _INFER_ENDPOINTS
        self.metrics.observe(protocol, reply.status, time.perf_counter() - started, infer)
        return reply

    def _refused(self, request: Request, protocol: str, exc: RequestError) -> Reply:
        status = exc.status
        self.metrics.errors.inc((protocol, exc.code))
        self.throttle.emit(
            exc.code,
            "request_refused",
            status=status,
            field=exc.field,
            path=request.path,
            protocol=protocol,
            error=exc.message[:300],
        )
        # After a 413, or a 503 before the body was read, the rest of the body is not worth
        # reading: close instead.
        extra = exc.headers()
        if isinstance(exc, PayloadTooLarge) or (
            isinstance(exc, Overloaded) and not request.consumed
        ):
            extra.append(_CLOSE)
        return Reply(status, error_body(exc.message, exc.code, exc.field), extra=extra or None)

    def _failed(self, request: Request, protocol: str, exc: Exception) -> Reply:
        self.metrics.errors.inc((protocol, "internal"))
        self.throttle.emit(
            "internal", "request_failed", level="error", exc_info=True, path=request.path
        )
        return Reply(500, error_body(f"internal error: {exc}", "internal", None))

    # --- inference: pandas-records, Arrow, OIP ----------------------------------------

    def _plan_pipeline(self, request: Request) -> Plan:
        """``POST /pipelines/<name>`` and ``POST /infer``: pandas-records JSON or Arrow."""
        service = self.service
        name = request.route.name  # type: ignore[union-attr]
        target = service.pipeline
        if target is None or (name is not None and name != target.name):
            target = service.current() if name is None else service.pipeline_named(name)
        kind = request.media_type
        if kind in _ARROW:
            ask = Ask(self.max_body, self.max_records, kind == arrow.STREAM, _arrow_reply(request))
            return target, answers.arrow_feed, answers.arrow_answer, ask
        if kind not in _JSON_TYPES and not kind.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type {kind!r} is not supported; send 'application/json; "
                f"format=pandas-records', {arrow.FILE!r} or {arrow.STREAM!r}",
                field="Content-Type",
            )
        ask = self.ask
        if b"accept" in request.headers:
            ask = Ask(self.max_body, self.max_records, reply=_arrow_reply(request))
        return target, answers.records_feed, answers.records_answer, ask

    def _plan_model(self, request: Request) -> Plan:
        """``POST /v2/models/<name>/infer``: the Open Inference Protocol."""
        target = self._model(request)
        split = request.int_header(oip.HEADER_LENGTH, "Inference-Header-Content-Length")
        oip.check_media_type(request.media_type, split)
        ask = self.ask if split is None else Ask(self.max_body, self.max_records, split=split)
        return target, answers.oip_feed, answers.oip_answer, ask

    def _infer_inline(self, plan: Plan, body: bytes, arrived: int) -> Reply | Fed:
        """A small body's request on this thread: its reply, or (the model's measured cost
        says the run would be slow) its feed, for a worker to finish."""
        target, feeder, answerer, ask = plan
        fed = feeder(target, body, ask)
        cost = target.cost.ns_per_element
        if cost < 0.0 or cost * fed.size > INLINE_RUN_NS:
            return fed
        return self._reply(answerer(self.service, target, fed, arrived, ask, len(body)))

    def _reply(self, answer: Answer) -> Reply:
        self.service.record(answer.event, answer.weight)
        return Reply(200, answer.body, answer.content_type, answer.extra)

    async def _infer(self, request: Request) -> Reply:
        """Over ASGI: a small body as ``answer_now`` would; the rest off the loop, holding
        one of ``EDGEPUB_MAX_INFLIGHT`` places (taken before a large body is read)."""
        arrived = time.time_ns() // 1_000_000
        plan = self.planners[request.route.endpoint](request)  # type: ignore[union-attr]
        target, feeder, answerer, ask = plan
        service = self.service
        offload = service.offload
        declared = request.length()
        if declared is not None and declared <= INLINE_BYTES:
            body = await request.body(self.max_body, declared)
            done = self._infer_inline(plan, body, arrived)
            if type(done) is not Fed:
                return done  # type: ignore[return-value]
            with offload.slot():
                answer = await offload.run(answerer, service, target, done, arrived, ask, len(body))
            return self._reply(answer)
        check_length(declared, self.max_body)
        with offload.slot():  # before reading: a 503 costs the edge nothing
            parts = await request.body_parts(self.max_body, declared)
            answer = await offload.run(
                answers.whole, feeder, answerer, service, target, parts, arrived, ask
            )
        return self._reply(answer)

    # --- the rest ------------------------------------------------------------------------

    def list_pipelines(self, request: Request) -> Reply:
        pipeline = self.service.pipeline
        items = [] if pipeline is None else [{"id": pipeline.name, "status": "Running"}]
        return json_reply(200, {"pipelines": items})

    def list_models(self, request: Request) -> Reply:
        pipeline = self.service.pipeline
        models = [
            {"name": m.name, "sha": m.sha256, "status": "Running", "version": m.version}
            for m in (pipeline.models if pipeline is not None else ())
        ]
        return json_reply(200, {"models": models})

    def metrics_text(self, request: Request) -> Reply:
        return Reply(200, self.metrics.render().encode(), _PROMETHEUS)

    def status(self, request: Request) -> Reply:
        """What serves and how the link to Ops stands (JSON, for people and probes)."""
        return json_reply(200, self.status_view())

    def server_metadata(self, request: Request) -> Reply:
        return json_reply(200, oip.server_metadata())

    def live(self, request: Request) -> Reply:
        return json_reply(200, {"live": True})

    def ready(self, request: Request) -> Reply:
        ready = self.service.ready
        body: dict[str, Any] = {"ready": ready}
        if not ready:
            body["reason"] = self.service.waiting_reason
        return json_reply(200 if ready else 503, body)

    def _model(self, request: Request) -> Any:
        found = request.route
        assert found is not None  # routed requests only
        return self.service.model_named(found.name or "", found.version)

    def model_metadata(self, request: Request) -> Reply:
        return json_reply(200, oip.model_metadata(self._model(request)))

    def model_ready(self, request: Request) -> Reply:
        target = self._model(request)
        return json_reply(200, {"name": target.name, "ready": True})
