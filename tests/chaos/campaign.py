"""A seeded random fault campaign: tenant mutations, polls and console calls interleaved with injected faults, then a
bounded convergence phase and per-tenant checks against the simulator's ground truth (issue 13 §1).

``python -m tests.chaos.campaign --runs 200`` (``make chaos``) runs seeds 1..N against one simulator, one private
Azurite and devhost running function_app.py, prints a histogram of the faults injected and, last,
``runs=N lost=0 duplicates=0 diverged=0 wrongly_deactivated=0``. ``--seed S`` replays one run. The fast suite runs a
few seeds through :func:`run_seed` (tests/chaos/test_campaign.py).

Why a seeded generator and not hypothesis' stateful testing: every step is real I/O against three processes (a run
is seconds, not microseconds), so shrinking would replay hundreds of runs; the value is in replaying one failing
seed exactly, which a ``random.Random(seed)`` plan gives (the plan is drawn from the seed alone; only thread timing
of concurrent deliveries varies between replays).

**The host kill.** A poll is abandoned at a seeded I/O operation of the worker process with no cleanup running:
the campaign's container (a :class:`~shared_code.bootstrap.Container` subclass, the composition root's test seam)
builds the Graph client and the Tables/Queues clients on transports that count every request of the process. At the
armed operation the transport raises :class:`HostKilled` (a ``BaseException``, so no ``except Exception`` of the
product catches it), either *before* the request is sent or *after* the service answered and before the caller saw
the answer (e.g. Graph answered and the cursor was not committed yet; a table transaction committed and the engine
never learnt it). From then on every request of that container raises too — a dead process does no I/O, so
``finally`` blocks that would release a lease or write a status fail like they would in a killed process — and a
fresh container (empty caches, same settings) is installed at once, as the Functions host starts a new worker. The
host puts the message back (devhost: failed invocation → visible after ``visibilityTimeout``, 0 s in the campaign's
host.json: the lease of a killed worker expiring, with time compressed). Chosen over killing a devhost subprocess
because a signal lands at an arbitrary *time*, not at a chosen point between pages or transactions, and a seed
could not replay it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import random
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from azure.core.pipeline.transport import AioHttpTransport

from shared_code.adapters.graph import GraphClient
from shared_code.adapters.http_retry import UsageMeter
from shared_code.adapters.storage import StorageClients
from shared_code.bootstrap import Container, use_container
from shared_code.settings import Settings
from tests.chaos.api_reads import all_devices, all_events

REPO = Path(__file__).resolve().parents[2]
PLATFORMS = ("iOS", "iPadOS", "Android")
POLL_INTERVAL = 5 * 60
QUARANTINE_RETRY = 6 * 3600
MAX_RETRIES = 2
READ_TIMEOUT = 0.6  # the campaign's Graph read timeout (production: 60 s); "slow" faults answer after 0.9 s
FINAL_ROUNDS = 4
LEASE_SECONDS = 15 * 60  # shared_code/enrollment/service.py
INTUNE_SERVICES = ("StatelessPartnerTenantDataSyncService", "StatelessPartnerDeviceDataSyncService")


class HostKilled(BaseException):
    """The worker process died at this point (raised by the campaign's transports)."""


class KillSwitch:
    """Counts one worker process's I/O operations per kind (graph, table, queue) and kills the process at an armed
    one."""

    def __init__(self, on_kill: Callable[[], None]) -> None:
        self.on_kill = on_kill
        self.ops: Counter[str] = Counter()
        self.armed: tuple[str, int, str] | None = None
        self.dead = False
        self.fired: str | None = None
        self.stall: tuple[str, int, asyncio.Event, asyncio.Event] | None = None

    def arm(self, what: str, at: int, mode: str) -> None:
        """Die at the ``at``-th ``what`` operation from now, ``before`` sending it or ``after`` its answer arrived."""
        self.ops = Counter()
        self.armed = (what, at, mode)

    def disarm(self) -> Counter[str]:
        """Stop counting towards a kill; returns the operations counted since :meth:`arm`."""
        self.armed = None
        return self.ops

    def arm_stall(self, what: str, at: int) -> tuple[asyncio.Event, asyncio.Event]:
        """Freeze the worker at the ``at``-th ``what`` operation from now until the returned release event is set
        (a worker paused past its lease: GC, a frozen VM, a stuck socket); the first event says it is frozen."""
        self.ops = Counter()
        self.stall = (what, at, asyncio.Event(), asyncio.Event())
        return self.stall[2], self.stall[3]

    async def gate(self, what: str) -> None:
        """Called by the transports before each operation: wait here if this is the stall point."""
        if self.stall is not None and self.stall[0] == what and self.ops[what] + 1 == self.stall[1]:
            _, _, frozen, release = self.stall
            self.stall = None
            frozen.set()
            await release.wait()

    def _fire(self, what: str, mode: str) -> None:
        self.dead = True
        self.armed = None
        self.fired = f"{what}/{mode}"
        self.on_kill()
        raise HostKilled(f"worker killed {mode} {what} operation {self.ops[what]}")

    def before(self, what: str) -> None:
        if self.dead:
            raise HostKilled("worker is dead")
        self.ops[what] += 1
        if self.armed == (what, self.ops[what], "before"):
            self._fire(what, "before")

    def after(self, what: str) -> None:
        if self.dead:
            raise HostKilled("worker is dead")
        if self.armed == (what, self.ops[what], "after"):
            self._fire(what, "after")


class KillableHttpx(httpx.AsyncHTTPTransport):
    """Graph's connection pool, counted by the kill switch; the read timeout is the campaign's short one."""

    def __init__(self, switch: KillSwitch) -> None:
        super().__init__(retries=0)
        self.switch = switch

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = dict(request.extensions.get("timeout") or {})
        timeout["read"] = READ_TIMEOUT
        request.extensions["timeout"] = timeout
        await self.switch.gate("graph")
        self.switch.before("graph")
        response = await super().handle_async_request(request)
        self.switch.after("graph")
        return response


class KillableAio(AioHttpTransport):
    """azure-core's aiohttp transport for Tables and Queues, counted by the kill switch."""

    def __init__(self, switch: KillSwitch, what: str) -> None:
        super().__init__()
        self.switch = switch
        self.what = what

    async def send(self, request: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # Table reads and writes are counted apart, so a kill can be aimed between two write transactions.
        what = self.what if self.what != "table" else ("table_read" if request.method == "GET" else "table_write")
        await self.switch.gate(what)
        self.switch.before(what)
        response = await super().send(request, **kwargs)
        self.switch.after(what)
        return response


class KillableStorage(StorageClients):
    """StorageClients whose table and queue clients use the killable transport."""

    def __init__(self, connection: str, *, table_prefix: str, switch: KillSwitch) -> None:
        super().__init__(connection, table_prefix=table_prefix)
        self.switch = switch

    def _table_service(self) -> Any:
        from azure.data.tables.aio import TableServiceClient

        if self._service is None:
            self._service = TableServiceClient.from_connection_string(
                self._connection, transport=KillableAio(self.switch, "table"))
        return self._service

    def queue(self, name: str) -> Any:
        from azure.storage.queue import TextBase64EncodePolicy
        from azure.storage.queue.aio import QueueClient

        return QueueClient.from_connection_string(self._connection, name,
                                                  message_encode_policy=TextBase64EncodePolicy(),
                                                  transport=KillableAio(self.switch, "queue"))


class ChaosContainer(Container):
    """The composition root with killable transports (one per simulated worker process)."""

    def __init__(self, settings: Settings, *, clock: Any, on_kill: Callable[[], None]) -> None:
        super().__init__(settings, clock=clock)
        self.switch = KillSwitch(on_kill)

    def graph(self, tenant_id: str, meter: UsageMeter | None = None) -> GraphClient:
        return GraphClient(tenant_id=tenant_id, credentials=self.credentials, base_url=self.settings.graph_base_url,
                           max_retries=self.settings.graph_max_retries, meter=meter,
                           transport=KillableHttpx(self.switch))

    @property
    def storage(self) -> StorageClients:
        if self._storage is None:
            self._storage = KillableStorage(self.settings.storage_connection, table_prefix=self.settings.table_prefix,
                                            switch=self.switch)
        return self._storage


class MovableClock:
    """The connector's clock: wall clock plus an offset the campaign moves."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.time() + self.offset


class Workers:
    """The installed worker process (container); replaced on a kill or a restart."""

    def __init__(self, settings: Settings, clock: MovableClock) -> None:
        self.settings = settings
        self.clock = clock
        self.retired: list[Container] = []
        self.kills = 0
        self.current = self._new()
        use_container(self.current)

    def _new(self) -> ChaosContainer:
        return ChaosContainer(self.settings, clock=self.clock, on_kill=self._killed)

    def _killed(self) -> None:
        self.kills += 1
        self.retired.append(self.current)
        self.current = self._new()
        use_container(self.current)

    def restart(self) -> None:
        """A new worker process after a clean stop (fresh caches)."""
        self.retired.append(self.current)
        self.current = self._new()
        use_container(self.current)

    async def close(self) -> None:
        use_container(None)
        for c in [*self.retired, self.current]:
            with contextlib.suppress(BaseException):
                await c.close()


# ---- the world ------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    seed: int
    tenants: int = 0
    lost: int = 0
    duplicates: int = 0
    diverged: int = 0
    wrongly_deactivated: int = 0
    errors: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.diverged or self.wrongly_deactivated or self.errors)


class Campaign:
    """One simulator + one private Azurite + devhost, reused by every run (each run has its own tenants)."""

    def __init__(self, sim: Any, azurite: Any, workdir: Path) -> None:
        self.sim = sim
        self.azurite = azurite
        self.workdir = workdir
        self.clock = MovableClock()
        self.devhost: Any = None
        self.api: httpx.AsyncClient | None = None
        self.workers: Workers | None = None
        self.env: dict[str, str] = {}
        self.supported: set[str] = set()
        self.last_ops: Counter[str] = Counter({"graph": 6, "table_read": 12, "table_write": 6, "queue": 1})

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, sim: Any, azurite: Any, workdir: Path) -> AsyncIterator[Campaign]:
        self = cls(sim, azurite, workdir)
        await self._start()
        try:
            yield self
        finally:
            await self._stop()

    async def _start(self) -> None:
        import os

        from simulator import launch

        info = self.sim.info
        suffix = uuid.uuid4().hex[:8]
        env = launch.client_env(info, base={})
        env.update({
            "AzureWebJobsStorage": self.azurite.connection_string,
            # The connector secret comes from the simulator's Key Vault (so a vault outage is a fault we can inject);
            # the vault is read as the connector's own identity (certificate), the local stand-in for managed identity.
            "AZURE_TENANT_ID": info["console"]["tenant_id"],
            "AZURE_CLIENT_ID": info["connector"]["client_id"],
            "AZURE_CLIENT_CERTIFICATE_PATH": info["connector"]["certificate_path"],
            "POLL_SCHEDULE": "0 */5 * * * *",
            "HEARTBEAT_SCHEDULE": "0 */15 * * * *",
            "UPLOAD_RESULTS_SCHEDULE": "30 */2 * * * *",
            "TABLE_PREFIX": f"k{suffix}",
            "POLL_QUEUE_NAME": f"campaign-{suffix}",
            "GRAPH_MAX_RETRIES": str(MAX_RETRIES),
            "QUARANTINE_AFTER_FAILURES": "3",
        })
        os.environ.update({k: env[k] for k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")})
        self.sim.call("POST", "/_sim/keyvault/secrets",
                      json={"name": info["connector"]["secret_name"], "value": info["connector"]["client_secret"]})
        self.env = env
        self.workers = Workers(Settings.from_env(env), self.clock)
        host_json = json.loads((REPO / "host.json").read_text())
        # A failed invocation's message comes back at once (the lease of a killed worker, time compressed).
        host_json["extensions"]["queues"]["visibilityTimeout"] = "00:00:00"
        path = self.workdir / "host.json"
        path.write_text(json.dumps(host_json))
        import function_app
        from devhost.host import DevHost

        self.devhost = DevHost(function_app.app, env=env, port=0, enable_timers=False, host_json=path)
        await self.devhost.start()
        token = self.sim.console_token(["Console.Manage", "Console.Read"])
        self.api = httpx.AsyncClient(base_url=self.devhost.base_url, timeout=120,
                                     headers={"Authorization": f"Bearer {token}"})
        self.supported = self._probe_faults()

    def _probe_faults(self) -> set[str]:
        kinds = set()
        for kind in ("round_empty", "round_truncated", "members_short", "html", "redirect", "intune_missing",
                     "replication_lag"):
            try:
                self.sim.call("POST", "/_sim/faults", json={"kind": kind, "match": {"tenant": str(uuid.uuid4())}})
                kinds.add(kind)
            except AssertionError:
                pass
        self.sim.clear_faults()
        probe = self.sim.create_tenant("small", seed=999_999)
        probes: tuple[tuple[str, dict[str, Any]], ...] = (
            ("add_user", {"lag_seconds": 1}), ("set_intune_endpoints", {"providers": list(INTUNE_SERVICES)}),
            ("restore_user", {"user_id": str(uuid.uuid4())}))
        for op, args in probes:
            try:
                self.sim.mutate(probe["tenant_id"], op, **args)
            except AssertionError as exc:
                if "unknown op" in str(exc) or "lag_seconds" in str(exc):
                    continue
            kinds.add({"add_user": "replication_lag", "set_intune_endpoints": "intune_missing",
                       "restore_user": "restore_user"}[op])
        self.sim.call("DELETE", f"/_sim/tenants/{probe['tenant_id']}")
        return kinds

    async def _stop(self) -> None:
        if self.api is not None:
            await self.api.aclose()
        if self.devhost is not None:
            await self.devhost.stop()
        if self.workers is not None:
            await self.workers.close()

    # ---- driving ------------------------------------------------------------------------------------------------
    def advance(self, seconds: float) -> None:
        self.clock.offset += seconds
        self.sim.call("POST", "/_sim/clock/advance", json={"seconds": seconds})

    async def drain(self) -> None:
        await self.devhost.drain_queues(timeout=180, visible_only=True)

    async def tick(self, advance: float = POLL_INTERVAL) -> None:
        self.advance(advance)
        await self.devhost.run_timer("dispatch_polls", raise_on_error=False)
        await self.drain()

    async def call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        assert self.api is not None
        response = await self.api.request(method, url, **kw)
        if response.status_code == 500:
            raise AssertionError(f"{method} {url} -> 500: {response.text[:400]}")
        return response

    async def enqueue(self, body: dict[str, Any], copies: int = 1) -> None:
        from azure.storage.queue.aio import QueueClient

        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        async with QueueClient.from_connection_string(self.env["AzureWebJobsStorage"],
                                                      self.env["POLL_QUEUE_NAME"]) as queue:
            for _ in range(copies):
                await queue.send_message(encoded)

    async def status(self, tid: str) -> dict[str, Any]:
        r = await self.call("GET", f"/api/tenants/{tid}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()["status"]
        return result

    async def _get(self, url: str, **kw: Any) -> httpx.Response:
        return await self.call("GET", url, **kw)

    async def devices(self, tid: str) -> list[dict[str, Any]]:
        return await all_devices(self._get, tid)

    async def events(self, tid: str) -> list[dict[str, Any]]:
        return await all_events(self._get, tid, limit=1000)

    def truth(self, tid: str, groups: list[str], platforms: list[str] | tuple[str, ...] = PLATFORMS) -> set[str]:
        return {d["id"] for d in self.sim.truth(tid, groups, ",".join(platforms))["devices"]}

    def graph_routes(self, tid: str) -> Counter[str]:
        """Graph requests the simulator served for the tenant, per route (a $batch counts once plus each inner
        request)."""
        routes = self.sim.counters(tid).get(tid, {}).get("routes", {})
        return Counter({k: int(v["requests"]) for k, v in routes.items() if k.startswith(("/v1.0", "batch:"))})

    def graph_requests(self, tid: str) -> int:
        return sum(v for k, v in self.graph_routes(tid).items() if k.startswith("/v1.0"))

    def restart_azurite(self) -> None:
        self.azurite.restart()


# ---- one run -------------------------------------------------------------------------------------------------------
@dataclass
class TenantModel:
    tid: str
    groups: list[str]
    resolved: dict[str, str]
    users: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    extra_groups: list[str] = field(default_factory=list)
    memberships: list[tuple[str, str]] = field(default_factory=list)  # (group id, member id) the run added
    nested: list[tuple[str, str]] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)  # group id -> original name
    ever_in: set[str] = field(default_factory=set)
    ever_out: set[str] = field(default_factory=set)
    last_truth: set[str] = field(default_factory=set)
    revoked: list[str] | None = None
    intune_changed: bool = False
    deleted: list[str] = field(default_factory=list)  # soft-deleted users (restorable)
    platforms: list[str] = field(default_factory=lambda: list(PLATFORMS))
    # deviceId -> the latest accepted threat report (detectedAt, level, uploadId = Intune's message id)
    threats: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    all_groups: list[str] = field(default_factory=list)


GRAPH_PREFIXES = ("/v1.0/", "/v1.0/groups/delta", "/v1.0/devices/delta", "/v1.0/$batch", "/v1.0/users",
                  "/v1.0/devices", "/v1.0/groups")


class Run:
    """One seeded run: provision, chaos steps, convergence, checks."""

    def __init__(self, campaign: Campaign, seed: int) -> None:
        self.c = campaign
        self.seed = seed
        self.rng = random.Random(seed)
        self.result = RunResult(seed)
        self.tenants: list[TenantModel] = []
        self.debug = False

    def log(self, text: str) -> None:
        self.result.steps.append(text)

    def fault(self, name: str) -> None:
        self.result.faults[name] += 1

    # ---- setup --------------------------------------------------------------------------------------------------
    async def provision(self, index: int) -> TenantModel:
        summary = self.c.sim.create_tenant("small", seed=self.seed * 101 + index)
        tid = summary["tenant_id"]
        doc = {"enrollmentGroups": summary["enrollment_groups"], "platforms": list(PLATFORMS)}
        r = await self.c.call("PUT", f"/api/tenants/{tid}", json=doc)
        assert r.status_code in (200, 201), r.text
        truth = self.c.sim.truth(tid, summary["enrollment_groups"], ",".join(PLATFORMS))
        t = TenantModel(tid, list(summary["enrollment_groups"]), dict(truth["resolved_groups"]))
        t.all_groups = list(summary["enrollment_groups"])
        t.devices = [d["id"] for d in truth["devices"]]
        t.users = sorted({d["ownerId"] for d in truth["devices"]})
        self.observe(t)
        return t

    def observe(self, t: TenantModel) -> None:
        """Record ground truth now (who entered and who ever left scope)."""
        now = self.c.truth(t.tid, t.groups, t.platforms)
        t.ever_out |= t.last_truth - now
        t.ever_in |= now
        t.last_truth = now

    # ---- steps --------------------------------------------------------------------------------------------------
    def mutate(self, t: TenantModel, op: str | None = None) -> None:
        rng = self.rng
        sim = self.c.sim
        ops = ["new_user_device", "new_device", "delete_device", "delete_user", "change_os", "set_owner",
               "disable_user", "nest", "unnest", "remove_member", "rename_group", "add_member", "restore_user",
               "restore_user"]
        op = op or rng.choice(ops)
        gid = rng.choice(sorted(t.resolved.values())) if t.resolved else None
        try:
            if op == "new_user_device" and gid:
                target = rng.choice([gid, *t.extra_groups]) if t.extra_groups else gid
                user = sim.mutate(t.tid, "add_user", groups=[target], **self.lag("lag_seconds"))["id"]
                t.users.append(user)
                t.memberships.append((target, user))
                dev = sim.mutate(t.tid, "add_device", operatingSystem=rng.choice((*PLATFORMS, "Windows")),
                                 owner_id=user, **self.lag("lag_seconds"), **self.lag("owner_lag_seconds"))["id"]
                t.devices.append(dev)
            elif op == "new_device" and t.users:
                dev = sim.mutate(t.tid, "add_device", operatingSystem=rng.choice((*PLATFORMS, "macOS")),
                                 owner_id=rng.choice(t.users), **self.lag("lag_seconds"),
                                 **self.lag("owner_lag_seconds"))["id"]
                t.devices.append(dev)
            elif op == "delete_device" and t.devices:
                dev = t.devices.pop(rng.randrange(len(t.devices)))
                sim.mutate(t.tid, "delete_device", device_id=dev)
            elif op == "delete_user" and t.users:
                user = t.users.pop(rng.randrange(len(t.users)))
                permanent = rng.random() < 0.3
                sim.mutate(t.tid, "delete_user", user_id=user, permanent=permanent)
                if not permanent and "restore_user" in self.c.supported:
                    t.deleted.append(user)
            elif op == "restore_user" and t.deleted:
                user = t.deleted.pop(rng.randrange(len(t.deleted)))
                sim.mutate(t.tid, "restore_user", user_id=user)
                t.users.append(user)
            elif op == "change_os" and t.devices:
                sim.mutate(t.tid, "change_os", device_id=rng.choice(t.devices),
                           operatingSystem=rng.choice((*PLATFORMS, "Windows")))
            elif op == "set_owner" and t.devices:
                owner = rng.choice([*t.users, None]) if t.users else None
                sim.mutate(t.tid, "set_owner", device_id=rng.choice(t.devices), owner_id=owner)
            elif op == "disable_user" and t.users:
                sim.mutate(t.tid, rng.choice(("disable_user", "enable_user")), user_id=rng.choice(t.users))
            elif op == "nest" and gid:
                child = sim.mutate(t.tid, "add_group", displayName=f"Nested {self.rng.randrange(10**6)}")["id"]
                t.extra_groups.append(child)
                for _ in range(rng.randint(1, 3)):
                    user = sim.mutate(t.tid, "add_user")["id"]
                    t.users.append(user)
                    sim.mutate(t.tid, "add_member", group_id=child, member_id=user)
                    t.memberships.append((child, user))
                    t.devices.append(sim.mutate(t.tid, "add_device", operatingSystem=rng.choice(PLATFORMS),
                                                owner_id=user)["id"])
                sim.mutate(t.tid, "nest_group", parent_id=gid, child_id=child)
                t.nested.append((gid, child))
            elif op == "unnest" and t.nested:
                parent, child = t.nested.pop(rng.randrange(len(t.nested)))
                sim.mutate(t.tid, "unnest_group", parent_id=parent, child_id=child)
            elif op == "remove_member" and t.memberships:
                group, member = t.memberships.pop(rng.randrange(len(t.memberships)))
                sim.mutate(t.tid, "remove_member", group_id=group, member_id=member)
            elif op == "add_member" and gid and t.users:
                member = rng.choice(t.users)
                sim.mutate(t.tid, "add_member", group_id=gid, member_id=member, **self.lag("lag_seconds"))
                t.memberships.append((gid, member))
            elif op == "rename_group" and gid:
                if gid in t.renamed:
                    sim.mutate(t.tid, "rename_group", group_id=gid, displayName=t.renamed.pop(gid))
                else:
                    name = next(n for n, i in t.resolved.items() if i == gid)
                    t.renamed[gid] = name
                    sim.mutate(t.tid, "rename_group", group_id=gid, displayName=f"{name} (old)")
            else:
                return
        except AssertionError as exc:  # the directory refused (e.g. already a member): a no-op mutation
            if "-> 400" not in str(exc):
                raise
        self.log(f"mutate {op} {t.tid[:8]}")
        self.observe(t)

    async def reconfigure(self, t: TenantModel) -> None:
        """The console changes the tenant's platforms or enrollment groups (a new config version: full reconcile)."""
        groups, platforms = t.groups, t.platforms
        if self.rng.random() < 0.5 or len(t.all_groups) < 2:
            platforms = sorted(self.rng.sample(PLATFORMS, self.rng.randint(1, 3)))
        else:
            groups = sorted(self.rng.sample(t.all_groups, self.rng.randint(1, len(t.all_groups))))
        r = await self.c.call("PUT", f"/api/tenants/{t.tid}", json={"enrollmentGroups": groups, "platforms": platforms})
        # Refused while Entra or consent is failing (503/424...): the stored config is what counts.
        assert r.status_code in (200, 409, 424, 502, 503), r.text
        doc = (await self.c.call("GET", f"/api/tenants/{t.tid}")).json()["config"]
        t.groups, t.platforms = list(doc["enrollmentGroups"]), list(doc["platforms"])
        self.log(f"reconfigure {t.tid[:8]} -> {r.status_code}: groups={len(t.groups)} platforms={t.platforms}")
        self.observe(t)

    def lag(self, name: str) -> dict[str, float]:
        """Sometimes, replication lag for a new object or link (simulated seconds; Entra is eventually consistent)."""
        if "replication_lag" not in self.c.supported or self.rng.random() > 0.3:
            return {}
        self.fault("replication_lag")
        return {name: self.rng.choice((30, 600, 3600))}

    async def poll_step(self) -> None:
        """A poll of some kind: the timer, a console sync (full or not), or a dry run."""
        rng = self.rng
        kind = rng.choices(("tick", "sync", "full", "dry"), (6, 2, 1, 1))[0]
        t = rng.choice(self.tenants)
        if kind == "tick":
            await self.c.tick()
        elif kind in ("sync", "full"):
            r = await self.c.call("POST", f"/api/tenants/{t.tid}/sync", params={"full": str(kind == "full").lower()})
            assert r.status_code in (202, 503), r.text
            await self.c.drain()
        else:
            before = len(await self.c.events(t.tid))
            r = await self.c.call("POST", f"/api/tenants/{t.tid}/sync",
                                  params={"dryRun": "true", "full": rng.choice(("true", "false"))})
            assert r.status_code in (200, 409, 424, 502, 503), r.text
            after = len(await self.c.events(t.tid))
            assert after == before, f"dry run wrote {after - before} events"
        self.log(f"poll {kind}")

    def inject(self) -> None:
        """One fault aimed at one tenant (it stays until used up or the run's faults are cleared)."""
        rng = self.rng
        sim = self.c.sim
        t = rng.choice(self.tenants)
        match = {"tenant": t.tid, "path_prefix": rng.choice(GRAPH_PREFIXES)}
        count = rng.choice((1, 2, MAX_RETRIES + 1, 6))
        names = ["throttle", "throttle_no_retry_after", "5xx", "504", "reset", "truncate", "slow", "delta_410",
                 "delta_sync_state", "token_outage", "keyvault_outage", "consent_revoked"]
        names += sorted({"round_empty", "round_truncated", "members_short", "redirect"} & self.c.supported)
        names += ["malformed"] if "html" in self.c.supported else []
        names += ["intune_missing"] if "intune_missing" in self.c.supported else []
        name = rng.choice(names)
        if name == "throttle":
            sim.fault("throttle", match=match, count=count, retry_after=rng.choice((0.01, 0.05)))
        elif name == "throttle_no_retry_after":
            sim.fault("throttle", match=match, count=count, retry_after=None)
        elif name == "5xx":
            sim.fault("status", match=match, count=count, status=rng.choice((500, 502, 503)),
                      retry_after=rng.choice((None, 0.01)))
        elif name == "504":
            sim.fault("status", match=match, count=count, status=504)
        elif name in ("reset", "truncate", "redirect"):
            sim.fault(name, match=match, count=count)
        elif name == "malformed":
            # An HTML page instead of JSON, with a 200 or an error status (a proxy's or front door's answer).
            sim.fault("html", match=match, count=count, status=rng.choice((200, 502, 503)))
        elif name == "slow":
            sim.fault("latency", match=match, count=count, latency_ms=int(READ_TIMEOUT * 1000) + 300)
        elif name in ("delta_410", "delta_sync_state"):
            stream = rng.choice(("groups", "devices"))
            spec: dict[str, Any] = {"status": 410} if name == "delta_410" else {}
            sim.fault("delta_expiry", match={"tenant": t.tid, "path_prefix": f"/v1.0/{stream}/delta"}, count=1, **spec)
        elif name in ("round_empty", "round_truncated", "members_short"):
            sim.fault(name, match={"tenant": t.tid, "path_prefix": "/v1.0/groups/delta"}, count=1)
        elif name == "token_outage":
            sim.fault("token_outage", match={"tenant": t.tid}, count=rng.choice((3, 8)), retry_after=0.01)
            self.c.workers.restart() if self.c.workers else None  # fresh caches must ask Entra
        elif name == "keyvault_outage":
            sim.fault("status", match={"path_prefix": "/secrets"}, count=rng.choice((2, 6)), status=503,
                      retry_after=0.01)
            self.c.workers.restart() if self.c.workers else None  # the secret is not cached by a new worker
        elif name == "intune_missing":
            # The Intune service principal lists fewer services (or none); a new worker discovers them again.
            left = rng.choice(([], [INTUNE_SERVICES[0]], [INTUNE_SERVICES[1]]))
            sim.mutate(t.tid, "set_intune_endpoints", providers=left)
            t.intune_changed = True
            self.c.workers.restart() if self.c.workers else None
        elif name == "consent_revoked":
            app_id = sim.info["connector"]["client_id"]
            if t.revoked is None:
                grants = sim.call("GET", "/_sim/consent", params={"tenant_id": t.tid, "app_id": app_id})
                t.revoked = list(grants.get("roles") or [])
                sim.call("DELETE", "/_sim/consent", params={"tenant_id": t.tid, "app_id": app_id})
                self.c.workers.restart() if self.c.workers else None
        self.fault(name)
        self.log(f"fault {name} {match.get('path_prefix')} x{count} {t.tid[:8]}")

    async def kill_step(self) -> None:
        """Arm a kill at a seeded I/O operation of the worker (the k-th Graph request, table operation or queue
        send of the poll) and run a poll."""
        assert self.c.workers is not None
        what = self.rng.choices(("graph", "table_write", "table_read", "queue"), (4, 5, 2, 1))[0]
        at = self.rng.randint(1, max(2, self.c.last_ops[what]))
        mode = self.rng.choice(("before", "after"))
        if what == "table_write":
            at = self.rng.randint(2, max(3, self.c.last_ops[what]))  # the first write is the lease
        switch = self.c.workers.current.switch
        kills = self.c.workers.kills
        if self.rng.random() < 0.8:
            # Give the poll something to write, so the kill can land between its write transactions: devices that
            # enter scope (a new member with a phone) or leave it (deleted).
            t = self.rng.choice(self.tenants)
            for _ in range(self.rng.randint(1, 3)):
                if self.rng.random() < 0.7 and t.resolved:
                    gid = self.rng.choice(sorted(t.resolved.values()))
                    user = self.c.sim.mutate(t.tid, "add_user", groups=[gid])["id"]
                    t.users.append(user)
                    t.memberships.append((gid, user))
                    t.devices.append(self.c.sim.mutate(t.tid, "add_device", operatingSystem=self.rng.choice(PLATFORMS),
                                                       owner_id=user)["id"])
                    self.log(f"mutate new in-scope device {t.tid[:8]}")
                    self.observe(t)
                else:
                    self.mutate(t, "delete_device")
        try:
            # Count the poll's operations only (not the dispatcher's or the console call's).
            timer = self.rng.random() < 0.2
            if timer:
                # The upload results timer or the heartbeats die instead (their table writes).
                name = self.rng.choice(("poll_upload_results", "send_heartbeats"))
                what = "table_write"
                switch.arm(what, self.rng.randint(1, 6), mode)
                await self.c.devhost.run_timer(name, raise_on_error=False)
            elif self.rng.random() < 0.7:
                self.c.advance(POLL_INTERVAL)
                await self.c.devhost.run_timer("dispatch_polls", raise_on_error=False)
            else:
                t = self.rng.choice(self.tenants)
                await self.c.call("POST", f"/api/tenants/{t.tid}/sync",
                                  params={"full": self.rng.choice(("true", "false"))})
            if not timer:
                switch.arm(what, at, mode)
            await self.c.drain()
        finally:
            ops = switch.disarm()
        if self.c.workers.kills > kills:
            self.fault(f"host_kill:{switch.fired}")
            self.log(f"kill at {switch.fired} (ops so far {dict(ops)})")
        elif not timer:
            for kind, n in ops.items():
                self.c.last_ops[kind] = max(2, n)
            self.log(f"kill at {what} op {at} {mode} armed, poll finished first ({dict(ops)})")

    async def stall_step(self) -> None:
        """A poll freezes at a seeded operation past its lease; another worker takes the tenant over and polls;
        then the frozen one wakes up and carries on (it must notice it lost the lease before writing)."""
        assert self.c.workers is not None
        t = self.rng.choice(self.tenants)
        what = self.rng.choice(("graph", "table_write", "table_read"))
        at = self.rng.randint(1, max(2, self.c.last_ops[what]))
        switch = self.c.workers.current.switch
        r = await self.c.call("POST", f"/api/tenants/{t.tid}/sync", params={"full": self.rng.choice(("true", "false"))})
        assert r.status_code == 202, r.text
        frozen, release = switch.arm_stall(what, at)
        drain = asyncio.create_task(self.c.drain())
        try:
            waiting = asyncio.create_task(frozen.wait())
            await asyncio.wait({drain, waiting}, return_when=asyncio.FIRST_COMPLETED, timeout=60)
            waiting.cancel()
            if not frozen.is_set():
                switch.stall = None
                self.log(f"stall at {what} op {at}: the poll finished first")
                return
            stats = self.c.devhost.counters()["poll_tenant"]
            finished = stats["successes"] + stats["failures"]
            self.c.advance(LEASE_SECONDS + POLL_INTERVAL)
            # The next scheduled poll (a console sync would collapse into the one the frozen worker is serving).
            await self.c.enqueue({"tenant_id": t.tid, "reason": "scheduled", "full": False,
                                  "enqueued_at": self.c.clock.now()})
            for _ in range(1000):  # the second worker's poll runs to its end while the first is frozen
                stats = self.c.devhost.counters()["poll_tenant"]
                if stats["successes"] + stats["failures"] > finished:
                    break
                await asyncio.sleep(0.02)
            self.fault("stalled_past_lease")
            self.log(f"stall at {what} op {at} past the lease; another poll ran meanwhile")
        finally:
            release.set()
            await drain

    async def duplicates_step(self) -> None:
        t = self.rng.choice(self.tenants)
        body = {"tenant_id": t.tid, "reason": "scheduled", "full": False, "enqueued_at": self.c.clock.now()}
        copies = self.rng.randint(2, 4)
        if self.rng.random() < 0.5:
            # Concurrent: the copies and a console sync are in the queue together, picked up in one batch.
            await self.c.enqueue(body, copies=copies)
            await self.c.call("POST", f"/api/tenants/{t.tid}/sync")
            self.fault("concurrent_messages")
        else:
            await self.c.enqueue(body, copies=copies)
            await self.c.drain()
            await self.c.enqueue(body, copies=1)  # redelivered after its poll ran
            self.fault("duplicate_messages")
        await self.c.drain()
        self.log(f"duplicates x{copies} {t.tid[:8]}")

    async def approve(self, t: TenantModel) -> None:
        """Approve the plan the tenant's status names (409 when nothing or another plan is staged)."""
        staged = (await self.c.status(t.tid)).get("stagedDeactivations") or {}
        plan = staged.get("planId") or f"plan-{self.rng.randrange(16**24):024x}"
        r = await self.c.call("POST", f"/api/tenants/{t.tid}/deactivations/approve", json={"planId": plan})
        assert r.status_code in (202, 409), r.text
        await self.c.drain()

    async def console_step(self) -> None:
        rng = self.rng
        t = rng.choice(self.tenants)
        kind = rng.choice(("approve", "heartbeat", "threat", "threat", "inventory", "results"))
        if kind == "approve":
            await self.approve(t)
        elif kind == "heartbeat":
            await self.c.devhost.run_timer("send_heartbeats", raise_on_error=False)
        elif kind == "results":
            await self.c.devhost.run_timer("poll_upload_results", raise_on_error=False)
        else:
            rows = [d for d in await self.c.devices(t.tid) if d["state"] == "enrolled"]
            if not rows:
                return
            dev = rng.choice(rows)
            if kind == "threat":
                detected = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.c.clock.now() - 60))
                level = rng.choice(("secured", "low", "medium", "high"))
                r = await self.c.call("PUT", f"/api/tenants/{t.tid}/devices/{dev['deviceId']}/threat",
                                      json={"level": level, "detectedAt": detected},
                                      headers={"Idempotency-Key": uuid.uuid4().hex})
                if r.status_code == 202:
                    t.threats[dev["deviceId"]] = (detected, level, str(r.json().get("uploadId")))
            else:
                r = await self.c.call("POST", f"/api/tenants/{t.tid}/devices/{dev['deviceId']}/inventory")
            assert r.status_code in (202, 404, 409, 424, 502, 503), r.text
        self.log(f"console {kind} {t.tid[:8]}")

    async def step(self) -> None:
        rng = self.rng
        what = rng.choices(
            ("mutate", "poll", "fault", "kill", "duplicates", "console", "restart", "azurite", "clock", "stall",
             "reconfigure"),
            (5, 5, 4, 3.5, 1, 2, 0.4, 0.12, 0.3, 0.6, 0.4),
        )[0]
        assert self.c.workers is not None
        if what == "mutate":
            for _ in range(rng.randint(1, 3)):
                self.mutate(rng.choice(self.tenants))
        elif what == "poll":
            await self.poll_step()
        elif what == "fault":
            self.inject()
            await self.poll_step()
        elif what == "kill":
            await self.kill_step()
        elif what == "duplicates":
            await self.duplicates_step()
        elif what == "console":
            await self.console_step()
        elif what == "restart":
            self.c.workers.restart()
            self.fault("worker_restart")
            self.log("worker restart")
        elif what == "azurite":
            during = rng.random() < 0.5
            if during:
                # Storage goes away while a poll runs.
                self.c.advance(POLL_INTERVAL)
                await self.c.devhost.run_timer("dispatch_polls", raise_on_error=False)
                await asyncio.gather(asyncio.to_thread(self.c.restart_azurite), self.c.drain())
            else:
                await asyncio.to_thread(self.c.restart_azurite)
            self.log(f"(azurite back after {self.c.azurite.startup_seconds:.1f} s)")
            await self.c.drain()
            self.fault("azurite_restart")
            self.log(f"azurite restart (during a poll: {during})")
        elif what == "stall":
            await self.stall_step()
        elif what == "reconfigure":
            await self.reconfigure(rng.choice(self.tenants))
        elif what == "clock":
            days = rng.choice((1, 3, 8))
            self.c.advance(days * 86400)
            self.fault("clock_jump")
            self.log(f"clock +{days}d")

    # ---- convergence and checks ---------------------------------------------------------------------------------
    def stop_faults(self) -> None:
        sim = self.c.sim
        sim.clear_faults()
        app_id = sim.info["connector"]["client_id"]
        for t in self.tenants:
            if t.intune_changed:
                sim.mutate(t.tid, "set_intune_endpoints", providers=list(INTUNE_SERVICES))
                t.intune_changed = False
            if t.revoked is not None:
                sim.call("POST", "/_sim/consent", json={"tenant_id": t.tid, "app_id": app_id, "roles": t.revoked})
                t.revoked = None

    async def converged(self, t: TenantModel) -> bool:
        rows = await self.c.devices(t.tid)
        return {d["id"] for d in rows if d["state"] == "enrolled"} == self.c.truth(t.tid, t.groups, t.platforms)

    async def converge(self) -> None:
        self.stop_faults()
        for _ in range(FINAL_ROUNDS):
            await self.c.tick(advance=QUARANTINE_RETRY + POLL_INTERVAL)
            for t in self.tenants:
                status = await self.c.status(t.tid)
                if (status.get("stagedDeactivations") or {}).get("state") == "deactivations_staged":
                    # The operator reviews the staged plan against the directory and approves it.
                    await self.approve(t)
                    self.log(f"final approve {t.tid[:8]}")
            await self.c.drain()
            if self.debug:
                for t in self.tenants:
                    self.log(f"converge {t.tid[:8]}: {(await self.c.status(t.tid)).get('lastPoll')}")
            if all([await self.converged(t) for t in self.tenants]):
                return

    async def check(self, t: TenantModel) -> None:
        res = self.result
        truth = self.c.truth(t.tid, t.groups, t.platforms)
        rows = await self.c.devices(t.tid)
        enrolled = {d["id"] for d in rows if d["state"] == "enrolled"}
        events = await self.c.events(t.tid)
        tag = t.tid[:8]
        missing, extra = truth - enrolled, enrolled - truth
        if missing:
            res.lost += len(missing)
            res.errors.append(f"{tag}: {len(missing)} in-scope devices not enrolled, e.g. {sorted(missing)[:3]}")
        if extra:
            res.diverged += len(extra)
            status = await self.c.status(t.tid)
            res.errors.append(f"{tag}: {len(extra)} enrolled devices out of scope, e.g. {sorted(extra)[:3]}; "
                              f"groups={status.get('enrollmentGroups')} staged={status.get('stagedDeactivations')}")
        # The feed: sequences 1..n, unique ids, per device enrolled/deactivated alternate, replays to the rows.
        seqs = [e["sequence"] for e in events]
        if seqs != list(range(1, len(events) + 1)):
            gaps = sorted(set(range(1, (max(seqs) if seqs else 0) + 1)) - set(seqs))
            dup = len(seqs) - len(set(seqs))
            res.lost += len(gaps)
            res.duplicates += dup
            res.errors.append(f"{tag}: event sequence broken: {len(gaps)} gaps {gaps[:5]}, {dup} repeated")
        if len({e["id"] for e in events}) != len(events):
            res.duplicates += len(events) - len({e["id"] for e in events})
            res.errors.append(f"{tag}: duplicate event ids")
        state: dict[str, bool] = {}
        for e in events:
            dev, was = e["deviceObjectId"], state.get(e["deviceObjectId"], False)
            if e["type"] == "enrolled":
                if was:
                    res.duplicates += 1
                    res.errors.append(f"{tag}: duplicate enroll event for {dev} (seq {e['sequence']})")
                state[dev] = True
            elif e["type"] == "deactivated":
                if not was:
                    res.duplicates += 1
                    res.errors.append(f"{tag}: deactivation without enrollment for {dev} (seq {e['sequence']})")
                elif dev in t.ever_in and dev not in t.ever_out:
                    res.wrongly_deactivated += 1
                    res.errors.append(f"{tag}: {dev} deactivated (seq {e['sequence']}) though always in scope")
                state[dev] = False
            elif not was:
                res.diverged += 1
                res.errors.append(f"{tag}: update of a device that is not enrolled {dev} (seq {e['sequence']})")
        replayed = {d for d, on in state.items() if on}
        if replayed != enrolled:
            res.lost += len(enrolled - replayed)  # enrolled without its event
            res.diverged += len(replayed - enrolled)
            res.errors.append(f"{tag}: feed replays to {len(replayed)} devices, rows say {len(enrolled)}: "
                              f"no event for {sorted(enrolled - replayed)[:3]}, "
                              f"events but no row for {sorted(replayed - enrolled)[:3]}")
        # Nobody stuck without a reason; the next quiet poll is cheap (cursors valid) and writes nothing.
        status = await self.c.status(t.tid)
        last = status.get("lastPoll") or {}
        quarantine = status.get("quarantine") or {}
        if last.get("lastError") or quarantine.get("state") not in (None, "ok"):
            res.diverged += 1
            res.errors.append(f"{tag}: stuck after the faults stopped: lastPoll={last} quarantine={quarantine}")
        if (status.get("stagedDeactivations") or {}).get("state") == "deactivations_staged":
            res.diverged += 1
            res.errors.append(f"{tag}: deactivations still staged: {status.get('guard')}")

    async def check_threats(self) -> None:
        """Every threat report the API accepted (202) reaches Intune: after the results timer settles them, Intune
        holds each device's latest accepted level, whatever killed or failed meanwhile."""
        if not any(t.threats for t in self.tenants):
            return
        for _ in range(2):
            self.c.advance(120)  # past Intune's processing time
            await self.c.devhost.run_timer("poll_upload_results", raise_on_error=False)
        for t in self.tenants:
            intune = self.c.sim.intune(t.tid)
            levels = intune.get("threat_levels", {})
            for device_id, (_when, level, upload_id) in t.threats.items():
                got = (levels.get(device_id) or {}).get("ThreatLevel")
                message = (intune.get("messages") or {}).get(upload_id) or {}
                if "DeviceNotFound" in str(message.get("error_detail")):
                    # The device was deleted before Intune processed the report: Intune refused it.
                    self.log(f"threat report {upload_id} refused by Intune: device {device_id} deleted meanwhile")
                    continue
                if got != level:
                    self.result.lost += 1
                    self.result.errors.append(f"{t.tid[:8]}: accepted threat level {level} for device {device_id} "
                                              f"never reached Intune (Intune has {got}; message {upload_id}: "
                                              f"{message or 'never received'})")

    async def quiet_round(self) -> None:
        """Two more polls after convergence: nothing is written, the second is quiet (every tenant's cursors work:
        two Graph requests), and the lease is released."""
        heads = {t.tid: len(await self.c.events(t.tid)) for t in self.tenants}
        # The first poll after a full reconcile may re-read devices its devices/delta cursor still reports (changes
        # the full read already applied): it must write nothing; the one after it must be quiet.
        await self.c.tick()
        before = {t.tid: self.c.graph_requests(t.tid) for t in self.tenants}
        routes = {t.tid: self.c.graph_routes(t.tid) for t in self.tenants}
        # Objects still pending (e.g. a device first seen without its owner link, kept up to an hour) are retried:
        # one $batch per 20 of them, each counted by the simulator with its inner request (issue 10 §1).
        pending = {t.tid: int(((await self.c.status(t.tid)).get("pending") or {}).get("count") or 0)
                   for t in self.tenants}
        await self.c.tick()
        for t in self.tenants:
            used = self.c.graph_requests(t.tid) - before[t.tid]
            by_route = dict(self.c.graph_routes(t.tid) - routes[t.tid])
            status = await self.c.status(t.tid)
            last = status.get("lastPoll") or {}
            if len(await self.c.events(t.tid)) != heads[t.tid]:
                self.result.diverged += 1
                self.result.errors.append(f"{t.tid[:8]}: a quiet poll after convergence wrote events")
            # A quiet incremental poll is groups/delta + devices/delta from the committed cursors and writes
            # nothing but its lease (not even lastPoll).
            if used > 2 + math.ceil(pending[t.tid] / 20) + pending[t.tid] or used < 2 or last.get("lastError"):
                self.result.diverged += 1
                self.result.errors.append(f"{t.tid[:8]}: quiet poll not a cheap incremental one: {used} requests "
                                          f"{by_route}, pending={status.get('pending')}, lastPoll={last}")
        leases = await self.leases()
        now = self.c.clock.now()
        for t in self.tenants:
            row = leases.get(t.tid)
            if row is None:
                self.result.errors.append(f"{t.tid[:8]}: no lease row after polls")
            elif row.get("holder") and float(row.get("expires_at") or 0) > now:
                self.result.errors.append(f"{t.tid[:8]}: lease still held after the queue drained: {row}")

    async def leases(self) -> dict[str, dict[str, Any]]:
        from azure.data.tables.aio import TableClient

        name = f"{self.c.env['TABLE_PREFIX']}leases"
        async with TableClient.from_connection_string(self.c.env["AzureWebJobsStorage"], name) as table:
            return {row["RowKey"]: dict(row) async for row in table.query_entities("PartitionKey eq 'poll'")}

    async def run(self, steps: int | None = None) -> RunResult:
        t0 = time.monotonic()
        try:
            count = 2 if self.rng.random() < 0.3 else 1
            self.tenants = [await self.provision(i) for i in range(count)]
            self.result.tenants = count
            await self.c.tick()
            for _ in range(steps if steps is not None else self.rng.randint(8, 16)):
                started = time.monotonic()
                await self.step()
                if time.monotonic() - started > 5:
                    self.log(f"(the step above took {time.monotonic() - started:.1f} s)")
            phase = time.monotonic()
            await self.converge()
            self.log(f"(convergence took {time.monotonic() - phase:.1f} s)")
            for t in self.tenants:
                await self.check(t)
            await self.check_threats()
            if self.result.ok:
                await self.quiet_round()
        except Exception as exc:  # the run reports, the campaign goes on with the next seed
            self.result.errors.append(f"exception: {exc!r}\n{traceback.format_exc(limit=8)}")
        finally:
            self.stop_faults()
            for t in self.tenants:
                with contextlib.suppress(Exception):
                    await self.c.call("DELETE", f"/api/tenants/{t.tid}")
                with contextlib.suppress(Exception):
                    self.c.sim.call("DELETE", f"/_sim/tenants/{t.tid}")
            self.result.seconds = time.monotonic() - t0
        return self.result


