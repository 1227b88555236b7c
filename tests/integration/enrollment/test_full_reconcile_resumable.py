"""A full reconcile interrupted at random steps converges, with no duplicate and no missing event (issue 9).

The real service, engine, Table stores (Azurite) and simulator; a tiny step budget spreads a first full reconcile over
many polls (Graph pages, write slices and shards), and a seeded driver plays the poll queue with faults between and
inside steps: a worker that dies mid-read or between two transactions, a function timeout (cancellation), a message
redelivered after it was served, a duplicate message, a lost continuation (the timer's next scheduled message
continues the run). Counts only, no timing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import pytest
from enrollment_sim_helpers import all_events, assert_feed_consistent, enrolled_ids, expected_ids, provision

from shared_code.enrollment.engine import PollEngine
from shared_code.enrollment.full_reconcile import CHECKPOINT_VERSION
from shared_code.enrollment.reader import KeepAlive
from shared_code.enrollment.service import EnrollmentService, PollMessage, build_enrollment_service
from shared_code.enrollment.store import TableEnrollmentStore
from shared_code.errors import ConflictError

SEEDS = iter(range(9_100, 9_200))


async def _provisioned_m(sim: Any, app_container: Any) -> tuple[EnrollmentService, dict[str, Any]]:
    """The enrollment service over this module's tables, and a new M tenant (700 devices) provisioned on it."""
    base: EnrollmentService = app_container.service(build_enrollment_service)
    summary = sim.create_tenant("M", seed=next(SEEDS))
    await provision(base, summary, guard_max_percent=100.0)
    return base, summary


class WorkerDied(BaseException):
    """The process running the poll is gone (not an error the service could record)."""


class Faults:
    """Arms one fault for the next delivery: the k-th keep-alive (after a Graph page, before writes) or the n-th
    transaction dies, or the k-th keep-alive is cancelled as by the host's function timeout."""

    def __init__(self) -> None:
        self.kind = ""
        self.at = 0
        self.calls = 0
        self.fired: Counter[str] = Counter()

    def arm(self, kind: str, at: int) -> None:
        self.kind, self.at, self.calls = kind, at, 0

    def tick(self, where: str) -> None:
        if not self.kind or (where == "commit") != (self.kind == "crash_commit"):
            return
        self.calls += 1
        if self.calls < self.at:
            return
        kind, self.kind = self.kind, ""
        self.fired[kind] += 1
        if kind == "timeout":
            raise asyncio.CancelledError("functionTimeout")
        raise WorkerDied(kind)


class FaultyEngine(PollEngine):
    """The real engine, with the fault hook in the keep-alive the service hands it."""

    faults: Faults

    async def poll(self, tenant_id: str, *, keepalive: KeepAlive | None = None, **kwargs: Any) -> Any:
        async def ticking() -> None:
            self.faults.tick("keepalive")
            if keepalive is not None:
                await keepalive()

        return await super().poll(tenant_id, keepalive=ticking, **kwargs)


@pytest.mark.parametrize("strategy_seed", [0, 1, 2])
async def test_an_interrupted_full_reconcile_converges_without_duplicate_or_missing_events(
    sim: Any, app_container: Any, strategy_seed: int
) -> None:
    rng = random.Random(strategy_seed)
    base, summary = await _provisioned_m(sim, app_container)
    tid = summary["tenant_id"]
    # 100 devices per shard: the M tenant's 700 devices spread over 8 shards.
    store = TableEnrollmentStore(app_container.storage, shard_target=100)
    faults = Faults()
    store.before_commit = lambda n: faults.tick("commit")
    engine = FaultyEngine(
        tenants=base.tenants, store=store, cursors=base.cursors, graph_factory=app_container.graph,
        step_seconds=None, step_pages=1 + strategy_seed, step_slices=2, apply_slice=7,
    )
    engine.faults = faults
    queue: list[str] = []

    async def send(body: str, delay_seconds: int = 0, /) -> None:
        queue.append(body)

    service = EnrollmentService(tenants=base.tenants, store=store, cursors=base.cursors, leases=base.leases,
                                engine=engine, send=send)
    queue.append(PollMessage(tid, "scheduled", enqueued_at=0.0).to_json())
    outcomes: Counter[str] = Counter()
    deliveries = 0
    while deliveries < 400:
        if not queue:
            record = await base.tenants.get(tid)
            assert record is not None
            if not record.status.get("poll", {}).get("reconcile") and await store.checkpoint(tid) is None \
                    and record.status.get("poll", {}).get("lastFullAt"):
                break
            # The continuation was lost (or a step failed): the timer's next scheduled message continues the run.
            queue.append(PollMessage(tid, "scheduled", enqueued_at=0.0).to_json())
            outcomes["timer"] += 1
        body = queue.pop(0)
        deliveries += 1
        fault = rng.choice(["none", "none", "crash_read", "crash_commit", "timeout", "redeliver", "duplicate",
                            "lose_continuation"])
        if fault in ("crash_read", "timeout"):
            faults.arm(fault, rng.randint(1, 4))
        elif fault == "crash_commit":
            faults.arm(fault, rng.randint(1, 3))
        else:
            faults.arm("", 0)
        sent_before = len(queue)
        try:
            result = await service.handle_message(body)
        except (WorkerDied, asyncio.CancelledError):
            outcomes["died"] += 1
            queue.insert(0, body)  # the queue makes the message visible again: redelivered
            continue
        outcomes[result["result"]] += 1
        outcomes["continued"] += bool(result.get("continuing"))
        if fault == "redeliver":
            queue.insert(0, body)  # served, but its delete was lost: delivered again
        elif fault == "duplicate":
            queue.append(body)
        elif fault == "lose_continuation" and len(queue) > sent_before:
            queue.pop()  # the continuation message never arrived
    else:
        pytest.fail(f"no convergence after {deliveries} deliveries: {outcomes}")
    faults.arm("", 0)
    record = await base.tenants.get(tid)
    assert record is not None
    status = record.status.get("poll", {})
    assert status["mode"] == "full" and status.get("reconcile") is None
    # The run was really spread over many polls and interrupted on the way.
    assert outcomes["continued"] >= 3 and outcomes["died"] >= 1, outcomes
    print(f"seed {strategy_seed}: {dict(outcomes)}; faults {dict(faults.fired)}")
    assert sum(faults.fired.values()) >= 1
    layout = await store.layout(tid)
    assert layout is not None and layout.shards == 8
    want = await expected_ids(sim, app_container, tid, list(record.config.enrollment_groups))
    have = await enrolled_ids(service, tid)
    assert have == want, f"missing {len(want - have)}, extra {len(have - want)}"
    events = await all_events(service, tid)
    assert_feed_consistent(events, have)
    # A first reconcile enrolls each device exactly once: one event per enrolled device, no other event.
    assert Counter(e.type for e in events) == Counter({"enrolled": len(have)})
    # The run's checkpoint is gone; a poll now is an ordinary quiet incremental one.
    assert await store.checkpoint(tid) is None
    writes = store.writes
    quiet = await service.run_poll(tid)
    assert quiet["result"] == "ok" and quiet["mode"] == "noop" and store.writes == writes


