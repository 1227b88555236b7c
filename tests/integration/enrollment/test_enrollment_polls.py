"""Enrollment polls against the simulator's Graph and Azurite: scope rules, mutations, counts, faults, guard.

After every scenario the stored state must equal the ground truth and the change feed must replay to it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from enrollment_sim_helpers import (
    all_events,
    assert_feed_consistent,
    enrolled_ids,
    expected_ids,
    graph_get_all,
    group_ids,
    provision,
    users_owning_mobile_devices,
)

from shared_code.enrollment.engine import PollEngine
from shared_code.enrollment.service import EnrollmentService, build_enrollment_service
from shared_code.enrollment.store import CHANGES_PER_TRANSACTION

SEEDS = iter(range(300, 10_000))


@pytest.fixture(scope="module")
def service(app_container: Any) -> EnrollmentService:
    """The enrollment service over this module's tables."""
    return app_container.service(build_enrollment_service)


async def new_tenant(sim: Any, service: EnrollmentService, scenario: str = "small", **cfg: Any) -> dict[str, Any]:
    summary = sim.create_tenant(scenario, seed=next(SEEDS))
    cfg.setdefault("guard_max_percent", 100.0)
    await provision(service, summary, **cfg)
    return summary


async def converged(sim: Any, app_container: Any, service: EnrollmentService, tid: str,
                    groups: list[str] | None = None) -> set[str]:
    record = await service.tenants.get(tid)
    assert record is not None
    names = list(groups or record.config.enrollment_groups)
    want = await expected_ids(sim, app_container, tid, names, keep_disabled=record.config.keep_disabled_users,
                              platforms=tuple(record.config.platforms))
    have = await enrolled_ids(service, tid)
    assert have == want, f"missing {len(want - have)}, extra {len(have - want)}"
    assert_feed_consistent(await all_events(service, tid), have)
    return have


