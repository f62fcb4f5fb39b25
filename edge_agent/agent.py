"""The agent's life: serve the cached pipeline at once, pull (or refresh) in the background,
answer HTTP until SIGTERM, let in-flight requests finish, hand the log off, exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import structlog

from edgepub.shared.edge_messages import Assignment, Heartbeat, SwapFailed
from edgepub.shared.errors import (
    ConfigError,
    DigestMismatchError,
    InvalidNameError,
    RegistryError,
)
from edgepub.shared.version import VERSION

from . import backoff
from .assignment import Running
from .cache import CachedPipeline, PipelineCache
from .config import AgentConfig
from .identity import ConnectPlan
from .inference import InferenceService
from .inference_log import DiscardLog, LocalLog, LogHandoff, drain, pump
from .link import Link, LinkSettings
from .local_log import SqliteLog, default_bound, free_bytes
from .looplag import LoopLag
from .metrics import EdgeMetrics
from .pages import Page
from .puller import failure_reason, pull_url
from .runtime import LoadedPipeline, PipelineLoadError, load_pipeline
from .shipper import Shipper, ShipSettings
from .swap import Swapper
from .web.app import EdgeApp
from .web.server import make_server

T = TypeVar("T")
DRAIN_TIMEOUT_S = 5.0
SWITCH_INTERVAL_S = 0.001  # a worker holding the GIL gives it to the loop this soon
_PULL_ERRORS = (RegistryError, DigestMismatchError, PipelineLoadError, InvalidNameError, OSError)
_CACHE_ERRORS = (
    OSError,
    msgspec.ValidationError,
    msgspec.DecodeError,
    DigestMismatchError,
    PipelineLoadError,
)


def bind(host: str, port: int) -> socket.socket:
    """Listen before anything else, so a taken port stops the start with one line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        why = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise ConfigError(
            f"EDGEPUB_PORT={port}: cannot listen on {host}:{port} ({why}); expected a free port"
        ) from None
    sock.setblocking(False)
    return sock


