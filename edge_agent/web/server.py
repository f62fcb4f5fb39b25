"""uvicorn (httptools + uvloop) running the ASGI app on a socket the agent bound.

uvicorn is chosen by the bench (``bench/inference.py``): on 2 cores the server stacks
measured alike (~20 k req/s at c16), and uvicorn adds the least: no framework, graceful
shutdown of in-flight requests, small RSS. The agent owns the signals: uvicorn's own
handler would re-raise SIGTERM after a graceful stop and the process would not exit 0.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Generator
from typing import Any

import uvicorn

from ..config import AgentConfig

GRACEFUL_S = 30


class EdgeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are the agent's (see the module docstring)


def make_server(app: Any, config: AgentConfig) -> EdgeServer:
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return EdgeServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            http=http,
            loop="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,  # nothing here reads the client address
            server_header=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=GRACEFUL_S,
        )
    )
