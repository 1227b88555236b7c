"""A real PollEngine + EnrollmentService on the in-memory stores and a fake Graph (no HTTP, no Azurite).

Covers the poll itself (full → quiet → incremental), what an incremental poll reads from the store, the lease
(busy messages, renewal, loss), approvals racing a running poll, dispatch failures, message validation and the
bounds on dry runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from enrollment_fake_graph import FakeDirectory, FakeGraph, never

from shared_code.adapters.memory_tenant_store import MemoryTenantRepository
from shared_code.enrollment import service as service_module
from shared_code.enrollment.cursors import MemoryCursorStore
from shared_code.enrollment.engine import PollEngine
from shared_code.enrollment.leases import MemoryLeaseStore
from shared_code.enrollment.service import LEASE_SECONDS, EnrollmentService, PollMessage
from shared_code.enrollment.store import MemoryEnrollmentStore
from shared_code.errors import ConflictError, RetriableError, ValidationError
from shared_code.tenants import TenantConfig

T = "11111111-2222-4333-8444-555555555555"
T2 = "22222222-2222-4333-8444-555555555555"
T3 = "33333333-2222-4333-8444-555555555555"
REPO = Path(__file__).resolve().parents[3]


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def now(self) -> float:
        return self.t


class Harness:
    """Service, engine, in-memory stores and one fake directory per tenant."""

    def __init__(self, *, dry_run_seconds: float = 120.0) -> None:
        self.clock = Clock()
        self.tenants = MemoryTenantRepository()
        self.store = MemoryEnrollmentStore()
        self.cursors = MemoryCursorStore()
        self.leases = MemoryLeaseStore()
        self.dirs: dict[str, FakeDirectory] = {}
        self.graphs: list[FakeGraph] = []
        self.pause: Any = None
        self.sent: list[tuple[str, int]] = []
        self.fail_send_for: set[str] = set()
        self.engine = PollEngine(
            tenants=self.tenants, store=self.store, cursors=self.cursors, graph_factory=self._graph,
            clock=self.clock.now,
        )
        self.service = EnrollmentService(
            tenants=self.tenants, store=self.store, cursors=self.cursors, leases=self.leases, engine=self.engine,
            send=self._send, clock=self.clock.now, dry_run_seconds=dry_run_seconds,
        )

    def _graph(self, tenant_id: str, meter: Any) -> Any:
        graph = FakeGraph(self.dirs[tenant_id], pause=self.pause)
        self.graphs.append(graph)
        return graph

    async def _send(self, body: str, delay_seconds: int = 0, /) -> None:
        await asyncio.sleep(0)
        if json.loads(body)["tenant_id"] in self.fail_send_for:
            raise OSError("queue unavailable")
        self.sent.append((body, delay_seconds))

    @property
    def requests(self) -> list[str]:
        return self.graphs[-1].requests

    async def tenant(self, tid: str = T, *, users: int = 10, in_group: int = 8, **cfg: Any) -> FakeDirectory:
        """A tenant: users u0..u{n-1}, each owning one iOS device d{i}; u0..u{in_group-1} in group Sales."""
        d = FakeDirectory()
        d.add_group("g-sales", "Sales")
        for i in range(users):
            d.add_user(f"u{i}")
            d.add_device(f"d{i}", "iOS", f"u{i}")
            if i < in_group:
                d.add_member("g-sales", f"u{i}", "u")
        self.dirs[tid] = d
        cfg.setdefault("guard_max_percent", 100.0)
        await self.tenants.put_config(TenantConfig(tenant_id=tid, enrollment_groups=("Sales",), **cfg))
        return d

    async def enrolled(self, tid: str = T) -> set[str]:
        rows = await self.store.list_devices(tid, "", 10_000)
        return {r["id"] for r in rows if r["state"] == "enrolled"}

    async def events(self, tid: str = T) -> list[tuple[str, str, str]]:
        return [(e.type, e.device, e.reason) for e in (await self.store.events(tid, None, 10_000))[0]]


async def test_a_real_poll_enrolls_the_scope_then_a_quiet_poll_costs_two_requests_and_writes_nothing() -> None:
    h = Harness()
    await h.tenant()
    first = await h.service.run_poll(T)
    assert first["result"] == "ok" and first["mode"] == "full"
    assert await h.enrolled() == {f"d{i}" for i in range(8)}
    assert [e[0] for e in await h.events()] == ["enrolled"] * 8
    writes, reads = h.store.writes, h.store.rows_read
    h.clock.t += 600
    quiet = await h.service.run_poll(T)
    assert quiet["result"] == "ok" and quiet["mode"] == "noop"
    assert len(h.requests) == 2 and h.store.writes == writes and h.store.rows_read == reads


async def test_an_incremental_change_reads_only_the_rows_it_can_touch() -> None:
    h = Harness()
    d = await h.tenant(users=60, in_group=40)
    await h.service.run_poll(T)
    for i in range(10):  # history: ten deactivated rows
        d.remove_member("g-sales", f"u{i}")
    h.clock.t += 600
    await h.service.run_poll(T)
    assert len(await h.enrolled()) == 30
    reads = h.store.rows_read
    d.add_member("g-sales", "u50", "u")
    d.remove_member("g-sales", "u20")
    h.clock.t += 600
    result = await h.service.run_poll(T)
    assert result["mode"] == "incremental" and result["counts"] == {"enroll": 1, "update": 0, "deactivate": 1}
    # The two owners' rows (one exists), not the tenant's 50 rows.
    assert h.store.rows_read - reads <= 2
    assert (await h.events())[-2:] == [
        ("enrolled", "d50", "owner in group Sales"), ("deactivated", "d20", "owner left group Sales")]
    record = await h.tenants.get(T)
    assert record is not None and record.status["counts"]["enrolled"] == 30


async def test_disabled_owners_are_checked_without_reading_every_row_each_poll() -> None:
    h = Harness()
    d = await h.tenant(keep_disabled_users=False)
    await h.service.run_poll(T)
    reads, writes = h.store.rows_read, h.store.writes
    h.clock.t += 600
    quiet = await h.service.run_poll(T)
    assert quiet["mode"] == "noop" and len(h.requests) == 3  # + the disabled-users read
    assert (h.store.rows_read, h.store.writes) == (reads, writes)
    d.set_enabled("u3", False)
    h.clock.t += 600
    await h.service.run_poll(T)
    assert (await h.events())[-1] == ("deactivated", "d3", "owner disabled")
    d.set_enabled("u3", True)
    h.clock.t += 600
    await h.service.run_poll(T)
    assert (await h.events())[-1][:2] == ("enrolled", "d3")
    reads = h.store.rows_read
    h.clock.t += 600
    assert (await h.service.run_poll(T))["mode"] == "noop" and h.store.rows_read == reads


async def _staged(h: Harness) -> FakeDirectory:
    """A tenant with 8 enrolled devices and 6 deactivations staged by the guard (threshold 20 % → 1)."""
    d = await h.tenant(guard_max_percent=20.0)
    await h.service.run_poll(T)
    for i in range(6):
        d.remove_member("g-sales", f"u{i}")
    h.clock.t += 600
    result = await h.service.run_poll(T)
    assert result["staged"] == 6
    return d


async def test_an_approval_made_while_a_poll_runs_is_requeued_and_not_overwritten() -> None:
    h = Harness()
    d = await _staged(h)
    d.add_device("d-new", "iOS", "u7")  # something for the running poll to apply
    release, reached = asyncio.Event(), asyncio.Event()

    async def pause() -> None:
        reached.set()
        await release.wait()

    h.pause = pause
    h.clock.t += 600
    running = asyncio.create_task(h.service.run_poll(T))
    await reached.wait()
    h.pause = None
    h.clock.t += 1
    staged = (await h.tenants.get(T)).status["guard"]  # type: ignore[union-attr]
    await h.service.approve(T, "admin", staged["planId"])
    approval_body, delay = h.sent[-1]
    assert delay == 0
    busy = await h.service.handle_message(approval_body)
    assert busy["result"] == "busy" and busy["requeued"] is True
    requeued_body, delay = h.sent[-1]
    assert delay == service_module.REQUEUE_DELAY_SECONDS
    assert PollMessage.from_json(requeued_body).enqueued_at == PollMessage.from_json(approval_body).enqueued_at
    release.set()
    first = await running
    assert first["result"] == "ok" and first["staged"] == 6  # it read the tenant before the approval
    record = await h.tenants.get(T)
    assert record is not None and record.status["guard"]["approvedPlanId"] == staged["planId"]  # survived
    h.clock.t += 60
    applied = await h.service.handle_message(requeued_body)
    assert applied["result"] == "ok" and applied["counts"]["deactivate"] == 6
    assert await h.enrolled() == {"d6", "d7", "d-new"}


async def test_a_scheduled_message_finding_the_lease_held_is_acknowledged_not_requeued() -> None:
    h = Harness()
    await h.tenant()
    lease = await h.leases.acquire(T, "other", LEASE_SECONDS, h.clock.t)
    assert lease is not None
    result = await h.service.handle_message(PollMessage(T, "scheduled", enqueued_at=h.clock.t).to_json())
    assert result == {"tenantId": T, "result": "busy"} and h.sent == []
    manual = await h.service.handle_message(PollMessage(T, "manual", full=True, enqueued_at=h.clock.t).to_json())
    assert manual["requeued"] is True and PollMessage.from_json(h.sent[-1][0]).full is True


async def test_one_failed_enqueue_does_not_drop_the_rest_of_the_dispatch_tick() -> None:
    h = Harness()
    for tid in (T, T2, T3):
        await h.tenant(tid)
    h.fail_send_for = {T2}
    enqueued = await h.service.dispatch()
    assert enqueued == [T, T3]
    assert sorted(json.loads(b)["tenant_id"] for b, _ in h.sent) == [T, T3]


async def test_a_long_poll_renews_its_lease_between_pages() -> None:
    h = Harness()
    await h.tenant()

    async def slow() -> None:  # every Graph call takes "seven minutes" (more than a renewal interval)
        h.clock.t += 420

    h.pause = slow
    started = h.clock.t
    result = await h.service.run_poll(T)
    assert result["result"] == "ok" and len(h.requests) >= 5
    assert h.leases.renewals >= 2
    assert h.clock.t - started > LEASE_SECONDS  # the poll outlived one lease term and kept its lease


async def test_a_poll_that_lost_its_lease_stops_before_writing() -> None:
    h = Harness()
    await h.tenant()
    taken: list[Any] = []

    async def stall() -> None:  # the worker stalls past its lease; another worker takes the tenant
        h.clock.t += LEASE_SECONDS + 1
        if not taken:
            taken.append(await h.leases.acquire(T, "other-worker", LEASE_SECONDS, h.clock.t))

    h.pause = stall
    result = await h.service.run_poll(T)
    assert taken[0] is not None
    assert result["result"] == "conflict" and await h.events() == [] and h.store.writes == 0


class SlowShardsStore(MemoryEnrollmentStore):
    """The in-memory store, where every apply but the first waits a little (as a transaction on the wire does)."""

    calls = 0

    async def apply(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            await asyncio.sleep(0.05)
        return await super().apply(*args, **kwargs)


async def test_a_shard_that_fails_mid_apply_stops_the_other_shards_writes() -> None:
    h = Harness()
    h.store = h.engine.store = h.service.store = SlowShardsStore(shard_target=4)  # 40 devices: 16 shards
    await h.tenant(users=40, in_group=40)
    failed_at: list[int] = []

    def lose_lease(n: int) -> None:  # the first shard's first transaction finds the tenant taken over
        if not failed_at:
            failed_at.append(h.store.writes)
            raise ConflictError("poll lease lost")

    h.store.before_commit = lose_lease
    result = await h.service.run_poll(T)
    await asyncio.sleep(0.2)  # a sibling shard left running would write now
    assert result["result"] == "conflict" and len(failed_at) == 1
    layout = await h.store.layout(T)
    assert layout is not None and layout.shards == 16
    # Nothing after the failure: the layout row was the only write, no other shard committed a transaction.
    assert h.store.writes == failed_at[0] == 1 and await h.events() == []


def test_the_lease_outlasts_the_function_timeout() -> None:
    timeout = json.loads((REPO / "host.json").read_text())["functionTimeout"]
    hours, minutes, seconds = (int(p) for p in timeout.split(":"))
    assert hours * 3600 + minutes * 60 + seconds <= LEASE_SECONDS


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"\xff\xfe\x00", "body"),
        (f'{{"tenant_id": "{T}", "enqueued_at": "yesterday"}}', "enqueued_at"),
        (f'{{"tenant_id": "{T}", "enqueued_at": NaN}}', "enqueued_at"),
        (f'{{"tenant_id": "{T}", "enqueued_at": 1e999999}}', "enqueued_at"),
        (f'{{"tenant_id": "{T}", "enqueued_at": {10**400}}}', "enqueued_at"),
        (f'{{"tenant_id": "{T}", "full": "false"}}', "full"),
        (f'{{"tenant_id": "{T}", "reason": 5}}', "reason"),
        (f'{{"tenant_id": "{T}", "requeues": -1}}', "requeues"),
        ('{"tenant_id": 5}', "tenant_id"),
    ],
)
async def test_malformed_poll_messages_are_validation_errors(body: str | bytes, field: str) -> None:
    h = Harness()
    with pytest.raises(ValidationError) as info:
        await h.service.handle_message(body)
    assert info.value.field == field


def test_well_formed_messages_parse_from_bytes_too() -> None:
    msg = PollMessage(T, "deactivations_approved", enqueued_at=5.0, requeues=2)
    assert PollMessage.from_json(msg.to_json().encode()) == msg
    assert PollMessage.from_json(f'{{"tenant_id": "{T}", "full": false, "enqueued_at": null}}') == PollMessage(T)


async def test_a_full_dry_run_of_a_large_tenant_is_refused_before_reading() -> None:
    h = Harness()
    await h.tenant()
    await h.tenants.update_status(T, "poll", {"shape": {"users": 40_000, "devices": 70_000, "cappedUsers": 5}})
    with pytest.raises(ConflictError):
        await h.service.dry_run(T, full=True)
    assert h.requests == []


async def test_a_dry_run_is_cut_at_its_time_limit() -> None:
    h = Harness(dry_run_seconds=0.05)
    await h.tenant()
    h.pause = never()
    with pytest.raises(RetriableError):
        await h.service.dry_run(T, full=True)


async def test_a_dry_run_of_a_small_tenant_answers_the_plan_and_writes_nothing() -> None:
    h = Harness()
    await h.tenant()
    plan = await h.service.dry_run(T, full=True)
    assert plan["dryRun"] is True and plan["counts"]["enroll"] == 8
    assert h.store.writes == 0 and await h.events() == []


async def test_a_quiet_poll_with_k_pending_objects_costs_two_plus_k_over_20_requests_and_writes_nothing() -> None:
    h = Harness()
    d = await h.tenant()
    await h.service.run_poll(T)
    k = 45
    for i in range(k):  # members Graph cannot read yet: their ownedDevices answer 404 (not replicated)
        d.add_member("g-sales", f"late{i}", "u")
    h.clock.t += 300
    first = await h.service.run_poll(T)
    assert first["result"] == "ok" and first["mode"] == "incremental"
    record = await h.tenants.get(T)
    assert record is not None and record.status["pending"]["count"] == k
    before = (h.store.writes, h.cursors.writes, record.status)
    for advance in (300, 60):  # a retry point passed (2 + ⌈k/20⌉ requests); then none did (2 requests)
        h.clock.t += advance
        quiet = await h.service.run_poll(T)
        assert quiet["mode"] == "noop"
        assert len(h.requests) == (2 + -(-k // 20) if advance == 300 else 2), h.requests
        after = await h.tenants.get(T)
        assert after is not None and (h.store.writes, h.cursors.writes, after.status) == before
    for i in range(k):  # replicated: their devices enroll on the next retry
        d.add_user(f"late{i}")
        d.add_device(f"late-d{i}", "Android", f"late{i}")
    h.clock.t += 900
    done = await h.service.run_poll(T)
    assert done["counts"]["enroll"] == k and {f"late-d{i}" for i in range(k)} <= await h.enrolled()
    record = await h.tenants.get(T)
    assert record is not None and record.status["pending"]["count"] == 0


async def test_a_full_reconcile_reads_only_the_groups_in_scope_and_walks_a_group_nested_later() -> None:
    h = Harness()
    d = await h.tenant(users=20, in_group=4)
    d.add_group("g-other", "Other")  # outside scope: its members are never read
    for i in range(4, 10):
        d.add_member("g-other", f"u{i}", "u")
    d.add_group("g-field", "Field")  # nested into Sales below, after the full reconcile
    for i in range(10, 14):
        d.add_member("g-field", f"u{i}", "u")
    d.round_page_groups = 1  # the round is longer than one page: only its first page is read
    first = await h.service.run_poll(T)
    assert first["mode"] == "full" and await h.enrolled() == {f"d{i}" for i in range(4)}
    reads = h.requests
    # The round's first page, a cursor without data, the name, the one group in scope: never the whole round.
    assert reads.count("/groups/delta") == 2 and "/groups/g-sales/members" in reads
    assert not any(r.startswith("fake://groups/round") for r in reads)
    assert not any(r.startswith("/groups/g-other") or r.startswith("/groups/g-field") for r in reads)
    d.add_member("g-sales", "g-field", "g")  # arrives through members@delta: the nested group is walked now
    h.clock.t += 600
    nested = await h.service.run_poll(T)
    assert nested["mode"] == "incremental" and nested["counts"]["enroll"] == 4
    assert "/groups/g-field/members" in h.requests
    assert await h.enrolled() == {f"d{i}" for i in (*range(4), *range(10, 14))}
    h.clock.t += 600
    assert (await h.service.run_poll(T))["mode"] == "noop"  # walked once, then followed by delta


async def test_a_full_reconcile_of_a_tenant_whose_groups_round_is_one_page_reads_it_instead_of_walking() -> None:
    h = Harness()
    d = await h.tenant(users=20, in_group=4)
    d.add_group("g-other", "Other")
    for i in range(4, 10):
        d.add_member("g-other", f"u{i}", "u")
    first = await h.service.run_poll(T)
    assert first["mode"] == "full" and await h.enrolled() == {f"d{i}" for i in range(4)}
    # One page held every group with its members and the cursor: no "latest" cursor, no member walk.
    assert h.requests.count("/groups/delta") == 1
    assert not any(r.startswith("/groups/g-") for r in h.requests)
    d.add_member("g-other", "g-sales", "g")  # outside scope: changes nothing
    d.add_member("g-sales", "u10", "u")
    d.add_device("d10", "iOS", "u10")
    h.clock.t += 600
    later = await h.service.run_poll(T)
    assert later["mode"] == "incremental" and later["counts"]["enroll"] == 1
    assert await h.enrolled() == {f"d{i}" for i in (*range(4), 10)}


async def test_a_step_of_a_running_reconcile_that_meets_a_conflict_hands_over_to_a_continuation() -> None:
    h = Harness()
    await h.tenant()
    await h.tenants.update_status(T, "poll", {"reconcile": {"run": "r1", "phase": "apply", "steps": 2}})

    async def conflicting(*args: Any, **kwargs: Any) -> Any:
        raise ConflictError("events appended concurrently")

    h.service.engine.poll = conflicting  # type: ignore[method-assign]
    result = await h.service.handle_message(PollMessage(T, "continue", enqueued_at=h.clock.t).to_json())
    assert result["result"] == "conflict" and result["continuing"]
    assert [json.loads(body)["reason"] for body, _ in h.sent] == ["continue"]
    # Without a run in progress a conflict simply ends the poll (the next scheduled poll starts afresh).
    await h.tenants.update_status(T, "poll", {"reconcile": None})
    h.sent.clear()
    h.clock.t += 1
    again = await h.service.handle_message(PollMessage(T, "scheduled", enqueued_at=h.clock.t).to_json())
    assert again["result"] == "conflict" and not again["continuing"] and h.sent == []


async def test_a_step_whose_continuation_was_not_sent_is_redelivered_and_continues_the_run() -> None:
    # The step commits its share of the run, then sending its continuation fails (the queue under load): the host
    # redelivers the message that started the step. A poll started after that message was enqueued (this step), but
    # the run it belongs to is not finished: the redelivery must take the next step, not be acknowledged as served
    # (which left the run to the next scheduled poll, up to a poll interval later).
    h = Harness()
    await h.tenant()
    h.service.engine = PollEngine(
        tenants=h.tenants, store=h.store, cursors=h.cursors, graph_factory=h._graph, clock=h.clock.now,
        step_seconds=None, step_slices=1, apply_slice=2,
    )
    h.fail_send_for = {T}
    message = PollMessage(T, "continue", enqueued_at=h.clock.t).to_json()
    with pytest.raises(OSError):
        await h.service.handle_message(message)
    record = await h.tenants.get(T)
    assert record is not None and record.status["poll"]["reconcile"] is not None  # step 1 committed, run open
    h.fail_send_for.clear()
    h.clock.t += 30  # host.json visibilityTimeout: the same message, delivered again
    queue = [message]
    results: list[str] = []
    while queue and len(results) < 20:
        result = await h.service.handle_message(queue.pop(0))
        results.append(result["result"])
        queue += [body for body, _ in h.sent]
        h.sent.clear()
        h.clock.t += 1
    assert results[0] == "ok" and "served" not in results and len(results) >= 2, results
    record = await h.tenants.get(T)
    assert record is not None and record.status["poll"].get("reconcile") is None
    assert await h.enrolled() == {f"d{i}" for i in range(8)}
    # Served once it finished: a stray copy of a continuation is acknowledged without polling.
    h.clock.t += 1
    stray = await h.service.handle_message(PollMessage(T, "continue", enqueued_at=h.clock.t - 5).to_json())
    assert stray["result"] == "served" and h.sent == []