def check_persist_dir(config: AgentConfig) -> None:
    path = config.persist_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"EDGEPUB_PERSIST_DIR={str(path)!r}: cannot write there ({exc.strerror}); expected a "
            "writable directory (mount a volume at /persist, or set EDGEPUB_PERSIST_DIR)"
        ) from None


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` in a daemon thread: a pull stuck on the network never holds up exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while we worked
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=getattr(fn, "__name__", "work"), daemon=True).start()
    return await future


def _pipeline_of(config: AgentConfig) -> tuple[str, str]:
    ref = config.reference
    return ref.repository.rsplit("/", 1)[-1], ref.tag or ref.digest or ""


def settle_heap() -> None:
    """Keep the cycle collector off the request path, and a worker off the loop's GIL.

    What start-up allocated (modules, sessions) is frozen, so collections never walk it
    again; and young collections run every 7,000 allocations instead of 700 (a request
    allocates a few dozen objects, none in cycles), the usual tuning for servers. A worker
    decoding a large body hands the GIL to the event loop within 1 ms (Python's default,
    5 ms, is paid at each of the loop's wake-ups: health p99 47 -> 25 ms under 60 MiB
    bodies, ``bench/health_under_load.py``).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(7_000, older, oldest)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        local_log: LocalLog | None = None,
        plan: ConnectPlan | None = None,
    ) -> None:
        self.config = config
        name, version = _pipeline_of(config)
        self.log = structlog.get_logger("edgepub.edge").bind(
            pipeline=name, pipeline_version=version
        )
        self.cache = PipelineCache(config.persist_dir / "pipelines")
        self.metrics = EdgeMetrics()
        self.handoff = LogHandoff(config.handoff_capacity, config.handoff_bytes)
        self.local_log: LocalLog = local_log or DiscardLog()  # run() opens the SQLite log
        self.sqlite_log = local_log if isinstance(local_log, SqliteLog) else None
        self._own_log = local_log is None
        # A log row's partition is the edge's authenticated name once it has a link to Ops.
        linked = plan is not None and plan.action != "serve_only" and plan.edge_name
        partition = plan.edge_name if linked and plan else config.edge_name
        partition = partition or socket.gethostname()
        self.service = InferenceService(
            self.handoff,
            self.metrics,
            partition,
            workers=config.intra_op_threads,
            max_inflight=config.inflight_limit,
        )
        self.loop_lag = LoopLag(self.metrics)
        self.swapper = Swapper(self, self.metrics, config.persist_dir, config.pipeline_url)
        self.target_url = config.pipeline_url  # what to serve: PIPELINE_URL or an assignment's
        self._stop = asyncio.Event()
        self.link: Link | None = None
        self.shipper: Shipper | None = None
        if linked and plan is not None:
            self.link = Link(
                plan,
                config.persist_dir,
                on_assignment=self.assign,
                report=self.heartbeat,
                settings=LinkSettings(heartbeat_s=config.heartbeat_s),
            )
            self.link.status.register(self.metrics)
        self.metrics.gauge(
            "edgepub_edge_pipeline_ready",
            "1 when a pipeline is loaded.",
            lambda: float(self.service.ready),
        )
        self.metrics.gauge(
            "edgepub_edge_log_handoff_queued",
            "Inference events waiting for the local log.",
            lambda: float(len(self.handoff)),
        )
        self.metrics.gauge(
            "edgepub_edge_log_handoff_queued_bytes",
            "Bytes (request bodies and outputs) the queued inference events hold.",
            lambda: float(self.handoff.queued_bytes),
        )
        self.metrics.gauge(
            "edgepub_edge_log_handoff_dropped",
            "Inference events dropped because the hand-off was full (EDGEPUB_LOG_QUEUE events "
            "or EDGEPUB_LOG_QUEUE_BYTES bytes).",
            lambda: float(self.handoff.dropped),
        )
        self._log_gauges()

    def _log_gauges(self) -> None:
        def read(name: str) -> Callable[[], float]:
            return lambda: float(getattr(self.sqlite_log, name, 0))

        for metric, attr, kind, help_text in (
            ("rows_total", "rows_written", "counter", "Inference rows the local log stored."),
            ("backlog_rows", "backlog", "gauge", "Log lines (rows and gaps) Ops has not acked."),
            ("evicted_rows_total", "evicted_rows", "counter", "Rows the bound evicted."),
            ("write_failures_total", "write_failures", "counter", "Failed local log writes."),
            ("file_bytes", "file_bytes", "gauge", "The local log's file and WAL, in bytes."),
            ("watermark", "watermark", "gauge", "The last seq Ops acknowledged."),
        ):
            self.metrics.gauge(f"edgepub_edge_log_{metric}", help_text, read(attr), kind=kind)

    async def open_log(self) -> None:
        """The SQLite log at <persist_dir>/logs/inference.db, unless one was given."""
        if not self._own_log or self.sqlite_log is not None or not self.config.local_log:
            return
        path = self.config.persist_dir / "logs" / "inference.db"
        bound = self.config.log_storage_bytes
        if not self.config.log_limits_given:
            bound = default_bound(await asyncio.to_thread(free_bytes, path.parent))
        self.sqlite_log = await SqliteLog.open(path, bound_bytes=bound)
        self.local_log = self.sqlite_log

    def start_shipping(self) -> None:
        """Ship the local log home during every session of the link to Ops."""
        if self.link is None or self.sqlite_log is None:
            return
        self.shipper = Shipper(
            self.sqlite_log,
            self.link.edge,
            self.filed_under,
            ShipSettings(page_rows=self.config.page_size),
        )
        self.link.on_session(self.shipper.run)

    def filed_under(self, page: Page) -> tuple[str, int]:
        """A page's pipeline (a page of gap lines only: what serves now) and workspace."""
        running = self.running
        pipeline = page.pipeline or (running.pipeline_name if running else None)
        bundle = self.config.bundle
        workspace = bundle.workspace_id if bundle and bundle.workspace_id else 1
        return pipeline or _pipeline_of(self.config)[0], workspace

    async def load(self, cached: CachedPipeline) -> tuple[LoadedPipeline, bool]:
        """Verify the cached files and start a session per step, off the event loop; and
        whether the warm-up run measured the pipeline's cost."""
        self.log.info(
            "starting_engine",
            steps=len(cached.definition.steps),
            intra_op_threads=self.config.intra_op_threads,
            max_inflight=self.config.inflight_limit,
        )

        def load() -> tuple[LoadedPipeline, bool]:
            self.cache.verify(cached)
            loaded = load_pipeline(
                cached.definition, cached.models_dir, self.config.intra_op_threads
            )
            return loaded, loaded.warm_up()

        return await in_thread(load)

    async def activate(self, cached: CachedPipeline) -> LoadedPipeline:
        """Load the cached pipeline and serve it."""
        pipeline, warm = await self.load(cached)
        self.swapper.install(pipeline, cached.source.pipeline_url)
        self.log.info(
            "engine_ready",
            port=self.config.port,
            digest=cached.source.manifest_digest,
            models=[m.name for m in pipeline.models],
            run_ns_per_element=round(pipeline.cost.ns_per_element, 1) if warm else None,
        )
        return pipeline

    async def serve_cached(self) -> bool:
        """Serve what the cache holds; True if it is the target's pipeline itself."""
        try:
            cached = self.cache.find(self.target_url) or self.cache.current()
            if cached is None:
                return False
            self.log.info(
                "using_cached_pipeline",
                pipeline_url=cached.source.pipeline_url,
                digest=cached.source.manifest_digest,
                pulled_at=cached.source.pulled_at,
            )
            await self.activate(cached)
        except _CACHE_ERRORS as exc:
            self.log.error("cached_pipeline_unusable", error=str(exc))
            return False
        return cached.source.pipeline_url == self.target_url

    def _pull(self, url: str) -> tuple[CachedPipeline, bool]:
        return pull_url(self.config, url, self.cache, self.log)

    async def fetch(self, pipeline_url: str) -> CachedPipeline:
        """Pull and verify ``pipeline_url`` into the cache (off the event loop)."""
        cached, _ = await in_thread(self._pull, pipeline_url)
        return cached

    def reason(self, exc: Exception) -> str:
        return failure_reason(exc, self.config.oci_username)

    async def assign(self, assignment: Assignment) -> None:
        """Serve ``assignment``'s pipeline (Ops said so): returns once it serves, already
        ran, was skipped as stale or superseded, or failed once (then retried with backoff
        in the background). Never raises for a failed swap; needs ``run`` running."""
        await self.swapper.assign(assignment)

    @property
    def running(self) -> Running | None:
        """What serves: publish id (if known), pipeline version, pipeline URL."""
        return self.swapper.running

    def heartbeat(self) -> Heartbeat:
        """What this edge tells Ops on each beat: the traffic figures cover the time since
        the previous beat (each call starts a new window)."""
        running = self.running
        status = "serving" if self.service.ready else f"waiting: {self.service.waiting_reason}"
        swapper = self.swapper
        since = swapper.running_since
        failure, wanted = swapper.failure, swapper.assignment
        failed = None
        if failure is not None and wanted is not None and failure.publish_id == wanted.publish_id:
            failed = SwapFailed(
                publish_id=failure.publish_id,
                reason=failure.reason[:256],
                attempts=failure.attempts,
                for_s=max(time.monotonic() - failure.first_at, 0.0),
            )
        return Heartbeat(
            status=status[:256],
            running_publish_id=running.publish_id if running else None,
            running_version=running.pipeline_version if running else None,
            agent_version=VERSION,
            backlog=self.sqlite_log.backlog if self.sqlite_log else None,
            running_for_s=None if since is None else max(time.monotonic() - since, 0.0),
            traffic=self.metrics.window.take(),
            log=self.sqlite_log.report() if self.sqlite_log else None,
            failed=failed,
        )

    def status(self) -> dict[str, Any]:
        """``GET /status``: what serves, and how the link to Ops stands."""
        running = self.running
        return {
            "edge": self.link.edge if self.link else None,
            "partition": self.service.partition,
            "ready": self.service.ready,
            "waiting_reason": None if self.service.ready else self.service.waiting_reason,
            "pipeline": msgspec.to_builtins(running) if running else None,
            "agent_version": VERSION,
            "ops": self.link.status.view() if self.link else None,
            "log": self.sqlite_log.view() if self.sqlite_log else None,
            "shipping": self.shipper.view() if self.shipper else None,
        }

    def stop(self) -> None:
        """Stop as SIGTERM would (in-process use)."""
        self._stop.set()

    async def keep_pulling(self, serving_url: bool) -> None:
        """Pull the start target until it works (with it already served from cache, try
        once); an assignment arriving meanwhile takes over, so this never swaps back."""
        delays = backoff.delays()
        attempt = 0
        swapper = self.swapper
        while not swapper.assigned:
            try:
                async with swapper.lock:
                    cached, fetched = await in_thread(self._pull, self.target_url)
                    if (fetched or not serving_url) and not swapper.assigned:
                        await self.activate(cached)
                return
            except _PULL_ERRORS as exc:
                reason = self.reason(exc)
            if serving_url:
                self.log.warning("serving_cached_pipeline", reason=reason)
                return
            wait = next(delays)
            attempt += 1
            self.service.waiting_reason = reason
            self.log.warning(
                "waiting_for_registry", reason=reason, attempt=attempt, retry_in_s=round(wait, 2)
            )
            await asyncio.sleep(wait)

    async def run(self, sock: socket.socket, *, settle: bool = True) -> int:
        """Serve on ``sock`` until stopped. ``settle``: tune this process's heap for serving
        (``settle_heap``: its one full collection walks the whole process, which is the
        agent's own in production and a test runner's whole heap in process)."""
        stop = self._stop
        loop = asyncio.get_running_loop()
        app = EdgeApp(
            self.service,
            self.metrics,
            self.config.max_body_bytes,
            self.config.max_records,
            status=self.status,
        )
        server = make_server(app, self.config)

        def on_signal(sig: signal.Signals) -> None:
            if stop.is_set():
                server.force_exit = True
            self.log.info("stopping", signal=sig.name)
            stop.set()

        if threading.current_thread() is threading.main_thread():  # else: stop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
        self.cache.prepare()
        await self.open_log()
        self.start_shipping()
        self.target_url = self.swapper.start().pipeline_url
        serving_url = await self.serve_cached()
        if settle:
            settle_heap()
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(server.serve(sockets=[sock]))
            pumping = tg.create_task(pump(self.handoff, self.local_log))
            pulling = tg.create_task(self.keep_pulling(serving_url))
            swapping = tg.create_task(self.swapper.run())
            watching = tg.create_task(self.loop_lag.watch())
            stopping = tg.create_task(stop.wait())
            background = [pumping, pulling, swapping, watching, stopping]
            if self.link is not None:  # beside serving: inference never waits on Ops
                background.append(tg.create_task(self.link.run(stop)))
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            server.should_exit = True
            await serving
            for task in background:
                task.cancel()
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            moved = await drain(self.handoff, self.local_log)
        self.service.close()
        if self._own_log and self.sqlite_log is not None:
            await self.sqlite_log.close()
        self.log.info("engine_stopped", drained_events=moved, dropped_events=self.handoff.dropped)
        return 0
