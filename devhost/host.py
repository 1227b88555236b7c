"""DevHost: run a Python v2 ``FunctionApp`` locally without the Azure Functions host.

What it emulates (see README section in ``devhost/__init__.py``): HTTP triggers on aiohttp, timer triggers on
NCRONTAB schedules with the host's singleton behaviour, queue triggers on Azurite with host.json semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from os import PathLike
from typing import Any

import azure.functions as func
from aiohttp import web
from azure.core.exceptions import ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.queue.aio import QueueClient

from devhost.config import (
    DevHostError,
    HostConfig,
    connection_string_for,
    load_host_json,
    parse_timespan,
    resolve_setting_expr,
)
from devhost.functions import HTTP_TRIGGER, QUEUE_TRIGGER, TIMER_TRIGGER, FunctionSpec, collect_functions, method_list
from devhost.http import (
    BODY_LIMIT_KEY,
    DEFAULT_BODY_LIMIT,
    RouteTemplate,
    build_request,
    build_response,
    error_response,
    errors_middleware,
    translate_route,
)
from devhost.queues import QueuePoller
from devhost.timers import Schedule, parse_schedule

log = logging.getLogger("devhost")

# A timer fired more than this after its scheduled time reports past_due=True.
PAST_DUE_TOLERANCE = 1.0
# How long stop() lets running invocations finish before cancelling them.
STOP_GRACE_SECONDS = 10.0


@dataclass
class FunctionStats:
    """Per-function counters."""

    trigger: str
    invocations: int = 0
    successes: int = 0
    failures: int = 0
    running: int = 0
    poisoned: int = 0  # queue triggers: messages moved to <queue>-poison
    skipped: int = 0  # timer triggers: ticks skipped because the previous run was still going
    last_error: str | None = None


class InvocationError(RuntimeError):
    """A function raised; raised by ``run_timer`` (the original exception is chained)."""


class _TraceContext(func._abc.TraceContext):
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext(func._abc.RetryContext):
    def __init__(self, retry_count: int, max_retry_count: int) -> None:
        self._count = retry_count
        self._max = max_retry_count

    @property
    def retry_count(self) -> int:
        return self._count

    @property
    def max_retry_count(self) -> int:
        return self._max

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):
    """``azure.functions.Context`` for handlers that declare a ``context`` parameter."""

    def __init__(self, function_name: str, function_directory: str, retry_count: int = 0, max_retry: int = 0) -> None:
        self._id = str(uuid.uuid4())
        self._name = function_name
        self._dir = function_directory
        self._tls = threading.local()
        self._trace = _TraceContext()
        self._retry = _RetryContext(retry_count, max_retry)

    @property
    def invocation_id(self) -> str:
        return self._id

    @property
    def thread_local_storage(self) -> Any:
        return self._tls

    @property
    def function_name(self) -> str:
        return self._name

    @property
    def function_directory(self) -> str:
        return self._dir

    @property
    def trace_context(self) -> Any:
        return self._trace

    @property
    def retry_context(self) -> Any:
        return self._retry


@dataclass
class _Timer:
    spec: FunctionSpec
    schedule: Schedule
    run_on_startup: bool
    lock: asyncio.Lock
    last: datetime | None = None
    next: datetime | None = None
    task: asyncio.Task[None] | None = None


class DevHost:
    """Run a FunctionApp's HTTP, timer and queue functions in this process.

    Example:
        host = DevHost(app, env={"AzureWebJobsStorage": azurite.connection_string}, port=0)
        await host.start(); ...; await host.drain_queues(30); await host.stop()
    """

    def __init__(
        self,
        app: func.FunctionApp,
        env: Mapping[str, str] | None = None,
        *,
        port: int = 7071,
        host: str = "127.0.0.1",
        host_json: str | PathLike[str] | Mapping[str, Any] | None = None,
        enable_timers: bool = True,
        max_polling_interval: float | None = None,
        body_limit: int | None = None,
    ) -> None:
        """Index the app (fails fast on anything devhost cannot run).

        Args:
            app: the FunctionApp (``function_app.app``).
            env: app settings; merged over ``os.environ`` and exported to ``os.environ`` while running (the
                functions read settings from the environment, as on Azure).
            port: HTTP port, 0 for a free one (see ``base_url``).
            host: HTTP listen address.
            host_json: path or parsed host.json; None reads ``./host.json`` if present.
            enable_timers: run timers on their schedules (``run_timer`` works either way).
            max_polling_interval: cap for the idle queue back-off in seconds (None: host.json's value).
            body_limit: request body cap in bytes (default FUNCTIONS_REQUEST_BODY_SIZE_LIMIT or 100 MB).

        Raises:
            DevHostError: unsupported bindings, bad schedules/routes/settings.
        """
        self.app = app
        self.env = dict(env or {})
        self.settings: dict[str, str] = {**os.environ, **self.env}
        self.port = port
        self.bind_host = host
        self.config: HostConfig = load_host_json(host_json)
        self.enable_timers = enable_timers
        self.max_polling_interval = max_polling_interval
        limit_setting = self.settings.get("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT")
        try:
            self.body_limit = body_limit or (int(limit_setting) if limit_setting else DEFAULT_BODY_LIMIT)
        except ValueError as exc:
            raise DevHostError(f"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT must be an integer, got {limit_setting!r}") from exc
        self.functions: dict[str, FunctionSpec] = {s.name: s for s in collect_functions(app)}
        self.stats: dict[str, FunctionStats] = {
            name: FunctionStats(trigger=s.trigger_type) for name, s in self.functions.items()
        }
        self.routes: list[RouteTemplate] = []
        self._timers: dict[str, _Timer] = {}
        self._queue_specs: dict[str, tuple[str, str]] = {}  # function → (queue name, connection string)
        self._pollers: dict[str, QueuePoller] = {}
        self._runner: web.AppRunner | None = None
        self._site_port: int | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._saved_env: dict[str, str | None] = {}
        self._started = False
        self._function_dir = os.getcwd()
        self._index()

    # ------------------------------------------------------------------ indexing
    def _index(self) -> None:
        for spec in self.functions.values():
            where = f"function '{spec.name}'"
            if spec.trigger_type == HTTP_TRIGGER:
                template = spec.trigger.get("route") or spec.name
                self.routes.append(
                    translate_route(spec.name, template, self.config.route_prefix, method_list(spec.trigger))
                )
                if str(spec.trigger.get("authLevel", "")).lower() not in ("", "anonymous"):
                    log.info(
                        "%s: authLevel %s is not enforced locally (no function keys)",
                        where,
                        spec.trigger.get("authLevel"),
                    )
            elif spec.trigger_type == TIMER_TRIGGER:
                expr = resolve_setting_expr(str(spec.trigger.get("schedule") or ""), self.settings, what=where)
                if not expr.strip():
                    raise DevHostError(f"{where}: timer trigger has no schedule")
                self._timers[spec.name] = _Timer(
                    spec=spec,
                    schedule=parse_schedule(expr, function_name=spec.name),
                    run_on_startup=bool(spec.trigger.get("runOnStartup")),
                    lock=asyncio.Lock(),
                )
            elif spec.trigger_type == QUEUE_TRIGGER:
                raw = str(spec.trigger.get("queueName") or "")
                queue = resolve_setting_expr(raw, self.settings, what=where)
                if not queue:
                    raise DevHostError(f"{where}: queue trigger has no queueName")
                if queue != queue.lower():
                    # Queue names are lower-case (rest/api/storageservices/naming-queues-and-metadata).
                    raise DevHostError(f"{where}: queue name {queue!r} must be lower-case")
                conn = connection_string_for(spec.trigger.get("connection"), self.settings, what=where)
                self._queue_specs[spec.name] = (queue, conn)
            if spec.retry and spec.trigger_type != TIMER_TRIGGER:
                log.warning(
                    "%s: @app.retry is only honoured for timer triggers (the host ignores it for %s)",
                    where,
                    spec.trigger_type,
                )
        seen: dict[tuple[str, str], str] = {}
        for r in self.routes:
            for path in r.paths:
                for m in r.methods or ("*",):
                    key = (path, m)
                    if key in seen:
                        raise DevHostError(f"functions '{seen[key]}' and '{r.function_name}' both serve {m} {path}")
                    seen[key] = r.function_name

    # ------------------------------------------------------------------ lifecycle
    @property
    def timer_names(self) -> list[str]:
        """Names of the app's timer functions."""
        return list(self._timers)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the HTTP server (after ``start``)."""
        if self._site_port is None:
            raise RuntimeError("DevHost is not started")
        return f"http://{self.bind_host}:{self._site_port}"

    async def start(self) -> None:
        """Export settings, start the HTTP server, queue pollers and timers."""
        if self._started:
            return
        self._started = True
        for k, v in self.env.items():
            self._saved_env[k] = os.environ.get(k)
            os.environ[k] = v
        threads = self.settings.get("PYTHON_THREADPOOL_THREAD_COUNT")
        self._executor = ThreadPoolExecutor(
            max_workers=int(threads) if threads and threads.isdigit() and int(threads) > 0 else None,
            thread_name_prefix="devhost-fn",
        )
        try:
            await self._start_http()
            for name, (queue, conn) in self._queue_specs.items():
                spec = self.functions[name]
                poller = QueuePoller(
                    function_name=name,
                    queue_name=queue,
                    connection_string=conn,
                    options=self.config.queues,
                    invoke=functools.partial(self._invoke_queue, spec),
                    on_poison=functools.partial(self._count_poison, name),
                    max_polling_interval=self.max_polling_interval,
                )
                self._pollers[name] = poller
                await poller.start()
            now = datetime.now(UTC)
            for t in self._timers.values():
                t.next = t.schedule.next_after(now)
                if self.enable_timers:
                    t.task = asyncio.create_task(self._timer_loop(t), name=f"devhost-timer-{t.spec.name}")
        except BaseException:
            await self.stop()
            raise
        log.info("devhost started: %d functions, HTTP on %s", len(self.functions), self.base_url)

    async def stop(self) -> None:
        """Stop timers, pollers (letting running invocations finish) and the HTTP server; restore env."""
        for t in self._timers.values():
            if t.task is not None:
                # Like the host's graceful shutdown: let a running invocation finish (bounded), then stop ticking.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(STOP_GRACE_SECONDS), t.lock:
                        pass
                t.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t.task
                t.task = None
        for poller in self._pollers.values():
            await poller.stop(grace=STOP_GRACE_SECONDS)
        self._pollers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        for k, old in self._saved_env.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        self._saved_env.clear()
        self._started = False

    async def __aenter__(self) -> DevHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ invocation
    async def _call(self, spec: FunctionSpec, trigger_value: Any, *, retry_count: int = 0, max_retry: int = 0) -> Any:
        kwargs: dict[str, Any] = {spec.trigger_arg: trigger_value}
        if spec.wants_context:
            kwargs["context"] = InvocationContext(spec.name, self._function_dir, retry_count, max_retry)
        if spec.is_async:
            coro = spec.user_function(**kwargs)
            if self.config.function_timeout:
                return await asyncio.wait_for(coro, timeout=self.config.function_timeout)
            return await coro
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, functools.partial(ctx.run, spec.user_function, **kwargs))

    async def _invoke(self, spec: FunctionSpec, trigger_value: Any, reason: str, **kw: Any) -> tuple[bool, Any]:
        """Run one invocation with host-style logs and counters. Never raises (except cancellation)."""
        stats = self.stats[spec.name]
        stats.invocations += 1
        stats.running += 1
        started = time.perf_counter()
        invocation = uuid.uuid4()
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation)
        try:
            result = await self._call(spec, trigger_value, **kw)
        except asyncio.CancelledError:
            stats.failures += 1
            stats.last_error = "cancelled"
            raise
        except BaseException as exc:  # the host catches everything a function raises
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            stats.failures += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms): %s",
                spec.name,
                invocation,
                (time.perf_counter() - started) * 1000,
                stats.last_error,
                exc_info=exc,
            )
            return False, exc
        finally:
            stats.running -= 1
        stats.successes += 1
        log.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            spec.name,
            invocation,
            (time.perf_counter() - started) * 1000,
        )
        return True, result

    async def _invoke_queue(self, spec: FunctionSpec, message: Any) -> bool:
        # The Python worker hands a queue trigger over as str or bytes when the parameter is annotated so.
        value: Any = message
        if spec.trigger_annotation == "bytes":
            value = message.get_body()
        elif spec.trigger_annotation == "str":
            value = message.get_body().decode("utf-8", errors="replace")
        ok, _ = await self._invoke(spec, value, f"New queue message detected (id {message.id}).")
        return ok

    def _count_poison(self, name: str, reason: str) -> None:
        self.stats[name].poisoned += 1

    # ------------------------------------------------------------------ HTTP
    async def _start_http(self) -> None:
        web_app = web.Application(client_max_size=self.body_limit, middlewares=[errors_middleware])
        web_app[BODY_LIMIT_KEY] = self.body_limit
        # ASP.NET routing prefers literal segments over parameters over catch-alls; aiohttp matches in order.
        by_path: dict[str, web.Resource] = {}
        for r in sorted(self.routes, key=lambda r: r.precedence):
            handler = self._make_http_handler(self.functions[r.function_name])
            for path in r.paths:
                resource = by_path.get(path)
                if resource is None:
                    resource = web_app.router.add_resource(path)
                    by_path[path] = resource
                for m in r.methods or ("*",):
                    resource.add_route(m, handler)
        self._runner = web.AppRunner(web_app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind_host, self.port)
        try:
            await site.start()
        except OSError as exc:
            raise DevHostError(f"cannot listen on {self.bind_host}:{self.port}: {exc.strerror or exc}") from exc
        addresses = self._runner.addresses
        self._site_port = int(addresses[0][1]) if addresses else self.port

    def _make_http_handler(self, spec: FunctionSpec) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            req = await build_request(request)
            ok, result = await self._invoke(spec, req, f"HTTP {request.method} {request.path}")
            if not ok:
                return error_response(
                    500,
                    "FunctionInvocationException",
                    f"Exception while executing function: Functions.{spec.name}",
                    detail=f"{type(result).__name__}: {result}",
                )
            return build_response(result, spec.name)

        return handler

    # ------------------------------------------------------------------ timers
    def _timer_request(self, t: _Timer, past_due: bool) -> TimerRequest:
        def iso(d: datetime | None) -> str | None:
            return d.isoformat() if d else None

        return TimerRequest(
            past_due=past_due,
            schedule_status={"Last": iso(t.last), "Next": iso(t.next), "LastUpdated": iso(datetime.now(UTC))},
            schedule={"AdjustForDST": True},
        )

    async def _run_timer_locked(self, t: _Timer, *, past_due: bool, reason: str) -> tuple[bool, Any]:
        retry = t.spec.retry or {}
        max_retry = int(retry.get("max_retry_count") or 0) if retry else 0
        attempt = 0
        while True:
            ok, result = await self._invoke(
                t.spec, self._timer_request(t, past_due), reason, retry_count=attempt, max_retry=max_retry
            )
            t.last = datetime.now(UTC)
            if ok or attempt >= max_retry:
                return ok, result
            attempt += 1
            await asyncio.sleep(self._retry_delay(retry, attempt))

    @staticmethod
    def _retry_delay(retry: Mapping[str, Any], attempt: int) -> float:
        # functions-bindings-error-pages#retry-strategies: fixed_delay / exponential_backoff.
        if retry.get("strategy") == "exponential_backoff":
            lo = parse_timespan(retry.get("minimum_interval") or "00:00:01", what="retry minimum_interval")
            hi = parse_timespan(retry.get("maximum_interval") or "00:15:00", what="retry maximum_interval")
            return float(min(hi, lo * 2 ** (attempt - 1)))
        return parse_timespan(retry.get("delay_interval") or "00:00:00", what="retry delay_interval")

    async def _timer_loop(self, t: _Timer) -> None:
        if t.run_on_startup:
            async with t.lock:
                await self._run_timer_locked(t, past_due=False, reason="Timer fired at startup (runOnStartup)")
        while True:
            if t.next is None:
                t.next = t.schedule.next_after(datetime.now(UTC))
            # Loop until the wall clock has really reached the occurrence (the loop clock may wake a bit early).
            while (remaining := (t.next - datetime.now(UTC)).total_seconds()) > 0:  # noqa: ASYNC110 - wall-clock wait
                await asyncio.sleep(remaining)
            scheduled = t.next
            fired = datetime.now(UTC)
            t.next = t.schedule.next_after(max(fired, scheduled))
            if t.lock.locked():
                # The host holds a singleton lock per timer: no second run while one is going.
                self.stats[t.spec.name].skipped += 1
                log.info("Timer '%s' tick skipped: previous invocation still running", t.spec.name)
                continue
            past_due = (fired - scheduled).total_seconds() > PAST_DUE_TOLERANCE
            async with t.lock:
                await self._run_timer_locked(t, past_due=past_due, reason=f"Timer fired at {fired.isoformat()}")

    async def run_timer(self, name: str, *, raise_on_error: bool = True) -> Any:
        """Fire one timer now (waits for a running invocation of it to finish first).

        Raises:
            KeyError: no timer function of that name.
            InvocationError: the function raised (with ``raise_on_error``).
        """
        t = self._timers.get(name)
        if t is None:
            raise KeyError(f"no timer function named {name!r} (timers: {sorted(self._timers)})")
        async with t.lock:
            ok, result = await self._run_timer_locked(t, past_due=False, reason="Manually triggered (run_timer)")
        if not ok and raise_on_error:
            raise InvocationError(f"timer function '{name}' failed: {result!r}") from result
        return result if ok else None

    # ------------------------------------------------------------------ queues
    async def drain_queues(
        self, timeout: float = 60.0, *, visible_only: bool = False  # noqa: ASYNC109 - API asked for
    ) -> dict[str, int]:
        """Process until every trigger queue is empty and no invocation is running.

        Messages waiting out a retry ``visibilityTimeout`` still count as "not empty", unless ``visible_only``:
        then only messages that could be received now count (a message sent with a delay waits for a later drain,
        as it would wait for real time to pass).

        Returns:
            Messages left per queue (all zero on success).

        Raises:
            TimeoutError: still busy after ``timeout`` seconds (the message says what is left).
        """
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while True:
            # Order matters: idle first, then counts. A message enqueued by an invocation is in the queue before that
            # invocation stops counting as running, so "idle, then empty" cannot miss it.
            idle = self._idle()
            if not idle and time.monotonic() <= deadline:
                # Busy: no answer is possible yet, so ask storage nothing and leave the pollers to their own back-off,
                # as the Functions host does. (Counting and waking every 20 ms sent ~50 requests a second per process
                # to the emulator the app's own calls share, for as long as an invocation ran.)
                await asyncio.sleep(0.02)
                continue
            counts = {p.queue_name: await p.approximate_count() for p in self._pollers.values()}
            if idle and not any(counts.values()):
                return counts
            if idle and visible_only:
                # Idle, nothing receivable, and still idle with no invocation started meanwhile (a message received
                # between the two looks would otherwise be missed).
                started = sum(s.invocations for s in self.stats.values())
                visible = any([await p.has_visible() for p in self._pollers.values()])
                if not visible and self._idle() and started == sum(s.invocations for s in self.stats.values()):
                    return counts
            if time.monotonic() > deadline:
                running = {n: s.running for n, s in self.stats.items() if s.running}
                raise TimeoutError(f"queues not drained after {timeout}s: messages={counts} running={running}")
            for p in self._pollers.values():
                p.wake()
            await asyncio.sleep(0.02)

    def _idle(self) -> bool:
        return all(p.in_flight == 0 and not p.receiving for p in self._pollers.values()) and all(
            s.running == 0 for s in self.stats.values()
        )

    async def queue_counts(self) -> dict[str, int]:
        """Approximate message count of every trigger queue and its poison queue."""
        out: dict[str, int] = {}
        for queue, conn in self._queue_specs.values():
            for name in (queue, f"{queue}-poison"):
                async with QueueClient.from_connection_string(conn, name) as qc:
                    try:
                        out[name] = int((await qc.get_queue_properties()).approximate_message_count or 0)
                    except ResourceNotFoundError:
                        out[name] = 0
        return out

    # ------------------------------------------------------------------ reporting
    def counters(self) -> dict[str, dict[str, Any]]:
        """Per-function counters as plain dicts (JSON-ready)."""
        return {name: asdict(s) for name, s in self.stats.items()}

    def describe(self) -> list[str]:
        """One line per function: what devhost serves for it."""
        lines = []
        for spec in self.functions.values():
            if spec.trigger_type == HTTP_TRIGGER:
                r = next(r for r in self.routes if r.function_name == spec.name)
                lines.append(
                    f"{spec.name}: [{','.join(r.methods or ('ALL',))}] /{self.config.route_prefix}/"
                    f"{r.template.strip('/')}".replace("//", "/")
                )
            elif spec.trigger_type == TIMER_TRIGGER:
                t = self._timers[spec.name]
                lines.append(
                    f"{spec.name}: timer '{t.schedule.expression}'" + (" runOnStartup" if t.run_on_startup else "")
                )
            else:
                lines.append(f"{spec.name}: queue '{self._queue_specs[spec.name][0]}'")
        return lines
