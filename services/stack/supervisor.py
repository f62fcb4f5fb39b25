"""Running the stack's children: start, wait until ready, restart on a crash, stop in order.

One task owns each child. A child that dies before it was ever ready fails the start (its
log says why); one that dies later is restarted with exponential backoff. On stop the
services go first (SIGTERM, up to 10 s, then SIGKILL), then the registry and NATS. Each
child's output goes to ``logs/<name>.log``: the directory 0700, the files 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

import msgspec
import structlog

from edgepub.shared.stack_file import remove_stack_info, write_stack_info

from .binaries import die_with_parent_hook
from .plan import ChildSpec, Probe, StackPlan
from .probes import nats_ready, registry_ready

log = structlog.get_logger("edgepub.stack")

STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
PROGRESS_EVERY_S = 2.0

ProbeFn = Callable[[], Awaitable[bool]]

# Every child process alive right now, so the last finally can kill what is left.
LIVE: dict[int, asyncio.subprocess.Process] = {}


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    initial_s: float = 0.25
    cap_s: float = 30.0
    healthy_after_s: float = 60.0


def restart_delay(policy: Backoff, previous_s: float | None, ran_for_s: float) -> float:
    """Doubling delays, capped; back to the first one after a healthy run."""
    if previous_s is None or ran_for_s >= policy.healthy_after_s:
        return policy.initial_s
    return min(previous_s * 2, policy.cap_s)


class StackStartError(Exception):
    """A piece of the stack could not be started; the message says which and why."""


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter: made, or tightened, to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def open_log(path: str) -> BinaryIO:
    """A child's log, for append: in a 0700 directory, the file itself 0600 (logs carry
    model and pipeline names, registry addresses, errors quoting what clients sent)."""
    private_dir(Path(path).parent)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # a log an earlier version left 0644
    return os.fdopen(fd, "ab")


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _log_holds(path: str, offset: int, needle: bytes) -> bool:
    """A local log file (quick to read): holds ``needle`` past ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return needle in f.read()
    except OSError:
        return False


class Child:
    def __init__(self, spec: ChildSpec, probe: ProbeFn | None, policy: Backoff) -> None:
        self.spec = spec
        self.probe = probe
        self.policy = policy
        self.ready = asyncio.Event()
        self.log = log.bind(child=spec.name)

    def _logged_ready(self, offset: int) -> ProbeFn:
        """A probe: the child's log, past ``offset``, holds its ready event."""
        needle = f'"event": "{self.spec.ready_event}"'.encode()
        path = self.spec.log_path

        async def probe() -> bool:
            return _log_holds(path, offset, needle)

        return probe

    async def _spawn(self) -> asyncio.subprocess.Process:
        if self.spec.ready_event is not None:
            self.probe = self._logged_ready(_log_size(self.spec.log_path))
        # A local file opened for append: quick, and the child must get a real descriptor.
        with open_log(self.spec.log_path) as out:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.spec.env,
                # Own process group: a terminal's Ctrl-C reaches only the supervisor, which
                # then stops the children in order. PDEATHSIG covers a SIGKILLed supervisor.
                process_group=0,
                preexec_fn=die_with_parent_hook(),
            )
        LIVE[proc.pid] = proc
        self.log.info("child_started", pid=proc.pid, log=self.spec.log_path)
        return proc

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        try:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(STOP_GRACE_S):
                        await proc.wait()
                except TimeoutError:
                    self.log.warning("child_kill", pid=proc.pid, after_s=STOP_GRACE_S)
                    proc.kill()
                    await proc.wait()
            self.log.info("child_stopped", pid=proc.pid, code=proc.returncode)
        finally:
            LIVE.pop(proc.pid, None)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, first: bool) -> bool:
        """Poll the probe; False if the process exits first."""
        if self.probe is None:
            return True
        loop = asyncio.get_running_loop()
        started = next_progress = loop.time()
        while not await self.probe():
            if proc.returncode is not None:
                return False
            now = loop.time()
            if first and now - started > READY_TIMEOUT_S:
                raise StackStartError(
                    f"{self.spec.name} did not become ready within {READY_TIMEOUT_S:.0f}s; "
                    f"its log ({self.spec.log_path}) ends:\n{_log_tail(self.spec.log_path)}"
                )
            if now >= next_progress:
                self.log.info("child_waiting", elapsed_s=round(now - started, 1))
                next_progress = now + PROGRESS_EVERY_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await proc.wait()
        self.log.info("child_ready", elapsed_s=round(loop.time() - started, 2))
        return True

    async def supervise(self) -> None:
        """Run until cancelled; the child is stopped (SIGTERM, then SIGKILL) on the way out."""
        loop = asyncio.get_running_loop()
        delay: float | None = None
        first = True
        while True:
            proc = await self._spawn()
            started = loop.time()
            try:
                if await self._wait_ready(proc, first):
                    self.ready.set()
                code = await proc.wait()
            finally:
                await self._stop(proc)
            if first and not self.ready.is_set():
                raise StackStartError(
                    f"{self.spec.name} exited with code {code} while starting; its log "
                    f"({self.spec.log_path}) ends:\n{_log_tail(self.spec.log_path)}"
                )
            first = False
            ran_for = loop.time() - started
            delay = restart_delay(self.policy, delay, ran_for)
            self.log.warning(
                "child_exited", code=code, ran_s=round(ran_for, 1), log=self.spec.log_path
            )
            self.log.info("child_restarting", delay_s=delay)
            await asyncio.sleep(delay)