async def run_seed(campaign: Campaign, seed: int, *, debug: bool = False) -> RunResult:
    """Run one seed on an open campaign (``debug``: log each convergence round's poll in the steps)."""
    run = Run(campaign, seed)
    run.debug = debug
    return await run.run()


def replay_command(seed: int) -> str:
    return f".venv/bin/python -m tests.chaos.campaign --seed {seed}"


ALL_FAULTS = ("replication_lag", "intune_missing", "throttle", "throttle_no_retry_after", "5xx", "504", "reset",
              "truncate", "malformed", "redirect", "slow", "round_empty", "round_truncated", "members_short",
              "delta_410", "delta_sync_state", "token_outage", "consent_revoked", "keyvault_outage", "azurite_restart",
              "host_kill", "stalled_past_lease", "duplicate_messages", "concurrent_messages", "worker_restart",
              "clock_jump")


def histogram(total: Counter[str]) -> list[str]:
    lines = ["faults injected:"]
    kills = sum(v for k, v in total.items() if k.startswith("host_kill"))
    for name in ALL_FAULTS:
        n = kills if name == "host_kill" else total.get(name, 0)
        lines.append(f"  {name:<26}{n:>6}" + ("  (not offered by the simulator yet)" if n == 0 else ""))
    for k in sorted(k for k in total if k.startswith("host_kill:")):
        lines.append(f"    {k:<24}{total[k]:>6}")
    return lines