async def test_a_full_reconcile_that_finds_nothing_changed_writes_only_its_cursor_and_status(
    sim: Any, app_container: Any
) -> None:
    base, summary = await _provisioned_m(sim, app_container)
    tid = summary["tenant_id"]
    store = TableEnrollmentStore(app_container.storage)
    engine = PollEngine(tenants=base.tenants, store=store, cursors=base.cursors, graph_factory=app_container.graph)
    service = EnrollmentService(tenants=base.tenants, store=store, cursors=base.cursors, leases=base.leases,
                                engine=engine, send=_no_send)
    first = await service.run_poll(tid)
    assert first["result"] == "ok" and first["mode"] == "full" and not first["continuing"]
    writes = store.writes
    status_writes: Counter[str] = Counter()
    update_status = base.tenants.update_status

    async def counting(tenant_id: str, section: str, patch: dict[str, Any]) -> None:
        status_writes[section] += 1
        await update_status(tenant_id, section, patch)

    cursor = await base.cursors.get(tid, "groups")
    base.tenants.update_status = counting  # type: ignore[method-assign]
    try:
        again = await service.run_poll(tid, force_full=True)
    finally:
        base.tenants.update_status = update_status  # type: ignore[method-assign]
    assert again["result"] == "ok" and again["mode"] == "full" and again["counts"] == {
        "enroll": 0, "update": 0, "deactivate": 0}
    assert store.writes == writes  # no device row, event, index, layout, graph or checkpoint write
    assert (await base.cursors.get(tid, "groups")).etag != cursor.etag  # the groups cursor, committed again
    assert set(status_writes) <= {"poll", "counts", "scope"}, status_writes


async def test_a_checkpoint_of_the_previous_format_is_abandoned_and_a_fresh_run_converges(
    sim: Any, app_container: Any
) -> None:
    base, summary = await _provisioned_m(sim, app_container)
    tid = summary["tenant_id"]
    store = TableEnrollmentStore(app_container.storage, shard_target=100)
    engine = PollEngine(tenants=base.tenants, store=store, cursors=base.cursors, graph_factory=app_container.graph,
                        step_seconds=None, step_pages=2, step_slices=2, apply_slice=7)
    sent: list[str] = []

    async def send(body: str, delay_seconds: int = 0, /) -> None:
        sent.append(body)

    service = EnrollmentService(tenants=base.tenants, store=store, cursors=base.cursors, leases=base.leases,
                                engine=engine, send=send)
    # Poll until the run is applying and has written some devices.
    for _ in range(50):
        assert (await service.run_poll(tid))["continuing"]
        head = await store.checkpoint(tid)
        if head is not None and head["phase"] == "apply" and head["applied"]["enroll"]:
            break
    else:
        pytest.fail("the run never reached its apply phase")
    applied = int(head["applied"]["enroll"])
    assert 0 < applied < len(await expected_ids(sim, app_container, tid, summary["enrollment_groups"]))
    # What the previous release left: a version-1 head whose plan chunk is one JSON document.
    old = {**head, "v": 1}
    await store.put_checkpoint(tid, old, {99_999: json.dumps({"d": {}, "c": {}, "s": [], "x": [], "n": None}).encode()})
    polls = 0
    while True:
        polls += 1
        assert polls < 100
        if not (await service.run_poll(tid))["continuing"]:
            break
        run = await store.checkpoint(tid)
        assert run is not None and run["v"] == CHECKPOINT_VERSION and run["run"] != old["run"]
    assert await store.checkpoint(tid) is None
    with pytest.raises(ConflictError):  # the abandoned run's chunk rows were deleted with it
        await store.checkpoint_chunks(tid, old)
    want = await expected_ids(sim, app_container, tid, summary["enrollment_groups"])
    have = await enrolled_ids(service, tid)
    assert have == want
    events = await all_events(service, tid)
    assert_feed_consistent(events, have)
    # The fresh run re-read Graph and replanned: the devices the abandoned run enrolled are not enrolled twice.
    assert Counter(e.type for e in events) == Counter({"enrolled": len(have)})


async def _no_send(body: str, delay_seconds: int = 0, /) -> None:
    raise AssertionError("a full reconcile of an M tenant finishes in one poll: no continuation")