def _probe_for(spec: ChildSpec, plan: StackPlan) -> ProbeFn | None:
    if spec.probe is Probe.NATS:
        url = spec.probe_url or plan.info.nats_url
        user, pw = plan.nats_probe_user, plan.nats_probe_password
        return lambda: nats_ready(url, user, pw)
    if spec.probe is Probe.REGISTRY:
        host, _, port = plan.info.registry.rpartition(":")
        return lambda: registry_ready(host, int(port))
    return None


async def _external_nats_ready(plan: StackPlan, stop: asyncio.Event) -> None:
    url = plan.info.nats_url
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            while not await nats_ready(url, plan.nats_probe_user, plan.nats_probe_password):
                if stop.is_set():
                    return
                log.info("nats_waiting", url=url)
                await asyncio.sleep(1.0)
    except TimeoutError:
        raise StackStartError(
            f"cannot log in to NATS at {url} as {plan.nats_probe_user or 'anonymous'} "
            f"within {READY_TIMEOUT_S:.0f}s; check --nats-url and the NATS credentials"
        ) from None


async def _until_ready(
    children: list[Child], plan: StackPlan, stop: asyncio.Event, *, external_nats: bool = True
) -> bool:
    """True once every child is ready; False if a stop came first."""
    if external_nats and not any(c.spec.probe is Probe.NATS for c in children):
        await _external_nats_ready(plan, stop)

    async def all_ready() -> None:
        for child in children:
            await child.ready.wait()

    async with asyncio.TaskGroup() as tg:
        stopped = tg.create_task(stop.wait())
        ready = tg.create_task(all_ready())
        await asyncio.wait((stopped, ready), return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        ready.cancel()
    return not stop.is_set()


async def _run_services(
    plan: StackPlan, policy: Backoff, stop: asyncio.Event, on_ready: Callable[[], None]
) -> None:
    """Run the services; ``on_ready`` once each has said it is ready."""
    children = [Child(spec, None, policy) for spec in plan.services]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.supervise(), name=c.spec.name) for c in children]
        if await _until_ready(children, plan, stop, external_nats=False):
            on_ready()
        await stop.wait()
        log.info("stack_stopping")
        for task in tasks:
            task.cancel()


async def run_stack(
    plan: StackPlan,
    data_dir: Path,
    stop: asyncio.Event,
    *,
    policy: Backoff | None = None,
    on_ready: Callable[[Path], None] | None = None,
) -> None:
    """Start everything, publish ``stack.json``, run until ``stop``, stop in order."""
    policy = policy or Backoff()
    infra = [Child(spec, _probe_for(spec, plan), policy) for spec in plan.infra]
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.supervise(), name=c.spec.name) for c in infra]
        try:
            if await _until_ready(infra, plan, stop):

                def ready() -> None:
                    path = write_stack_info(data_dir, plan.info)
                    log.info(
                        "stack_ready", nats_url=plan.info.nats_url, registry=plan.info.registry
                    )
                    if on_ready is not None:
                        on_ready(path)

                await _run_services(plan, policy, stop, ready)
        finally:
            remove_stack_info(data_dir, pid=plan.info.pid)
            for task in tasks:
                task.cancel()
    log.info("stack_stopped")


def kill_leftovers() -> None:
    """Last resort, outside the event loop: SIGKILL any child still alive."""
    for pid, proc in list(LIVE.items()):
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        LIVE.pop(pid, None)