async def main_async(args: argparse.Namespace) -> int:
    from devhost.azurite import start_azurite
    from simulator import launch
    from tests.conftest import SimAdmin

    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.runs))
    with tempfile.TemporaryDirectory(prefix="campaign-") as tmp:
        workdir = Path(tmp)
        # The functions' and devhost's logs (a killed worker logs a traceback) go to a file, not the report.
        logging.basicConfig(filename=args.log or str(workdir / "campaign.log"), level=logging.INFO, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("azure").setLevel(logging.WARNING)
        info, process = launch.start(workdir / "sim")
        sim = SimAdmin(info)
        azurite = start_azurite(workdir / "azurite")
        total: Counter[str] = Counter()
        failed: list[RunResult] = []
        sums = Counter[str]()
        t0 = time.monotonic()
        cpu0 = time.process_time()
        try:
            async with Campaign.open(sim, azurite, workdir) as campaign:
                for i, seed in enumerate(seeds, 1):
                    res = await run_seed(campaign, seed, debug=args.verbose)
                    total.update(res.faults)
                    for k in ("lost", "duplicates", "diverged", "wrongly_deactivated"):
                        sums[k] += getattr(res, k)
                    flag = "ok" if res.ok else "FAIL"
                    print(f"[{i}/{len(seeds)}] seed={seed} tenants={res.tenants} steps={len(res.steps)} "
                          f"{res.seconds:.1f}s {flag}", flush=True)
                    if args.verbose:
                        print(f"    faults: {dict(sorted(res.faults.items()))}")
                    if args.verbose and res.ok:
                        for s in res.steps:
                            print(f"      step: {s}")
                    if not res.ok:
                        failed.append(res)
                        for e in res.errors:
                            print(f"    {e}", flush=True)
                        if args.verbose:
                            for s in res.steps:
                                print(f"      step: {s}")
                        print(f"    replay: {replay_command(seed)}", flush=True)
        finally:
            azurite.stop()
            sim.http.close()
            launch.stop(process)
        wall = time.monotonic() - t0
        print("\n".join(histogram(total)))
        print(f"campaign: {len(seeds)} runs in {wall:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU (this "
              "process; the simulator and Azurite run in their own)")
        if failed:
            print("failing seeds: " + " ".join(str(r.seed) for r in failed))
            for r in failed:
                print(f"  {replay_command(r.seed)}")
        other = sum(1 for r in failed if not (r.lost or r.duplicates or r.diverged or r.wrongly_deactivated))
        if other:
            print(f"runs with other errors (exceptions, stuck leases): {other}")
        print(f"runs={len(seeds)} lost={sums['lost']} duplicates={sums['duplicates']} diverged={sums['diverged']} "
              f"wrongly_deactivated={sums['wrongly_deactivated']}")
        return 1 if failed else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--first", type=int, default=1, help="first seed (seeds first..first+runs-1)")
    parser.add_argument("--seed", type=int, default=None, help="replay one seed")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the steps of failing runs")
    parser.add_argument("--log", default=None, help="write the stack's logs here (default: a temp file)")
    args = parser.parse_args()
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the simulator and Azurite are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