async def test_full_sync_matches_truth_and_reports_unresolved_and_ambiguous_names(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = sim.create_tenant("small", seed=next(SEEDS))
    groups = [*summary["enrollment_groups"], "Field Sales", "No Such Group"]
    assert "O'Brien Field Team" in groups  # the apostrophe group resolves through $filter with quotes doubled
    await provision(service, summary, groups=groups)
    result = await service.run_poll(summary["tenant_id"])
    assert result["result"] == "ok" and result["mode"] == "full"
    have = await converged(sim, app_container, service, summary["tenant_id"])
    assert have and result["counts"]["enroll"] == len(have)
    record = await service.tenants.get(summary["tenant_id"])
    assert record is not None
    scope = record.status["scope"]
    assert [u["name"] for u in scope["unresolvedGroups"]] == ["No Such Group"]
    assert [u["name"] for u in scope["ambiguousGroups"]] == ["Field Sales"]
    assert len(scope["ambiguousGroups"][0]["matches"]) == 2
    assert set(scope["resolvedGroups"]) == set(summary["enrollment_groups"])
    truth = sim.truth(summary["tenant_id"], groups)
    assert scope["ownerlessDevices"] == len(truth["ownerless"])
    poll = record.status["poll"]
    assert poll["mode"] == "full" and poll["requests"] > 0 and poll["resourceUnits"] >= poll["requests"] // 2
    assert poll["counts"]["enrolled"] == len(have)


async def test_a_quiet_poll_sends_at_most_two_graph_requests_and_writes_nothing(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service, "M")
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    await service.run_poll(tid)  # finishes anything the first round left (none expected for M)
    before_writes = service.store.writes
    before = await service.tenants.get(tid)
    cursors_before = [await service.cursors.get(tid, s) for s in ("groups", "devices")]
    sim.call("POST", "/_sim/counters/reset")
    result = await service.run_poll(tid)
    assert result["mode"] == "noop"
    assert result["usage"]["requests"] <= 2
    assert sim.counters(tid)[tid]["totals"]["requests"] <= 2  # the simulator agrees with our meter
    assert service.store.writes == before_writes
    after = await service.tenants.get(tid)
    assert before is not None and after is not None and after.status == before.status
    assert [await service.cursors.get(tid, s) for s in ("groups", "devices")] == cursors_before


async def _pick(sim: Any, app_container: Any, tid: str) -> dict[str, Any]:
    """Mutation targets: users in scope (by group membership) owning mobile devices, and users outside scope."""
    record_groups = sim.call("GET", f"/_sim/tenants/{tid}")["enrollment_groups"]
    truth = sim.truth(tid, record_groups)
    # Owners whose devices are in scope because the *user* is in a group (not via a device that is a member).
    in_scope_owners = {d["ownerId"] for d in truth["devices"] if d.get("via") != "direct_member"}
    owners = await users_owning_mobile_devices(app_container, tid)
    inside = [u for u in owners if u in in_scope_owners]
    outside = [u for u in owners if u not in in_scope_owners]
    return {"inside": sorted(inside), "outside": sorted(outside), "owners": owners}


MUTATIONS = [
    "add_member", "remove_member", "nest_group", "unnest_group", "delete_user", "delete_device",
    "change_os_out", "change_os_in", "rename_group", "add_device", "delete_group",
]


@pytest.mark.parametrize("mutation", MUTATIONS)
async def test_each_directory_change_between_polls_converges_incrementally(
    sim: Any, app_container: Any, service: EnrollmentService, mutation: str
) -> None:
    summary = await new_tenant(sim, service)
    tid = summary["tenant_id"]
    root = summary["enrollment_groups"][0]
    await service.run_poll(tid)
    before = await converged(sim, app_container, service, tid)
    picks = await _pick(sim, app_container, tid)
    names = await group_ids(app_container, tid)
    root_id = names[root][0]
    expect_type: str | None = None
    if mutation == "add_member":
        sim.mutate(tid, "add_member", group_id=root_id, member_id=picks["outside"][0])
        expect_type = "enrolled"
    elif mutation == "remove_member":
        user = picks["inside"][0]
        for group in await graph_get_all(app_container, tid, f"/users/{user}/memberOf"):
            sim.mutate(tid, "remove_member", group_id=group["id"], member_id=user)
        expect_type = "deactivated"
    elif mutation == "nest_group":
        sim.mutate(tid, "nest_group", parent_id=root_id, child_id=names["All Staff"][0])
    elif mutation == "unnest_group":
        members = await graph_get_all(app_container, tid, f"/groups/{root_id}/members")
        child = next(m["id"] for m in members if m["@odata.type"].endswith("group"))
        sim.mutate(tid, "unnest_group", parent_id=root_id, child_id=child)
    elif mutation == "delete_user":
        sim.mutate(tid, "delete_user", user_id=picks["inside"][0])
        expect_type = "deactivated"
    elif mutation == "delete_device":
        sim.mutate(tid, "delete_device", device_id=sorted(before)[0])
        expect_type = "deactivated"
    elif mutation == "change_os_out":
        sim.mutate(tid, "change_os", device_id=sorted(before)[0], operatingSystem="Windows")
        expect_type = "deactivated"
    elif mutation == "change_os_in":
        windows = await graph_get_all(app_container, tid, "/devices", {"$filter": "operatingSystem eq 'Windows'"})
        owned_in_scope = set()
        for uid in picks["inside"]:
            owned_in_scope |= {d["id"] for d in await graph_get_all(app_container, tid, f"/users/{uid}/ownedDevices")}
        target = next(d["id"] for d in windows if d["id"] in owned_in_scope)
        sim.mutate(tid, "change_os", device_id=target, operatingSystem="Android", operatingSystemVersion="14")
        expect_type = "enrolled"
    elif mutation == "rename_group":
        sim.mutate(tid, "rename_group", group_id=root_id, displayName="Renamed Root")
        expect_type = "deactivated"
    elif mutation == "add_device":
        sim.mutate(tid, "add_device", operatingSystem="iOS", owner_id=picks["inside"][0])
        expect_type = "enrolled"
    elif mutation == "delete_group":
        members = await graph_get_all(app_container, tid, f"/groups/{root_id}/members")
        child = next(m["id"] for m in members if m["@odata.type"].endswith("group"))
        sim.mutate(tid, "delete_group", group_id=child, permanent=True)
    head = await service.store.feed_heads(tid)
    result = await service.run_poll(tid)
    assert result["result"] == "ok" and result["mode"] == "incremental", result
    if mutation == "rename_group":
        # A configured group that no longer resolves: its deactivations are always staged, whatever their number,
        # and apply once the named plan is approved (the approval's poll recomputes it from fresh reads).
        assert result["staged"] > 0 and await service.store.feed_heads(tid) == head
        record = await service.tenants.get(tid)
        assert record is not None and record.status["guard"]["why"] == "cause"
        await service.approve(tid, "admin", record.status["guard"]["planId"])
        assert (await service.run_poll(tid, force_full=True))["applied"]["deactivate"] == result["staged"]
    after = await converged(sim, app_container, service, tid)
    new_events = (await service.store.events(tid, head, 10_000))[0]
    if expect_type is not None:
        assert new_events and {e.type for e in new_events} == {expect_type}
        assert all(e.reason for e in new_events)
    assert len(new_events) == len(after ^ before) + sum(1 for e in new_events if e.type == "updated")
    if mutation == "rename_group":
        assert all(e.reason == f"group {root} no longer resolves" for e in new_events)
    if mutation == "delete_device":
        assert [e.reason for e in new_events] == ["device deleted"]
    if mutation == "change_os_out":
        assert [e.reason for e in new_events] == ["platform changed to Windows"]


async def test_a_changed_owner_is_caught_by_the_full_reconcile(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service)
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    before = await converged(sim, app_container, service, tid)
    picks = await _pick(sim, app_container, tid)
    # registeredOwners is a navigation property: no delta reports it (the simulator journals nothing).
    sim.mutate(tid, "set_owner", device_id=sorted(before)[0], owner_id=picks["outside"][0])
    result = await service.run_poll(tid, force_full=True)
    assert result["mode"] == "full"
    await converged(sim, app_container, service, tid)


async def test_disabled_users_stay_enrolled_by_default_and_leave_when_configured(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service, keep_disabled_users=False)
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    await converged(sim, app_container, service, tid)
    picks = await _pick(sim, app_container, tid)
    sim.mutate(tid, "disable_user", user_id=picks["inside"][0])
    result = await service.run_poll(tid)
    assert result["mode"] == "incremental" and result["counts"]["deactivate"] >= 1
    await converged(sim, app_container, service, tid)
    events = (await service.store.events(tid, None, 10_000))[0]
    assert events[-1].reason == "owner disabled"
    writes = service.store.writes
    assert (await service.run_poll(tid))["mode"] == "noop" and service.store.writes == writes
    sim.mutate(tid, "enable_user", user_id=picks["inside"][0])
    result = await service.run_poll(tid)
    assert result["counts"]["enroll"] >= 1
    await converged(sim, app_container, service, tid)


async def test_an_expired_delta_token_runs_a_full_reconcile(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service)
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    before = await converged(sim, app_container, service, tid)
    picks = await _pick(sim, app_container, tid)
    sim.mutate(tid, "add_member", group_name=summary["enrollment_groups"][0], member_id=picks["outside"][0])
    sim.fault("delta_expiry", match={"tenant": tid, "path_prefix": "/v1.0/groups/delta"}, count=1, status=410)
    result = await service.run_poll(tid)
    assert result["mode"] == "full" and any("expired" in n for n in result["notes"])
    await converged(sim, app_container, service, tid)
    # Eight days on (connector clock; the simulator's clock stays put for the rest of the session): the scheduled
    # full reconcile renews the old devices token, finds it dead (400 syncStateNotFound) and starts a new round.
    stale = await service.cursors.get(tid, "devices")
    week = 8 * 24 * 3600
    sim.fault("delta_expiry", match={"tenant": tid, "path_prefix": "/v1.0/devices/delta"}, count=1)
    later = PollEngine(tenants=service.tenants, store=service.store, cursors=service.cursors,
                       graph_factory=app_container.graph, clock=lambda: app_container.clock.now() + week)
    sim.mutate(tid, "delete_device", device_id=sorted(before)[1])
    outcome = await later.poll(tid)
    assert outcome.mode == "full" and outcome.notes == ["full reconcile: scheduled (every 24 h)"]
    await converged(sim, app_container, service, tid)
    fresh = await service.cursors.get(tid, "devices")
    assert fresh.committed and fresh.committed != stale.committed and fresh.generation == stale.generation + 1
    assert (await later.poll(tid)).mode == "noop"


async def test_a_429_storm_is_ridden_out_by_the_one_retry_layer(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service, "M")
    tid = summary["tenant_id"]
    sim.fault("throttle", match={"tenant": tid, "path_prefix": "/v1.0/users"}, count=3, retry_after=0.05)
    sim.fault("throttle", match={"tenant": tid, "path_prefix": "/v1.0/groups/delta"}, count=2, retry_after=0.05)
    result = await service.run_poll(tid)
    assert result["result"] == "ok" and result["usage"]["throttled"] == 5
    await converged(sim, app_container, service, tid)
    record = await service.tenants.get(tid)
    assert record is not None and record.status["poll"]["throttled"] == 5


@pytest.mark.parametrize("crash_at", [0, 1, 3])
async def test_a_crash_at_a_transaction_boundary_neither_loses_nor_duplicates_events(
    sim: Any, app_container: Any, service: EnrollmentService, crash_at: int
) -> None:
    summary = await new_tenant(sim, service, "M")
    tid = summary["tenant_id"]

    def crash(n: int) -> None:
        if n == crash_at:
            raise RuntimeError("worker died")

    service.store.before_commit = crash
    try:
        result = await service.run_poll(tid)
    finally:
        service.store.before_commit = None
    assert result["result"] == "failed"
    assert len(await all_events(service, tid)) == CHANGES_PER_TRANSACTION * crash_at
    await service.run_poll(tid)
    await converged(sim, app_container, service, tid)
    # The same after an incremental change big enough for several transactions.
    names = await group_ids(app_container, tid)
    sim.mutate(tid, "nest_group", parent_id=names[summary["enrollment_groups"][0]][0],
               child_id=names["All Staff"][0])
    service.store.before_commit = lambda n: crash(n + crash_at - 1) if n else None
    try:
        await service.run_poll(tid)
    finally:
        service.store.before_commit = None
    await service.run_poll(tid)
    await converged(sim, app_container, service, tid)


async def test_a_graph_failure_mid_round_is_recorded_and_the_next_poll_converges(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service, "M")
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    names = await group_ids(app_container, tid)
    sim.mutate(tid, "nest_group", parent_id=names[summary["enrollment_groups"][0]][0],
               child_id=names["Contractors"][0])
    # More 503s than the retry layer's budget on the batched owner lookups: this poll fails after reading deltas.
    sim.fault("status", match={"tenant": tid, "path_prefix": "/v1.0/$batch"}, count=20, status=503, retry_after=0.01)
    result = await service.run_poll(tid)
    sim.clear_faults()
    assert result["result"] == "failed" and result["reason"].startswith("graph_unavailable")
    record = await service.tenants.get(tid)
    assert record is not None and record.status["quarantine"]["failures"] == 1
    result = await service.run_poll(tid)
    assert result["result"] == "ok"
    await converged(sim, app_container, service, tid)
    record = await service.tenants.get(tid)
    assert record is not None and record.status["quarantine"]["state"] == "ok"


async def test_duplicate_and_concurrent_messages_do_one_poll(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service)
    tid = summary["tenant_id"]
    message = f'{{"tenant_id": "{tid}"}}'
    results = await asyncio.gather(*(service.handle_message(message) for _ in range(4)))
    assert sorted(r["result"] for r in results).count("ok") == 1
    assert {r["result"] for r in results} <= {"ok", "busy"}
    again = await service.handle_message(message)
    assert again["result"] == "ok" and again["mode"] == "noop"
    await converged(sim, app_container, service, tid)


async def test_the_guard_stages_an_emptied_group_and_releases_it_on_approval(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = sim.create_tenant("small", seed=next(SEEDS))
    tid = summary["tenant_id"]
    # Enroll through the root with the most devices only, so emptying it deactivates everything.
    root = max(summary["enrollment_groups"], key=lambda g: len(sim.truth(tid, [g])["devices"]))
    await provision(service, summary, groups=[root])  # default guard: 500 / 20 %
    await service.run_poll(tid)
    before = await converged(sim, app_container, service, tid)
    assert len(before) >= 5
    root_id = (await group_ids(app_container, tid))[root][0]
    for m in await graph_get_all(app_container, tid, f"/groups/{root_id}/members"):
        sim.mutate(tid, "remove_member", group_id=root_id, member_id=m["id"])
    result = await service.run_poll(tid)
    assert result["staged"] > 0 and result["applied"]["deactivate"] == 0
    assert await enrolled_ids(service, tid) == before  # nothing deactivated yet
    record = await service.tenants.get(tid)
    assert record is not None
    guard = record.status["guard"]
    assert guard["state"] == "deactivations_staged" and guard["staged"] == result["staged"]
    assert guard["sample"] and all(s["action"] == "deactivate" for s in guard["sample"])
    assert guard["planId"] == result["planId"] and guard["why"] == "count"
    # A quiet poll keeps waiting (re-checking the stage against Graph); approval of the named plan releases it.
    assert (await service.run_poll(tid))["mode"] == "noop"
    record = await service.tenants.get(tid)
    assert record is not None and record.status["guard"]["lastCheckedAt"]
    approval = await service.approve(tid, "admin@test", guard["planId"])
    assert approval["approved"] == result["staged"]
    result = await service.run_poll(tid)
    assert result["mode"] == "full" and result["applied"]["deactivate"] == approval["approved"]
    await converged(sim, app_container, service, tid)
    record = await service.tenants.get(tid)
    assert record is not None and record.status["guard"]["state"] == "clear"


async def test_a_dry_run_returns_the_plan_and_writes_nothing(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service)
    tid = summary["tenant_id"]
    writes = service.store.writes
    plan = await service.dry_run(tid)
    assert plan["dryRun"] and plan["mode"] == "full" and plan["counts"]["enroll"] > 0
    assert all(item["reason"] for item in plan["items"])
    assert service.store.writes == writes and sum(await service.store.feed_heads(tid)) == 0
    assert (await service.cursors.get(tid, "groups")).committed == ""
    await service.run_poll(tid)
    await converged(sim, app_container, service, tid)
    picks = await _pick(sim, app_container, tid)
    sim.mutate(tid, "delete_user", user_id=picks["inside"][0])
    head = sum(await service.store.feed_heads(tid))
    plan = await service.dry_run(tid)
    assert plan["mode"] == "incremental" and plan["counts"]["deactivate"] >= 1
    assert sum(await service.store.feed_heads(tid)) == head  # the dry run wrote no event
    result = await service.run_poll(tid)
    assert result["counts"] == plan["counts"]


async def test_a_tenant_that_keeps_failing_is_quarantined_and_others_keep_polling(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    healthy = await new_tenant(sim, service)
    broken = await new_tenant(sim, service)
    sim.call("DELETE", "/_sim/consent", params={"tenant_id": broken["tenant_id"],
                                                  "app_id": sim.info["connector"]["client_id"]})
    limit = app_container.settings.quarantine_after_failures
    for _ in range(limit):
        bad = await service.run_poll(broken["tenant_id"])
        good = await service.run_poll(healthy["tenant_id"])
        assert bad["result"] == "failed" and good["result"] == "ok"
    record = await service.tenants.get(broken["tenant_id"])
    assert record is not None
    q = record.status["quarantine"]
    assert q["state"] == "quarantined" and q["failures"] == limit and q["reason"].startswith("consent_required")
    await converged(sim, app_container, service, healthy["tenant_id"])
    # The dispatcher skips the quarantined tenant until its (reduced-rate) next attempt.
    enqueued: list[str] = []
    original = service._send

    async def capture(body: str) -> None:
        enqueued.append(body)

    service._send = capture
    try:
        due = await service.dispatch()
    finally:
        service._send = original
    assert broken["tenant_id"] not in due


async def test_a_config_change_or_the_schedule_forces_a_full_reconcile(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service)
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    assert (await service.run_poll(tid))["mode"] == "noop"
    await provision(service, summary, groups=[*summary["enrollment_groups"], "Device Pilot"], guard_max_percent=100.0)
    result = await service.run_poll(tid)
    assert result["mode"] == "full" and "full reconcile: configuration changed" in result["notes"]
    await converged(sim, app_container, service, tid)
    later = PollEngine(tenants=service.tenants, store=service.store, cursors=service.cursors,
                       graph_factory=app_container.graph, clock=lambda: app_container.clock.now() + 25 * 3600,
                       full_reconcile_hours=24)
    outcome = await later.poll(tid)
    assert outcome.mode == "full" and outcome.notes == ["full reconcile: scheduled (every 24 h)"]
    assert outcome.plan.items == ()  # nothing drifted


async def _long_devices_round(
    sim: Any, app_container: Any, service: EnrollmentService, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, PollEngine]:
    """An M tenant (700 devices: 4 devices/delta pages in the simulator) whose first devices round is never finished
    inside the full reconcile, and an engine that walks it one page per step."""
    from shared_code.enrollment import engine as engine_module

    monkeypatch.setattr(engine_module, "FINISH_NOW_PAGES", 0)
    summary = await new_tenant(sim, service, "M")
    engine = PollEngine(tenants=service.tenants, store=service.store, cursors=service.cursors,
                        graph_factory=app_container.graph, device_catchup_pages=1)
    return str(summary["tenant_id"]), engine


async def test_a_long_first_devices_round_is_spread_over_polls_without_missing_changes(
    sim: Any, app_container: Any, service: EnrollmentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid, slow = await _long_devices_round(sim, app_container, service, monkeypatch)
    full = await slow.poll(tid)
    assert full.mode == "full"
    cursor = await service.cursors.get(tid, "devices")
    assert cursor.inflight and not cursor.committed
    victim = sorted(await enrolled_ids(service, tid))[0]
    sim.mutate(tid, "delete_device", device_id=victim)  # while the round is still in flight
    links = []
    for _ in range(3):
        outcome = await slow.poll(tid)
        assert outcome.mode == "noop" and outcome.usage["requests"] == 2  # groups delta + one devices page
        links.append(await service.cursors.get(tid, "devices"))
        # While the round is in flight the service is asked for a continuation message; not once it committed.
        assert outcome.summary()["continuing"] == (not links[-1].committed)
    assert links[-1].committed and not links[-1].inflight
    assert len({c.inflight for c in links[:-1]}) == 2  # the in-flight link advanced page by page
    outcome = await slow.poll(tid)
    assert outcome.mode == "incremental" and outcome.plan.counts()["deactivate"] == 1
    assert outcome.plan.items[0].reason == "device deleted"
    await converged(sim, app_container, service, tid)


async def test_a_first_devices_round_is_driven_by_continuation_messages_not_by_the_timer(
    sim: Any, app_container: Any, service: EnrollmentService, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared_code.enrollment.service import PollMessage

    tid, engine = await _long_devices_round(sim, app_container, service, monkeypatch)
    queue: list[str] = []

    async def send(body: str, delay_seconds: int = 0, /) -> None:
        queue.append(body)

    chained = EnrollmentService(tenants=service.tenants, store=service.store, cursors=service.cursors,
                                leases=service.leases, engine=engine, send=send)
    first = await chained.handle_message(PollMessage(tid, "scheduled", enqueued_at=0.0).to_json())
    assert first["mode"] == "full" and first["continuing"]  # the full run is done; its devices round is not
    assert len(queue) == 1
    steps, body = 0, ""
    while queue and steps < 10:
        body = queue.pop(0)
        result = await chained.handle_message(body)
        steps += 1
        # Each step: the groups delta and one page of the round (the test's step size), no other write or read.
        assert result["result"] == "ok" and result["mode"] == "noop" and result["usage"]["requests"] == 2
    # The first page was read by the full reconcile; the other three, one per continuation, no timer needed.
    assert steps == 3 and not queue
    cursor = await service.cursors.get(tid, "devices")
    assert cursor.committed and not cursor.inflight
    # A redelivered copy of the last continuation finds no open work: acknowledged, no poll, nothing sent.
    sim.call("POST", "/_sim/counters/reset")
    again = await chained.handle_message(body)
    assert again["result"] == "served" and not queue
    routes = sim.counters(tid).get(tid, {}).get("routes", {})
    assert not any(label.startswith("/v1.0") for label in routes), routes
    # The committed round serves changes as usual.
    victim = sorted(await enrolled_ids(service, tid))[0]
    sim.mutate(tid, "delete_device", device_id=victim)
    outcome = await engine.poll(tid)
    assert outcome.mode == "incremental" and outcome.plan.counts()["deactivate"] == 1
    await converged(sim, app_container, service, tid)


class _CrashOnCommit:
    """Cursor store wrapper whose next commit dies (the worker crashed after writing rows and events)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.armed = True

    async def get(self, tenant_id: str, stream: str) -> Any:
        return await self.inner.get(tenant_id, stream)

    async def put(self, tenant_id: str, stream: str, cursor: Any) -> Any:
        if self.armed and stream == "groups":
            self.armed = False
            raise RuntimeError("worker died before committing the cursor")
        return await self.inner.put(tenant_id, stream, cursor)

    async def delete_tenant(self, tenant_id: str) -> None:
        await self.inner.delete_tenant(tenant_id)


async def test_a_crash_before_the_cursor_commit_replays_without_duplicate_events(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = await new_tenant(sim, service, "M")
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    names = await group_ids(app_container, tid)
    sim.mutate(tid, "nest_group", parent_id=names[summary["enrollment_groups"][0]][0],
               child_id=names["All Staff"][0])
    head = sum(await service.store.feed_heads(tid))
    crashing = _CrashOnCommit(service.engine.cursors)
    service.engine.cursors = crashing
    try:
        failed = await service.run_poll(tid)
        assert failed["result"] == "failed" and not crashing.armed
        written = sum(await service.store.feed_heads(tid))
        assert written > head  # rows, events and the graph landed; the cursor did not
        replay = await service.run_poll(tid)  # the same deltas again, against the updated rows
    finally:
        service.engine.cursors = crashing.inner
    assert replay["result"] == "ok" and replay["mode"] == "incremental"
    assert sum(await service.store.feed_heads(tid)) == written  # nothing re-emitted
    await converged(sim, app_container, service, tid)


async def test_the_platform_filter_is_configurable(sim: Any, app_container: Any, service: EnrollmentService) -> None:
    summary = await new_tenant(sim, service, platforms=("Android",))
    tid = summary["tenant_id"]
    await service.run_poll(tid)
    enrolled = await converged(sim, app_container, service, tid)
    rows = await service.store.load_devices(tid)
    assert enrolled and {rows[d].record.operating_system for d in enrolled} == {"Android"}


async def test_a_config_change_releases_a_staged_mass_deactivation(
    sim: Any, app_container: Any, service: EnrollmentService
) -> None:
    summary = sim.create_tenant("small", seed=next(SEEDS))
    tid = summary["tenant_id"]
    root = max(summary["enrollment_groups"], key=lambda g: len(sim.truth(tid, [g])["devices"]))
    await provision(service, summary, groups=[root])
    await service.run_poll(tid)
    before = await converged(sim, app_container, service, tid)
    sim.mutate(tid, "rename_group", group_name=root, displayName=root + " (2026)")
    staged = await service.run_poll(tid)
    assert staged["staged"] == len(before) and await enrolled_ids(service, tid) == before
    # The admin points the tenant at the new name instead of approving: nothing needs deactivating any more.
    await provision(service, summary, groups=[root + " (2026)"])
    result = await service.run_poll(tid)
    assert result["mode"] == "full" and result["counts"]["deactivate"] == 0 and result["staged"] == 0
    record = await service.tenants.get(tid)
    assert record is not None
    assert record.status["guard"]["state"] == "clear"
    assert record.status["guard"]["released"] == "the current plan no longer needs approval"
    await converged(sim, app_container, service, tid)
