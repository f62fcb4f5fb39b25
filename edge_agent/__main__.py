"""``edgepub-edge``: the edge agent (and the engine container's entrypoint).

Reads the seed's environment (PIPELINE_URL, OCI_REGISTRY, OCI_USERNAME, OCI_PASSWORD,
CONFIG_CPUS, DEBUG, EDGE_BUNDLE, LOCAL_INFERENCE_STORAGE, PLATEAU_PAGE_SIZE) plus
EDGEPUB_PERSIST_DIR (/persist), EDGEPUB_HOST (0.0.0.0), EDGEPUB_PORT (8080),
EDGEPUB_MAX_BODY (64Mi), EDGEPUB_MAX_RECORDS (100000), EDGEPUB_MAX_HEADER (32Ki),
EDGEPUB_HEADER_TIMEOUT_S (10), EDGEPUB_BODY_TIMEOUT_S (60), EDGEPUB_KEEP_ALIVE_S (30),
EDGEPUB_MAX_CONNECTIONS (1000), EDGEPUB_MAX_INFLIGHT (8 per CONFIG_CPUS), EDGEPUB_LOG_QUEUE
(10000), EDGEPUB_LOG_QUEUE_BYTES (64Mi), EDGEPUB_HEARTBEAT_S (10), EDGEPUB_LOCAL_LOG (true)
and EDGEPUB_LOG_FORMAT
(auto|json|console).
A bad value stops the start with exit code 2 and one line on stderr.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import structlog

from edgepub.shared import logs
from edgepub.shared.errors import ConfigError

from .config import AgentConfig, parse_env

EXIT_CONFIG = 2


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], Any] = uvloop.new_event_loop
    return factory


def _announce(config: AgentConfig) -> None:
    log = structlog.get_logger("edgepub.edge")
    if config.bundle and config.bundle.pipeline_url != config.pipeline_url:
        log.warning(
            "bundle_pipeline_url_differs",
            bundle_pipeline_url=config.bundle.pipeline_url,
            pipeline_url=config.pipeline_url,
        )
    log.info(
        "edge_agent_starting",
        pipeline_url=config.pipeline_url,
        persist_dir=str(config.persist_dir),
        port=config.port,
        cpus=config.cpus,
        edge=config.edge_name,
        local_inference_storage=config.log_storage_bytes,
        plateau_page_size=config.page_size,
    )


def main() -> int:
    try:
        config = parse_env(os.environ)
    except ConfigError as exc:  # before the heavy imports: a typo fails in milliseconds
        print(f"edgepub-edge: {exc.message}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    from .agent import Agent, bind, check_persist_dir
    from .identity import load_identity, plan_connect

    try:
        check_persist_dir(config)
        plan = plan_connect(load_identity(config.persist_dir), config.bundle)
        sock = bind(config.host, config.port)
    except ConfigError as exc:
        print(f"edgepub-edge: {exc.message}", file=sys.stderr, flush=True)
        return EXIT_CONFIG
    logs.register_secret(config.oci_password)
    if config.bundle is not None:
        logs.register_secret(config.bundle.join_token)
        logs.register_secret(os.environ.get("EDGE_BUNDLE"))
    logs.configure(fmt=config.log_format, level="debug" if config.debug else "info")
    _announce(config)
    if plan.action == "serve_only":
        structlog.get_logger("edgepub.edge").info(
            "no_edge_bundle", serving="inference only: no logs or heartbeats reach Ops"
        )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(Agent(config, plan=plan).run(sock))


if __name__ == "__main__":
    sys.exit(main())
