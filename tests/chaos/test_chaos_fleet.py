"""Chaos scenarios on a small fleet, end to end: devhost (HTTP API, ``dispatch_polls``, the poll queue, heartbeats)
against the simulator (faults, ground truth, counters) and Azurite.

Each scenario provisions its own fleet of small tenants, lets them sync, changes every tenant's directory, injects a
fault aimed at one tenant ("the victim") and checks, by counts and states only:

* the victim's trouble is recorded in *its* status (``lastPoll`` / ``quarantine`` / ``heartbeat``);
* every other tenant polls with its normal request count, no 429 and converges in the same round;
* once the fault is gone the victim converges too, and every tenant's event feed replays to exactly the stored state,
  which equals the simulator's ground truth (no duplicate, no missing event).

Request counts come from the simulator's per-tenant counters (every Graph request it served: a ``$batch`` envelope
and each request inside it), so they are independent of what the connector reports about itself. A quiet
incremental poll is 2 requests (``groups/delta`` + ``devices/delta``); one with a new in-scope device is 4 (+ one
``$batch`` carrying one ``/users/{id}/ownedDevices`` for the new owner). The connector's own meter counts HTTP
requests it sent (the ``$batch`` once): 3 for the latter.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.conftest import (
    MAX_RETRIES,
    POLL_INTERVAL_SECONDS,
    QUARANTINE_AFTER,
    Stack,
    add_enrolled_device,
    restart_host,
)

pytestmark = pytest.mark.chaos

# An incremental poll that finds one new in-scope device: groups/delta, devices/delta, a $batch with one request
# inside (simulator's count), i.e. three HTTP requests sent (the connector's count).
INCREMENTAL_WITH_ONE_NEW_DEVICE = 4
INCREMENTAL_SENT = 3
QUIET_POLL = 2
ATTEMPTS = MAX_RETRIES + 1  # what the one retry layer sends for a request that keeps failing
QUARANTINE_RETRY = 6 * 3600  # shared_code/enrollment/quarantine.py QUARANTINE_RETRY_SECONDS


async def synced_fleet(stack: Stack, seed: int, count: int) -> list[dict[str, Any]]:
    """Provision ``count`` tenants and run the first (full) sync of all of them."""
    fleet = await stack.fleet(seed, count)
    ran = await stack.tick()
    assert ran["successes"] >= count and ran["failures"] == 0
    for summary in fleet:
        status = await stack.status(summary["tenant_id"])
        assert status["lastPoll"]["mode"] == "full" and status["lastPoll"]["lastError"] is None
    return fleet


def change_everyone(stack: Stack, fleet: list[dict[str, Any]]) -> dict[str, str]:
    """One new in-scope device per tenant; returns tenant → new device id."""
    return {s["tenant_id"]: add_enrolled_device(stack.sim, s) for s in fleet}


async def assert_bystanders_fine(stack: Stack, fleet: list[dict[str, Any]], victim: str,
                                 used: dict[str, dict[str, int]], new: dict[str, str]) -> None:
    """Every tenant but the victim did exactly one normal incremental poll this round and converged."""
    for summary in fleet:
        tid = summary["tenant_id"]
        if tid == victim:
            continue
        assert used[tid] == {"requests": INCREMENTAL_WITH_ONE_NEW_DEVICE, "throttled": 0}, (tid, used[tid])
        status = await stack.status(tid)
        assert status["lastPoll"]["mode"] == "incremental" and status["lastPoll"]["lastError"] is None
        assert (status["quarantine"] or {}).get("failures", 0) == 0
        enrolled = await stack.assert_converged(summary)
        assert new[tid] in enrolled


async def test_a_429_storm_on_one_tenant_leaves_the_others_alone(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1100, 4)
    victim = fleet[0]["tenant_id"]
    new = change_everyone(stack, fleet)

    # The storm: every Graph request of the victim is throttled, longer than the retry layer waits.
    stack.sim.fault("throttle", match={"tenant": victim, "path_prefix": "/v1.0/"}, unlimited=True, retry_after=0.01)
    before = stack.graph_snapshot(fleet)
    ran = await stack.tick()
    used = stack.graph_since(before)
    # Every message was handled (the victim's failure is recorded, not thrown at the host).
    assert ran == {"invocations": 4, "successes": 4, "failures": 0, "poisoned": 0}
    # The victim's first request was tried once plus MAX_RETRIES times, honouring Retry-After, then the poll stopped.
    assert used[victim] == {"requests": ATTEMPTS, "throttled": ATTEMPTS}
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] == "graph_unavailable (429)"
    assert status["quarantine"]["state"] == "backoff" and status["quarantine"]["failures"] == 1
    assert status["quarantine"]["reason"] == "graph_unavailable (429)"
    assert {e["deviceObjectId"] for e in await stack.events(victim)}.isdisjoint({new[victim]})
    await assert_bystanders_fine(stack, fleet, victim, used, new)

    # The storm dies down to two more 429s: the retry layer rides them out inside the poll, and the poll's status
    # records them (connector's own meter == simulator's counters).
    stack.sim.clear_faults()
    stack.sim.fault("throttle", match={"tenant": victim, "path_prefix": "/v1.0/"}, count=2, retry_after=0.01)
    before = stack.graph_snapshot(fleet)
    ran = await stack.tick()  # one poll interval later = the victim's first backoff step
    used = stack.graph_since(before)
    assert ran["invocations"] == 4 and ran["successes"] == 4
    assert used[victim] == {"requests": INCREMENTAL_WITH_ONE_NEW_DEVICE + 2, "throttled": 2}
    last = (await stack.status(victim))["lastPoll"]
    assert last["mode"] == "incremental" and last["lastError"] is None
    assert (last["requests"], last["throttled"]) == (INCREMENTAL_SENT + 2, 2)
    assert last["resourceUnits"] >= INCREMENTAL_SENT
    quarantine = (await stack.status(victim))["quarantine"]
    assert quarantine["state"] == "ok" and quarantine["failures"] == 0
    assert new[victim] in await stack.assert_converged(fleet[0])
    for tid, u in used.items():
        if tid != victim:
            assert u == {"requests": QUIET_POLL, "throttled": 0}


@pytest.mark.parametrize(
    ("kind", "spec", "reason"),
    [
        ("status", {"status": 503, "retry_after": 0.01}, "graph_unavailable (503)"),
        ("reset", {}, "graph_unavailable (transport)"),
        ("truncate", {}, "graph_unavailable (transport)"),
    ],
    ids=["503", "reset", "truncate"],
)
async def test_a_failure_mid_round_is_recorded_and_the_next_poll_converges(
    stack: Stack, kind: str, spec: dict[str, Any], reason: str
) -> None:
    seed = {"status": 1200, "reset": 1220, "truncate": 1230}[kind]
    fleet = await synced_fleet(stack, seed, 3)
    victim = fleet[0]["tenant_id"]
    new = change_everyone(stack, fleet)
    # The victim also loses an enrolled device: the replayed round must deactivate it exactly once.
    gone = sorted(d["id"] for d in await stack.devices(victim) if d["state"] == "enrolled")[0]
    stack.sim.mutate(victim, "delete_device", device_id=gone)
    head = len(await stack.events(victim))
    rows = await stack.devices(victim)

    # Mid-round: both delta streams of the victim are read, then its $batch (the new owner's devices) keeps failing
    # longer than the retry layer tries.
    stack.sim.fault(kind, match={"tenant": victim, "path_prefix": "/v1.0/$batch"}, count=ATTEMPTS, **spec)
    before = stack.graph_snapshot(fleet)
    ran = await stack.tick()
    used = stack.graph_since(before)
    assert ran == {"invocations": 3, "successes": 3, "failures": 0, "poisoned": 0}
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] == reason
    assert status["quarantine"]["failures"] == 1 and status["quarantine"]["reason"] == reason
    # Nothing of the failed round was applied: no event, the device rows unchanged.
    assert len(await stack.events(victim)) == head
    assert await stack.devices(victim) == rows
    await assert_bystanders_fine(stack, fleet, victim, used, new)

    # The fault is gone and the worker restarted meanwhile (nothing of the failed round survives in memory): the
    # next poll (after the first backoff step) replays the same deltas from the committed cursors and converges.
    stack.sim.clear_faults()
    await stack.workers.restart()
    ran = await stack.tick()
    assert ran["invocations"] == 3 and ran["successes"] == 3
    status = await stack.status(victim)
    assert status["lastPoll"]["mode"] == "incremental" and status["lastPoll"]["lastError"] is None
    assert status["quarantine"]["state"] == "ok" and status["quarantine"]["failures"] == 0
    enrolled = await stack.assert_converged(fleet[0])
    assert new[victim] in enrolled and gone not in enrolled
    tail = (await stack.events(victim))[head:]
    assert sorted((e["type"], e["deviceObjectId"]) for e in tail) == sorted(
        [("enrolled", new[victim]), ("deactivated", gone)]
    )


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("status", {"status": 502}),
        ("reset", {}),
        ("truncate", {}),
    ],
    ids=["502", "reset", "truncate"],
)
async def test_a_single_transient_fault_is_ridden_out_inside_the_poll(
    stack: Stack, kind: str, spec: dict[str, Any]
) -> None:
    seed = {"status": 1310, "reset": 1320, "truncate": 1330}[kind]
    fleet = await synced_fleet(stack, seed, 2)
    victim = fleet[0]["tenant_id"]
    new = change_everyone(stack, fleet)
    stack.sim.fault(kind, match={"tenant": victim, "path_prefix": "/v1.0/$batch"}, count=1, **spec)
    before = stack.graph_snapshot(fleet)
    await stack.tick()
    used = stack.graph_since(before)
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] is None and (status["quarantine"] or {}).get("failures", 0) == 0
    assert status["lastPoll"]["mode"] == "incremental"
    # One retry of the $batch; a reset or truncated response may or may not reach the simulator's counters.
    assert INCREMENTAL_WITH_ONE_NEW_DEVICE <= used[victim]["requests"] <= INCREMENTAL_WITH_ONE_NEW_DEVICE + 2
    assert new[victim] in await stack.assert_converged(fleet[0])


async def test_a_poll_that_fails_in_a_429_storm_records_its_throttle_counts(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1400, 1)
    victim = fleet[0]["tenant_id"]
    stack.sim.fault("throttle", match={"tenant": victim, "path_prefix": "/v1.0/"}, unlimited=True, retry_after=0.01)
    await stack.tick()
    last = (await stack.status(victim))["lastPoll"]
    assert last["lastError"] == "graph_unavailable (429)"
    assert (last["requests"], last["throttled"]) == (ATTEMPTS, ATTEMPTS)


async def test_a_token_outage_for_one_tenant_is_recorded_and_the_others_poll_and_beat(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1500, 4)
    victim = fleet[0]["tenant_id"]
    new = change_everyone(stack, fleet)
    beats = {s["tenant_id"]: stack.intune(s["tenant_id"])["heartbeat_count"] for s in fleet}

    # Entra cannot issue the victim's tokens; a fresh worker (empty token caches) has to ask for them.
    stack.sim.fault("token_outage", match={"tenant": victim}, unlimited=True, retry_after=0.01)
    await stack.workers.restart()
    before = stack.graph_snapshot(fleet)
    ran = await stack.tick()
    used = stack.graph_since(before)
    assert ran == {"invocations": 4, "successes": 4, "failures": 0, "poisoned": 0}
    assert used[victim] == {"requests": 0, "throttled": 0}  # no token, no Graph call
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] == "graph_unavailable (transport)"
    assert status["quarantine"]["state"] == "backoff" and status["quarantine"]["failures"] == 1
    await assert_bystanders_fine(stack, fleet, victim, used, new)

    await stack.heartbeats()
    heartbeat = (await stack.status(victim))["heartbeat"]
    assert heartbeat["state"] == "failing" and heartbeat["consecutiveFailures"] == 1
    assert stack.intune(victim)["heartbeat_count"] == beats[victim]
    for s in fleet[1:]:
        tid = s["tenant_id"]
        assert stack.intune(tid)["heartbeat_count"] == beats[tid] + 1
        assert (await stack.status(tid))["heartbeat"]["state"] == "ok"

    # Entra is back: the next poll and heartbeat of the victim succeed.
    stack.sim.clear_faults()
    await stack.tick()
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] is None and status["quarantine"]["state"] == "ok"
    assert new[victim] in await stack.assert_converged(fleet[0])
    await stack.heartbeats()
    assert (await stack.status(victim))["heartbeat"]["state"] == "ok"
    assert stack.intune(victim)["heartbeat_count"] == beats[victim] + 1


async def test_revoked_consent_marks_one_tenant_consent_required_and_the_others_carry_on(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1600, 4)
    victim = fleet[0]["tenant_id"]
    app_id = stack.sim.info["connector"]["client_id"]
    new = change_everyone(stack, fleet)
    await stack.heartbeats()
    beats = {s["tenant_id"]: stack.intune(s["tenant_id"])["heartbeat_count"] for s in fleet}
    assert all(beats.values())
    grants = stack.sim.call("GET", "/_sim/consent", params={"tenant_id": victim, "app_id": app_id})

    # The customer removes the connector's service principal; a fresh worker (no cached token) notices.
    stack.sim.call("DELETE", "/_sim/consent", params={"tenant_id": victim, "app_id": app_id})
    await stack.workers.restart()
    before = stack.graph_snapshot(fleet)
    ran = await stack.tick()
    used = stack.graph_since(before)
    assert ran == {"invocations": 4, "successes": 4, "failures": 0, "poisoned": 0}
    assert used[victim] == {"requests": 0, "throttled": 0}
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] == "consent_required (AADSTS7000229)"
    assert status["quarantine"]["reason"] == "consent_required (AADSTS7000229)"
    await assert_bystanders_fine(stack, fleet, victim, used, new)

    # Heartbeats: the victim is consent_required, everyone else keeps beating.
    stack.clock.offset += 16 * 60
    await stack.heartbeats()
    heartbeat = (await stack.status(victim))["heartbeat"]
    assert heartbeat["state"] == "consent_required" and heartbeat["consecutiveFailures"] == 1
    assert stack.intune(victim)["heartbeat_count"] == beats[victim]
    for s in fleet[1:]:
        tid = s["tenant_id"]
        assert stack.intune(tid)["heartbeat_count"] == beats[tid] + 1
        assert (await stack.status(tid))["heartbeat"]["state"] == "ok"

    # Consent granted again: the tenant recovers on its own.
    roles = grants.get("roles") if isinstance(grants, dict) else None
    assert roles, grants
    stack.sim.call("POST", "/_sim/consent", json={"tenant_id": victim, "app_id": app_id, "roles": roles})
    await stack.tick()
    status = await stack.status(victim)
    assert status["lastPoll"]["lastError"] is None and status["quarantine"]["state"] == "ok"
    assert new[victim] in await stack.assert_converged(fleet[0])
    await stack.heartbeats()
    assert (await stack.status(victim))["heartbeat"]["state"] == "ok"


async def test_a_tenant_failing_every_poll_is_quarantined_polled_rarely_and_recovers(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1700, 3)
    victim = fleet[0]["tenant_id"]
    others = len(fleet) - 1
    new = change_everyone(stack, fleet)
    stack.sim.fault("status", match={"tenant": victim, "path_prefix": "/v1.0/"}, unlimited=True, status=503,
                    retry_after=0.01)

    async def failures() -> tuple[str, int]:
        q = (await stack.status(victim))["quarantine"]
        return q["state"], q["failures"]

    # Poll interval 5 min; backoff 5 min after the 1st failure, 10 min after the 2nd, quarantine at the 3rd.
    dispatched = []
    states = []
    for _ in range(4):
        dispatched.append((await stack.tick())["invocations"] - others)
        states.append(await failures())
    assert dispatched == [1, 1, 0, 1]
    assert states == [("backoff", 1), ("backoff", 2), ("backoff", 2), ("quarantined", QUARANTINE_AFTER)]
    status = await stack.status(victim)
    assert status["quarantine"]["reason"] == "graph_unavailable (503)"
    assert status["quarantine"]["quarantinedAt"] is not None

    # Quarantined: skipped on every ordinary tick while the others keep polling ...
    for _ in range(2):
        ran = await stack.tick()
        assert ran["invocations"] == others and ran["successes"] == others
    assert await failures() == ("quarantined", QUARANTINE_AFTER)
    # ... and retried at the reduced rate (once per quarantine period, counted from the quarantining failure).
    ran = await stack.tick(advance=QUARANTINE_RETRY - 3 * POLL_INTERVAL_SECONDS)
    assert ran["invocations"] == others
    ran = await stack.tick()
    assert ran["invocations"] == others + 1
    assert await failures() == ("quarantined", QUARANTINE_AFTER + 1)

    # The fault clears: nothing happens until the next quarantine retry, which succeeds and ends the quarantine.
    stack.sim.clear_faults()
    assert (await stack.tick())["invocations"] == others
    ran = await stack.tick(advance=QUARANTINE_RETRY - POLL_INTERVAL_SECONDS)
    assert ran["invocations"] == others + 1
    status = await stack.status(victim)
    assert (status["quarantine"]["state"], status["quarantine"]["failures"]) == ("ok", 0)
    assert status["lastPoll"]["lastError"] is None
    assert new[victim] in await stack.assert_converged(fleet[0])
    # Back to the ordinary schedule.
    assert (await stack.tick())["invocations"] == others + 1
    for summary in fleet:
        await stack.assert_converged(summary)


def poll_body(tid: str, enqueued_at: float) -> dict[str, Any]:
    """A scheduled poll message exactly as the dispatcher writes it."""
    return {"tenant_id": tid, "reason": "scheduled", "full": False, "enqueued_at": enqueued_at}


async def test_duplicate_messages_delivered_together_do_one_poll(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1800, 2)
    victim = fleet[0]["tenant_id"]
    new = add_enrolled_device(stack.sim, fleet[0])
    head = len(await stack.events(victim))
    body = poll_body(victim, stack.clock.now())

    # While the host is down the same message lands three times; the restarted host receives them in one batch
    # and runs them concurrently: one takes the tenant's lease and polls, the others find it taken.
    before = stack.graph_snapshot(fleet)
    stats = stack.poll_stats()
    await restart_host(stack, lambda: stack.enqueue_raw(body, copies=3))
    await stack.devhost.drain_queues(timeout=120)
    used = stack.graph_since(before)
    after = stack.poll_stats()
    assert {k: after[k] - stats[k] for k in after} == {"invocations": 3, "successes": 3, "failures": 0,
                                                         "poisoned": 0}
    assert used[victim] == {"requests": INCREMENTAL_WITH_ONE_NEW_DEVICE, "throttled": 0}
    tail = (await stack.events(victim))[head:]
    assert [(e["type"], e["deviceObjectId"]) for e in tail] == [("enrolled", new)]
    await stack.assert_converged(fleet[0])
    assert (await stack.devhost.queue_counts()).get(f"{stack.env['POLL_QUEUE_NAME']}-poison", 0) == 0


async def test_a_duplicate_delivered_after_its_poll_finished_does_not_poll_again(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 1900, 1)
    victim = fleet[0]["tenant_id"]
    body = poll_body(victim, stack.clock.now())
    await stack.enqueue_raw(body)
    await stack.devhost.drain_queues(timeout=120)
    # At-least-once delivery: the very same message comes again after its poll completed.
    before = stack.graph_snapshot(fleet)
    await stack.enqueue_raw(body)
    await stack.devhost.drain_queues(timeout=120)
    assert stack.graph_since(before)[victim] == {"requests": 0, "throttled": 0}


@pytest.mark.parametrize(("stream", "status"), [("devices", None), ("groups", 410)], ids=["devices-400", "groups-410"])
async def test_an_expired_delta_token_mid_incremental_runs_a_full_reconcile(
    stack: Stack, stream: str, status: int | None
) -> None:
    fleet = await synced_fleet(stack, 2000 if stream == "devices" else 2010, 2)
    victim = fleet[0]["tenant_id"]
    new = change_everyone(stack, fleet)
    gone = sorted(d["id"] for d in await stack.devices(victim) if d["state"] == "enrolled")[0]
    stack.sim.mutate(victim, "delete_device", device_id=gone)
    head = len(await stack.events(victim))
    # devices/delta is read after groups/delta succeeded: the token dies in the middle of the incremental poll.
    extra = {"status": status} if status else {}
    stack.sim.fault("delta_expiry", match={"tenant": victim, "path_prefix": f"/v1.0/{stream}/delta"}, count=1,
                    **extra)
    before = stack.graph_snapshot(fleet)
    ran = await stack.tick()
    used = stack.graph_since(before)
    assert ran == {"invocations": 2, "successes": 2, "failures": 0, "poisoned": 0}
    last = (await stack.status(victim))["lastPoll"]
    assert last["mode"] == "full" and last["lastError"] is None
    assert ((await stack.status(victim))["quarantine"] or {}).get("failures", 0) == 0
    enrolled = await stack.assert_converged(fleet[0])
    assert new[victim] in enrolled and gone not in enrolled
    tail = (await stack.events(victim))[head:]
    assert sorted((e["type"], e["deviceObjectId"]) for e in tail) == sorted(
        [("enrolled", new[victim]), ("deactivated", gone)])
    await assert_bystanders_fine(stack, fleet, victim, used, new)
    # The new tokens work: the next round is a quiet incremental one again.
    before = stack.graph_snapshot(fleet)
    await stack.tick()
    assert stack.graph_since(before)[victim] == {"requests": QUIET_POLL, "throttled": 0}


async def test_undecodable_and_bogus_messages_never_hurt_the_fleet(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 2100, 2)
    new = change_everyone(stack, fleet)
    poison = f"{stack.env['POLL_QUEUE_NAME']}-poison"
    poisoned_before = (await stack.devhost.queue_counts()).get(poison, 0)
    stats = stack.poll_stats()  # the poller may take the messages below before the tick starts
    await stack.enqueue_text("this is not base64 !!")  # the host poisons it without invoking the function
    await stack.enqueue_raw({"no": "tenant"})  # decodes, but no tenant: dropped (logged) by the function
    await stack.enqueue_raw(poll_body("00000000-0000-4000-8000-000000000000", stack.clock.now()))  # unknown tenant
    before = stack.graph_snapshot(fleet)
    await stack.tick()
    used = stack.graph_since(before)
    ran = {k: v - stats[k] for k, v in stack.poll_stats().items()}
    # Two polls and the two decodable bogus messages ran and succeeded; the undecodable one never reached the function.
    assert ran == {"invocations": 4, "successes": 4, "failures": 0, "poisoned": 1}
    assert (await stack.devhost.queue_counts()).get(poison, 0) == poisoned_before + 1
    await assert_bystanders_fine(stack, fleet, "", used, new)


# Keep this scenario last in the module: it drops the simulator's old signing keys (session-wide; later modules mint
# fresh tokens, and this module's worker is restarted right after the round under test).
async def test_tokens_graph_rejects_are_renewed_and_the_fleet_converges(stack: Stack) -> None:
    fleet = await synced_fleet(stack, 2200, 2)
    new = change_everyone(stack, fleet)
    # Every token issued so far stops validating (as expired or revoked tokens do); Entra issues new ones at once.
    stack.sim.call("POST", "/_sim/keys/rotate", json={"drop_old": True})
    try:
        ran = await stack.tick()  # the worker still holds the tokens it cached before
    finally:
        # A fresh worker: fresh Graph/Intune tokens, and a JWKS cache that knows the new console signing key (the
        # old worker re-fetches JWKS for an unknown kid at most every 5 minutes, by design).
        await stack.workers.restart()
        stack.renew_console_token()
    assert ran["failures"] == 0
    problems = {s["tenant_id"]: (await stack.status(s["tenant_id"]))["lastPoll"]["lastError"] for s in fleet}
    assert problems == {s["tenant_id"]: None for s in fleet}
    for summary in fleet:
        assert new[summary["tenant_id"]] in await stack.assert_converged(summary)
