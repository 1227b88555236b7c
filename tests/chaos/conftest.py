"""Chaos fixtures: a small fleet polled end to end through devhost while the simulator injects faults.

Everything is driven the way Azure and the console would drive it: tenants are provisioned with the HTTP API, polls
are fanned out by firing the ``dispatch_polls`` timer and draining the poll queue, heartbeats by firing
``send_heartbeats``, and every check reads the HTTP API (tenant status, devices, events) or the simulator's admin API
(ground truth, request counters). Only time is moved by the test: the connector's clock is a wall clock plus an
offset (the container's documented clock seam), so backoff and quarantine windows pass without waiting.

A "worker restart" installs a fresh :class:`~shared_code.bootstrap.Container` (same settings, same clock) under the
running devhost, as a new Functions worker process would start: empty token caches, fresh services.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.chaos.api_reads import all_devices, all_events

PLATFORMS = ("iOS", "iPadOS", "Android")
POLL_INTERVAL_SECONDS = 5 * 60
# Few transport retries keep jittered backoff short (counts are asserted, never seconds); a fault that outlasts
# them reaches the poll, which is what most scenarios here are about.
MAX_RETRIES = 2
QUARANTINE_AFTER = 3


class MovableClock:
    """Wall clock plus an offset the test moves (the connector's side only)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Seconds since the epoch, shifted."""
        return time.time() + self.offset


@pytest.fixture(scope="module")
def module_env(connector_env: dict[str, str]) -> dict[str, str]:
    """connector_env with this module's own tables and queue, few retries and a short quarantine streak."""
    suffix = uuid.uuid4().hex[:10]
    return connector_env | {
        "TABLE_PREFIX": f"c{suffix}",
        "POLL_QUEUE_NAME": f"chaos-{suffix}",
        "GRAPH_MAX_RETRIES": str(MAX_RETRIES),
        "QUARANTINE_AFTER_FAILURES": str(QUARANTINE_AFTER),
    }


@pytest.fixture(scope="module")
def clock() -> MovableClock:
    """The connector's clock for this module."""
    return MovableClock()


class Workers:
    """The container installed for the functions, replaceable to simulate a worker restart."""

    def __init__(self, env: dict[str, str], clock: MovableClock) -> None:
        from shared_code.bootstrap import Container
        from shared_code.settings import Settings

        self._settings = Settings.from_env(env)
        self._clock = clock
        self._make = Container
        self.current = Container(self._settings, clock=clock)
        self.retired: list[Any] = []
        self.restarts = 0

    def install(self) -> None:
        from shared_code.bootstrap import use_container

        use_container(self.current)

    async def restart(self) -> None:
        """A new worker process: fresh container (token caches, services), same settings and clock."""
        self.retired.append(self.current)
        self.current = self._make(self._settings, clock=self._clock)
        self.install()
        self.restarts += 1

    async def close(self) -> None:
        from shared_code.bootstrap import use_container

        use_container(None)
        for c in [*self.retired, self.current]:
            await c.close()


@pytest.fixture(scope="module")
async def workers(module_env: dict[str, str], clock: MovableClock) -> AsyncIterator[Workers]:
    """The functions' container (movable clock), installed for the module."""
    w = Workers(module_env, clock)
    w.install()
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture(scope="module")
async def app_container(workers: Workers) -> Any:
    """The currently installed container (the shared ``devhost`` fixture depends on this name)."""
    return workers.current


class Stack:
    """The chaos test's handle on the running connector and the simulator."""

    def __init__(self, sim: Any, devhost: Any, api: httpx.AsyncClient, clock: MovableClock, workers: Workers,
                 env: dict[str, str]) -> None:
        self.sim = sim
        self.devhost = devhost
        self.api = api
        self.clock = clock
        self.workers = workers
        self.env = env
        self.provisioned: list[str] = []

    def renew_console_token(self) -> None:
        """A fresh console token for the API client (after the simulator's signing keys changed)."""
        token = self.sim.console_token(["Console.Manage", "Console.Read"])
        self.api.headers["Authorization"] = f"Bearer {token}"

    # ---- tenants ------------------------------------------------------------------------------------------------

    async def provision(self, seed: int, **body: Any) -> dict[str, Any]:
        """A new ``small`` simulated tenant, provisioned through ``PUT /api/tenants/{id}``; returns its summary."""
        summary: dict[str, Any] = self.sim.create_tenant("small", seed=seed)
        doc = {"enrollmentGroups": summary["enrollment_groups"], "platforms": list(PLATFORMS), **body}
        response = await self.api.put(f"/api/tenants/{summary['tenant_id']}", json=doc)
        assert response.status_code in (200, 201), response.text
        self.provisioned.append(summary["tenant_id"])
        return summary

    async def fleet(self, seed: int, count: int) -> list[dict[str, Any]]:
        """``count`` provisioned small tenants with consecutive seeds."""
        return [await self.provision(seed + i) for i in range(count)]

    async def retire_all(self) -> None:
        """Deprovision the scenario's tenants (``DELETE``) so later scenarios' ticks do not poll them."""
        while self.provisioned:
            response = await self.api.delete(f"/api/tenants/{self.provisioned.pop()}")
            assert response.status_code == 204, response.text

    # ---- driving ------------------------------------------------------------------------------------------------

    def poll_stats(self) -> dict[str, int]:
        """devhost's counters of the queue function (invocations, successes, failures, poisoned)."""
        s = self.devhost.counters()["poll_tenant"]
        return {k: int(s[k]) for k in ("invocations", "successes", "failures", "poisoned")}

    async def tick(self, advance: float = POLL_INTERVAL_SECONDS) -> dict[str, int]:
        """Move the connector clock, fire ``dispatch_polls``, drain the queue; returns the poll_tenant deltas."""
        self.clock.offset += advance
        before = self.poll_stats()
        await self.devhost.run_timer("dispatch_polls")
        await self.devhost.drain_queues(timeout=120)
        after = self.poll_stats()
        return {k: after[k] - before[k] for k in after}

    async def heartbeats(self) -> None:
        """Fire the heartbeat timer once."""
        await self.devhost.run_timer("send_heartbeats")

    async def enqueue_raw(self, body: dict[str, Any], copies: int = 1) -> None:
        """Put a poll message on the trigger queue directly, base64-encoded like the Functions host."""
        from azure.storage.queue.aio import QueueClient

        encoded = base64.b64encode(json.dumps(body).encode()).decode()
        async with QueueClient.from_connection_string(self.env["AzureWebJobsStorage"],
                                                      self.env["POLL_QUEUE_NAME"]) as queue:
            for _ in range(copies):
                await queue.send_message(encoded)

    async def enqueue_text(self, text: str) -> None:
        """Put raw text on the trigger queue (no encoding at all: what a broken producer would send)."""
        from azure.storage.queue.aio import QueueClient

        async with QueueClient.from_connection_string(self.env["AzureWebJobsStorage"],
                                                      self.env["POLL_QUEUE_NAME"]) as queue:
            await queue.send_message(text)

    # ---- reading ------------------------------------------------------------------------------------------------

    async def status(self, tid: str) -> dict[str, Any]:
        """``GET /api/tenants/{id}`` → ``status``."""
        response = await self.api.get(f"/api/tenants/{tid}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["status"]
        return result

    async def devices(self, tid: str) -> list[dict[str, Any]]:
        """Every device row through the paged API."""
        return await all_devices(self.api.get, tid)

    async def events(self, tid: str) -> list[dict[str, Any]]:
        """The whole change feed through the paged API."""
        return await all_events(self.api.get, tid)

    def graph_counters(self, tid: str) -> dict[str, int]:
        """Top-level Graph requests and 429s the simulator saw for the tenant (``$batch`` = one request)."""
        routes = self.sim.counters(tid).get(tid, {}).get("routes", {})
        graph = {k: v for k, v in routes.items() if k.startswith("/v1.0")}
        return {
            "requests": sum(int(v["requests"]) for v in graph.values()),
            "throttled": sum(int(v["throttled"]) for v in graph.values()),
        }

    def graph_snapshot(self, fleet: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        """:meth:`graph_counters` for every tenant of a fleet."""
        return {s["tenant_id"]: self.graph_counters(s["tenant_id"]) for s in fleet}

    def graph_since(self, before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        """Graph requests/429s per tenant since ``before`` (a :meth:`graph_snapshot`)."""
        out = {}
        for tid, old in before.items():
            new = self.graph_counters(tid)
            out[tid] = {k: new[k] - old[k] for k in new}
        return out

    def intune(self, tid: str) -> dict[str, Any]:
        """Intune's view of the tenant (simulator admin)."""
        result: dict[str, Any] = self.sim.intune(tid)
        return result

    # ---- ground truth -------------------------------------------------------------------------------------------

    async def expected(self, tid: str, groups: list[str]) -> set[str]:
        """Devices that should be enrolled: simulator truth plus mobile devices that are direct members of a resolved
        enrollment group, owned or not (cross-checked with Graph's own ``transitiveMembers``, a different code path
        from the connector's delta walk)."""
        truth = self.sim.truth(tid, groups, ",".join(PLATFORMS))
        ids = {d["id"] for d in truth["devices"]}
        from shared_code.adapters.http_retry import UsageMeter

        graph = self.workers.current.graph(tid, UsageMeter())
        try:
            for gid in truth["resolved_groups"].values():
                async for page in graph.pages(f"/groups/{gid}/transitiveMembers", permission="Directory.Read.All"):
                    for m in page.get("value", ()):
                        if m.get("@odata.type") != "#microsoft.graph.device":
                            continue
                        dev = await graph.get_json(f"/devices/{m['id']}", permission="Directory.Read.All",
                                                   params={"$expand": "registeredOwners"})
                        if dev.get("operatingSystem") in PLATFORMS:
                            ids.add(m["id"])
        finally:
            await graph.aclose()
        return ids

    async def assert_converged(self, summary: dict[str, Any]) -> set[str]:
        """Stored state equals ground truth, and the event feed replays to exactly that state: sequences 1..n without
        gaps, unique ids, per device enrolled/deactivated alternate (updates only while enrolled)."""
        tid = summary["tenant_id"]
        expected = await self.expected(tid, summary["enrollment_groups"])
        rows = await self.devices(tid)
        enrolled = {d["id"] for d in rows if d["state"] == "enrolled"}
        assert enrolled == expected, (
            f"tenant {tid}: missing {sorted(expected - enrolled)[:5]}, extra {sorted(enrolled - expected)[:5]}"
        )
        assert_feed_replays_to(await self.events(tid), enrolled)
        return enrolled


def assert_feed_replays_to(events: list[dict[str, Any]], enrolled: set[str]) -> None:
    """No duplicate and no missing event: the feed, replayed, gives exactly the enrolled set."""
    for shard in {e["shard"] for e in events}:
        seqs = [e["sequence"] for e in events if e["shard"] == shard]
        assert seqs == list(range(1, len(seqs) + 1)), f"shard {shard}: sequence gap or repeat"
    assert len({e["id"] for e in events}) == len(events)
    state: dict[str, bool] = {}
    for e in events:
        was = state.get(e["deviceObjectId"], False)
        if e["type"] == "enrolled":
            assert not was, f"duplicate enroll event for {e['deviceObjectId']} (seq {e['sequence']})"
            state[e["deviceObjectId"]] = True
        elif e["type"] == "deactivated":
            assert was, f"deactivation without enrollment for {e['deviceObjectId']} (seq {e['sequence']})"
            state[e["deviceObjectId"]] = False
        else:
            assert was, f"update of a device that is not enrolled {e['deviceObjectId']} (seq {e['sequence']})"
    assert {d for d, on in state.items() if on} == enrolled


@pytest.fixture(scope="module")
async def stack(sim: Any, devhost: Any, console_token: Any, clock: MovableClock, workers: Workers,
                module_env: dict[str, str]) -> AsyncIterator[Stack]:
    """The running stack with a Console.Manage + Console.Read API client."""
    token = console_token(["Console.Manage", "Console.Read"])
    async with httpx.AsyncClient(base_url=devhost.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {token}"}) as api:
        yield Stack(sim, devhost, api, clock, workers, module_env)


@pytest.fixture(autouse=True)
async def _isolated(stack: Stack) -> AsyncIterator[None]:
    """Every scenario starts and ends without injected faults (the simulator is shared by the session), and its
    tenants are deprovisioned afterwards, pass or fail."""
    stack.sim.clear_faults()
    try:
        yield
    finally:
        stack.sim.clear_faults()
        await stack.retire_all()


def add_enrolled_device(sim: Any, summary: dict[str, Any], os_name: str = "iOS") -> str:
    """A new user in a resolved enrollment group with a new device of ``os_name``: one device enters scope."""
    tid = summary["tenant_id"]
    truth = sim.truth(tid, summary["enrollment_groups"], ",".join(PLATFORMS))
    gid = sorted(truth["resolved_groups"].values())[0]
    user = sim.mutate(tid, "add_user", groups=[gid])
    device = sim.mutate(tid, "add_device", operatingSystem=os_name, owner_id=user["id"])
    return str(device["id"])


async def restart_host(stack: Stack, while_down: Any = None) -> None:
    """Stop devhost (letting running invocations finish), run ``while_down``, start it again on the same port."""
    port = int(stack.devhost.base_url.rsplit(":", 1)[1])
    await stack.devhost.stop()
    try:
        if while_down is not None:
            await while_down()
    finally:
        stack.devhost.port = port
        await stack.devhost.start()
