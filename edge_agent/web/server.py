"""uvicorn (httptools + uvloop) running the ASGI app on a socket the agent bound.

uvicorn is chosen by the bench (``bench/inference.py``): on 2 cores the server stacks
measured alike (~20 k req/s at c16), and uvicorn adds the least: no framework, graceful
shutdown of in-flight requests, small RSS. The agent owns the signals: uvicorn's own
handler would re-raise SIGTERM after a graceful stop and the process would not exit 0.

The HTTP protocol is uvicorn's httptools one with the bounds it lacks, and a quick path
that answers a small request arriving whole without an ASGI task (``protocol.py``).
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Generator

import msgspec
import structlog
import uvicorn

from ..config import AgentConfig, HttpLimits
from .app import EdgeApp
from .protocol import Gate, bound_to

GRACEFUL_S = 30
FD_RESERVE = 64  # descriptors kept for what is not a client: models, logs, the registry

log = structlog.get_logger("edgepub.edge.http")


class EdgeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are the agent's (see the module docstring)


def fit_descriptors(limits: HttpLimits, fd_limit: int) -> HttpLimits:
    """``max_connections`` lowered to what the process's descriptor limit leaves room for,
    so the cap, not EMFILE, is what refuses a flood of connections."""
    room = max(1, fd_limit - FD_RESERVE)
    if limits.max_connections <= room:
        return limits
    return msgspec.structs.replace(limits, max_connections=room)


def make_server(app: EdgeApp, config: AgentConfig) -> EdgeServer:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limits = config.http
    if soft != resource.RLIM_INFINITY:
        limits = fit_descriptors(limits, soft)
    if limits.max_connections < config.http.max_connections:
        log.warning(
            "max_connections_lowered",
            configured=config.http.max_connections,
            used=limits.max_connections,
            fd_limit=soft,
        )
    gate = Gate(limits, app.metrics, log, quick=app.answer_now)
    app.metrics.gauge(
        "edgepub_edge_open_connections", "HTTP connections open now.", lambda: float(gate.open)
    )
    app.metrics.gauge(
        "edgepub_edge_quick_requests_total",
        "Requests that arrived whole and were answered at once, without an ASGI task.",
        lambda: float(gate.answered_quick),
        kind="counter",
    )
    return EdgeServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=bound_to(gate),
            ws="none",
            loop="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # nothing here reads the client address
            server_header=False,
            timeout_keep_alive=limits.keep_alive_s,
            timeout_graceful_shutdown=GRACEFUL_S,
        )
    )
