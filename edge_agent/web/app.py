"""The edge's HTTP surface as one raw ASGI application.

No framework: the routes are a dict and a few prefixes (``routes.py``), and each request
costs one routing call, one body read and one response. Errors a client can fix are
``RequestError``s answered with their status and ``{"error", "code", "field"}``, counted by
code and logged one line each (no traceback) through a ``LogThrottle``; a 500 is left for
the agent's own bugs.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog

from ..config import DEFAULT_MAX_RECORDS
from ..errors import (
    MethodNotAllowed,
    PayloadTooLarge,
    RequestError,
    UnknownTarget,
    UnsupportedMediaType,
)
from ..inference import OFFLOAD_ELEMENTS, InferenceService, now_ms
from ..metrics import EdgeMetrics
from ..protocols import arrow, oip, records
from .exchange import ClientGone, Receive, Request, Scope, Send, error_body
from .routes import Route, route
from .throttle import LogThrottle

log = structlog.get_logger("edgepub.edge.http")
Handler = Callable[[Request], Awaitable[int]]
_ARROW = {arrow.FILE, arrow.STREAM}
_JSON_TYPES = {"", "application/json", "text/json"}
_PROMETHEUS = b"text/plain; version=0.0.4; charset=utf-8"
_OCTETS = b"application/octet-stream"


_SIZE = operator.attrgetter("size")
_PIPELINE_ENDPOINTS = frozenset({"infer", "pipeline_infer"})
_OIP_ENDPOINTS = frozenset({"model_metadata", "model_ready", "model_infer"})


def _refusal(request: Request, found: Route | None) -> RequestError:
    if found is None:
        return UnknownTarget(f"no endpoint at {request.path!r}", field="path")
    return MethodNotAllowed(
        f"{request.method} is not allowed on {request.path}; use {found.method}", field="method"
    )


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
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.max_body = max_body  # on the wire, and what an Arrow body decodes to
        self.max_records = max_records
        self.throttle = LogThrottle(log)
        # inference requests inside the app right now, by protocol
        self.in_flight = dict.fromkeys(("records", "arrow", "oip", "admin"), 0)
        metrics.gauge(
            "edgepub_edge_inference_requests_in_flight",
            "Inference requests being served, by protocol.",
            lambda: {(p,): float(n) for p, n in self.in_flight.items() if p != "admin"},
            ("protocol",),
        )
        self.handlers: dict[str, Handler] = {
            "infer": self.pipeline_infer,
            "pipeline_infer": self.pipeline_infer,
            "list_pipelines": self.list_pipelines,
            "list_models": self.list_models,
            "metrics": self.metrics_text,
            "server_metadata": self.server_metadata,
            "live": self.live,
            "ready": self.ready,
            "model_metadata": self.model_metadata,
            "model_ready": self.model_ready,
            "model_infer": self.model_infer,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        found = route(scope["path"])
        request = Request(scope, receive, send, found)
        if found is None:
            protocol = "admin"
        elif found.endpoint in _PIPELINE_ENDPOINTS:
            protocol = "arrow" if request.media_type in _ARROW else "records"
        else:
            protocol = "oip" if found.endpoint in _OIP_ENDPOINTS else "admin"
        flight = self.in_flight
        try:
            if found is None or request.method != found.method:
                raise _refusal(request, found)
            if found.method == "POST":
                flight[protocol] += 1
                try:
                    status = await self.handlers[found.endpoint](request)
                finally:
                    flight[protocol] -= 1
            else:
                status = await self.handlers[found.endpoint](request)
        except RequestError as exc:
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
            # After a 413 the rest of the body is not worth reading: close instead.
            extra = [(b"connection", b"close")] if isinstance(exc, PayloadTooLarge) else None
            await request.respond(status, error_body(exc.message, exc.code, exc.field), extra=extra)
        except ClientGone:
            return
        except Exception as exc:
            status = 500
            self.metrics.errors.inc((protocol, "internal"))
            self.throttle.emit(
                "internal", "request_failed", level="error", exc_info=True, path=request.path
            )
            await request.respond(500, error_body(f"internal error: {exc}", "internal", None))
        self.metrics.observe(protocol, status, time.perf_counter() - started)

    # --- pandas-records and Arrow -------------------------------------------------------

    async def pipeline_infer(self, request: Request) -> int:
        """``POST /pipelines/<name>`` and ``POST /infer``: pandas-records JSON or Arrow."""
        arrived = now_ms()
        service = self.service
        name = request.route.name  # type: ignore[union-attr]
        target = service.pipeline
        if target is None or (name is not None and name != target.name):
            target = service.current() if name is None else service.pipeline_named(name)
        kind = request.media_type
        if kind in _ARROW:
            return await self._arrow_infer(request, target, arrived, kind)
        if kind not in _JSON_TYPES and not kind.endswith("+json"):
            raise UnsupportedMediaType(
                f"Content-Type {kind!r} is not supported; send 'application/json; "
                f"format=pandas-records', {arrow.FILE!r} or {arrow.STREAM!r}",
                field="Content-Type",
            )
        codec = records.codec(target)
        body = await request.body(self.max_body)
        feed, echoed = codec.to_feed(codec.decode(body, self.max_records))
        count = len(next(iter(echoed.values()))) if echoed else 0
        if sum(map(_SIZE, feed.values())) <= OFFLOAD_ELEMENTS:
            outputs, elapsed = service.infer_now(target, feed, count, arrived, echoed)
        else:
            outputs, elapsed = await service.infer(target, feed, count, arrived, echoed)
        metadata = records.Metadata(
            target.last_model, target.version, elapsed, [], service.partition
        )
        if b"accept" in request.headers and _arrow_reply(request) is not None:
            columns = {n: arrow.column_of(v) for n, v in echoed.items()}
            return await self._arrow_answer(request, columns, outputs, count, arrived, metadata)
        out = records.encode(echoed, outputs, count, arrived, metadata)
        await request.respond(200, out, records.CONTENT_TYPE)
        return 200

    async def _arrow_infer(self, request: Request, target: Any, arrived: int, kind: str) -> int:
        service = self.service
        body = await request.body(self.max_body)
        table = arrow.decode(body, kind == arrow.STREAM, self.max_body, self.max_records)
        feed, echoed = arrow.to_feed(table, target.inputs)
        count = table.num_rows
        outputs, elapsed = await service.infer(target, feed, count, arrived)
        metadata = records.Metadata(
            target.last_model, target.version, elapsed, [], service.partition
        )
        if _arrow_reply(request) is None:  # Accept asked for JSON
            rows = {n: col.to_pylist() for n, col in echoed.items()}
            out = records.encode(rows, outputs, count, arrived, metadata)
            await request.respond(200, out, records.CONTENT_TYPE)
            return 200
        return await self._arrow_answer(request, echoed, outputs, count, arrived, metadata)

    async def _arrow_answer(
        self,
        request: Request,
        echoed: dict[str, Any],
        outputs: dict[str, Any],
        count: int,
        arrived: int,
        metadata: records.Metadata,
    ) -> int:
        reply = _arrow_reply(request) or arrow.FILE
        meta = msgspec.structs.asdict(metadata)
        out = arrow.encode(echoed, outputs, count, arrived, meta, reply == arrow.STREAM)
        await request.respond(200, out, reply.encode())
        return 200

    async def list_pipelines(self, request: Request) -> int:
        pipeline = self.service.pipeline
        items = [] if pipeline is None else [{"id": pipeline.name, "status": "Running"}]
        await request.respond_json(200, {"pipelines": items})
        return 200

    async def list_models(self, request: Request) -> int:
        pipeline = self.service.pipeline
        models = [
            {"name": m.name, "sha": m.sha256, "status": "Running", "version": m.version}
            for m in (pipeline.models if pipeline is not None else ())
        ]
        await request.respond_json(200, {"models": models})
        return 200

    async def metrics_text(self, request: Request) -> int:
        await request.respond(200, self.metrics.render().encode(), _PROMETHEUS)
        return 200

    # --- Open Inference Protocol ---------------------------------------------------------

    async def server_metadata(self, request: Request) -> int:
        await request.respond_json(200, oip.server_metadata())
        return 200

    async def live(self, request: Request) -> int:
        await request.respond_json(200, {"live": True})
        return 200

    async def ready(self, request: Request) -> int:
        ready = self.service.ready
        body: dict[str, Any] = {"ready": ready}
        if not ready:
            body["reason"] = self.service.waiting_reason
        status = 200 if ready else 503
        await request.respond_json(status, body)
        return status

    def _model(self, request: Request) -> Any:
        found = request.route
        assert found is not None  # routed requests only
        return self.service.model_named(found.name or "", found.version)

    async def model_metadata(self, request: Request) -> int:
        await request.respond_json(200, oip.model_metadata(self._model(request)))
        return 200

    async def model_ready(self, request: Request) -> int:
        target = self._model(request)
        await request.respond_json(200, {"name": target.name, "ready": True})
        return 200

    async def model_infer(self, request: Request) -> int:
        arrived = now_ms()
        target = self._model(request)
        split = request.int_header(oip.HEADER_LENGTH, "Inference-Header-Content-Length")
        oip.check_media_type(request.media_type, split)
        body = await request.body(self.max_body)
        parsed, binary = oip.decode(body, split)
        feed, count = oip.to_feed(parsed, binary, target.inputs, self.max_records)
        outputs, _ = await self.service.infer(target, feed, count, arrived)
        out, header_length = oip.encode(target, parsed, outputs)
        if header_length is None:
            await request.respond(200, out)
        else:
            length = (oip.HEADER_LENGTH, b"%d" % header_length)
            await request.respond(200, out, _OCTETS, extra=[length])
        return 200
