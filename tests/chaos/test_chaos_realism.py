"""Issue 10, end to end through devhost (HTTP API, ``dispatch_polls``, the poll queue) against the simulator and
Azurite: situations real tenants produce every day that the connector must get right.

* §1 objects Graph cannot read yet (replication lag) are remembered, retried with backoff, enrolled when Graph
  answers, given up after ``PENDING_GIVE_UP_HOURS`` (1 h in this module) and reported; quiet polls stay cheap and
  write nothing;
* §2 a glitched read never becomes a destructive plan (glitched rounds, the guard's causes, approvals by plan id,
  and a seeded chaos interleaving);
* §3 devices that are members of an enrollment group themselves are in scope with or without an owner;
* §5 status tells the truth after recovery (and quiet polls still write nothing).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.conftest import Stack

pytestmark = pytest.mark.chaos
GIVE_UP_HOURS = 1


@pytest.fixture(scope="module")
def module_env(module_env: dict[str, str]) -> dict[str, str]:
    """The chaos module environment, with pending objects given up after an hour (so a test can see it)."""
    return module_env | {"PENDING_GIVE_UP_HOURS": str(GIVE_UP_HOURS)}


async def stored_rows(stack: Stack, tid: str) -> dict[tuple[str, str, str], str]:
    """(table, partition, row) → ETag of every row the connector keeps for the tenant, but its poll lease."""
    out: dict[tuple[str, str, str], str] = {}
    for name in ("tenants", "devices", "memberships", "cursors"):
        table = await stack.workers.current.storage.table(name)
        query = "PartitionKey ge @lo and PartitionKey lt @hi"  # the tenant's partition(s), shards included
        async for entity in table.query_entities(query, parameters={"lo": tid, "hi": tid + "~"}):
            out[(name, str(entity["PartitionKey"]), str(entity["RowKey"]))] = str(entity.metadata.get("etag"))
    return out


def enrollment_group(stack: Stack, summary: dict[str, Any]) -> str:
    """Id of the first resolved enrollment group of a simulated tenant."""
    truth = stack.sim.truth(summary["tenant_id"], summary["enrollment_groups"])
    return str(sorted(truth["resolved_groups"].values())[0])


async def test_member_devices_are_in_scope_with_or_without_an_owner(stack: Stack) -> None:
    summary = await stack.provision(7300)
    tid = summary["tenant_id"]
    gid = enrollment_group(stack, summary)
    sim = stack.sim
    kiosk = sim.mutate(tid, "add_device", operatingSystem="iOS")["id"]  # no registered owner
    sim.mutate(tid, "add_member", group_id=gid, member_id=kiosk)
    desktop = sim.mutate(tid, "add_device", operatingSystem="Windows")["id"]  # a member, but not a mobile platform
    sim.mutate(tid, "add_member", group_id=gid, member_id=desktop)
    ran = await stack.tick()
    assert ran["successes"] == 1 and ran["failures"] == 0
    enrolled = await stack.assert_converged(summary)
    assert kiosk in enrolled and desktop not in enrolled
    rows = {d["id"]: d for d in await stack.devices(tid)}
    assert rows[kiosk]["ownerId"] is None and rows[kiosk]["reason"].startswith("device is a member of group")

    # Incrementally: an ownerless Android tablet added to a nested subgroup of the enrollment group.
    sub = sim.mutate(tid, "add_group", displayName="Shared tablets")["id"]
    sim.mutate(tid, "nest_group", parent_id=gid, child_id=sub)
    tablet = sim.mutate(tid, "add_device", operatingSystem="Android")["id"]
    sim.mutate(tid, "add_member", group_id=sub, member_id=tablet)
    await stack.tick()
    status = await stack.status(tid)
    assert status["lastPoll"]["mode"] == "incremental" and status["lastPoll"]["result"] == "ok"
    enrolled = await stack.assert_converged(summary)
    assert tablet in enrolled and kiosk in enrolled

    # Leaving the group takes it out of scope again (an ownerless member has no other way in).
    sim.mutate(tid, "remove_member", group_id=sub, member_id=tablet)
    await stack.tick()
    enrolled = await stack.assert_converged(summary)
    assert tablet not in enrolled


async def test_the_first_poll_after_a_failure_records_its_outcome_even_as_a_noop(stack: Stack) -> None:
    summary = await stack.provision(7310)
    tid = summary["tenant_id"]
    await stack.tick()
    assert (await stack.status(tid))["lastPoll"]["mode"] == "full"
    await stack.tick()  # a quiet poll: nothing to write
    steady = (await stack.status(tid))["lastPoll"]

    stack.sim.fault("status", match={"tenant": tid, "path_prefix": "/v1.0/groups/delta"}, status=503,
                    retry_after=0.01, unlimited=True)
    ran = await stack.tick()
    stack.sim.clear_faults()
    assert ran["successes"] == 1  # the poll function handled it; the tenant's poll failed
    failed = (await stack.status(tid))["lastPoll"]
    assert failed["result"] == "failed" and failed["lastError"].startswith("graph_unavailable")

    await stack.tick()  # nothing changed in the directory: a no-op, but the first one after the failure
    recovered = (await stack.status(tid))["lastPoll"]
    assert recovered["result"] == "ok" and recovered["lastError"] is None
    assert recovered["mode"] == steady["mode"] and recovered["counts"] == steady["counts"]
    assert recovered["requests"] == 2  # groups/delta + devices/delta
    quarantine = (await stack.status(tid))["quarantine"]
    assert quarantine["failures"] == 0 and quarantine["state"] == "ok"

    await stack.tick()  # steady again: a quiet poll writes nothing, so the recorded outcome is unchanged
    assert (await stack.status(tid))["lastPoll"] == recovered


# ---- §2: a glitched read must never become a destructive plan ---------------------------------------------------


async def full_sync(stack: Stack, tid: str) -> None:
    """``POST …/sync?full=true`` and drain the poll queue (the console's way to force a fresh full read)."""
    response = await stack.api.post(f"/api/tenants/{tid}/sync", params={"full": "true"})
    assert response.status_code == 202, response.text
    await stack.devhost.drain_queues(timeout=120)


async def approve(stack: Stack, tid: str, plan_id: str) -> Any:
    """``POST …/deactivations/approve`` naming ``plan_id``, then drain the poll queue."""
    response = await stack.api.post(f"/api/tenants/{tid}/deactivations/approve", json={"planId": plan_id})
    await stack.devhost.drain_queues(timeout=120)
    return response


@pytest.mark.parametrize("glitch", ["round_empty", "members_short"])
async def test_a_glitched_membership_round_fails_the_poll_as_retriable_and_writes_nothing(
    stack: Stack, glitch: str
) -> None:
    summary = await stack.provision(7320)
    tid = summary["tenant_id"]
    await stack.tick()
    enrolled = await stack.assert_converged(summary)
    events = len(await stack.events(tid))
    # A full reconcile reads the members of the groups in scope (not a groups/delta round): glitch those.
    stack.sim.fault(glitch, match={"tenant": tid, "path_prefix": "/v1.0/groups/"})
    await full_sync(stack, tid)
    status = await stack.status(tid)
    assert status["lastPoll"]["result"] == "failed" and status["lastPoll"]["lastError"] == "inconsistent_read"
    assert (status["stagedDeactivations"] or {}).get("state") != "deactivations_staged"
    assert len(await stack.events(tid)) == events  # nothing written
    await stack.tick(advance=3600)  # the glitch is gone: the next poll is healthy
    assert (await stack.status(tid))["lastPoll"]["result"] == "ok"
    assert await stack.assert_converged(summary) == enrolled


async def test_a_renamed_group_is_always_staged_rechecked_and_an_approval_applies_only_a_fresh_plan(
    stack: Stack,
) -> None:
    summary = await stack.provision(7330)
    tid = summary["tenant_id"]
    # A third enrollment group that alone brings in two devices: well under the 20 % threshold.
    name = "Kiosk Fleet"
    gid = stack.sim.mutate(tid, "add_group", displayName=name)["id"]
    user = stack.sim.mutate(tid, "add_user", groups=[gid])["id"]
    only = {stack.sim.mutate(tid, "add_device", operatingSystem=os_name, owner_id=user)["id"]
            for os_name in ("iOS", "Android")}
    summary["enrollment_groups"] = [*summary["enrollment_groups"], name]
    response = await stack.api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": summary["enrollment_groups"]})
    assert response.status_code == 200, response.text
    await stack.tick()
    enrolled = await stack.assert_converged(summary)
    assert only <= enrolled and len(only) * 5 < len(enrolled)
    stack.sim.mutate(tid, "rename_group", group_name=name, displayName=name + " (old)")
    await stack.tick()
    staged = (await stack.status(tid))["stagedDeactivations"]
    assert staged["state"] == "deactivations_staged" and staged["why"] == "cause", staged
    assert staged["planId"].startswith("plan-") and staged["lastCheckedAt"]
    assert {e["type"] for e in (await stack.events(tid))} == {"enrolled"}  # nothing deactivated

    # While staged, every poll re-checks the stage against Graph and says when.
    checked = staged["lastCheckedAt"]
    await stack.tick()
    again = (await stack.status(tid))["stagedDeactivations"]
    assert again["planId"] == staged["planId"] and again["lastCheckedAt"] > checked

    # An approval naming another plan is refused with the current one.
    stale = await approve(stack, tid, "plan-" + "0" * 24)
    assert stale.status_code == 409 and stale.headers["content-type"].startswith("application/problem+json")
    assert stale.json()["currentPlan"]["planId"] == staged["planId"]

    # The group is renamed back before the operator's approval lands: the approval names the staged plan, but the
    # poll recomputes it from fresh reads, finds nothing to deactivate, and deactivates nothing.
    stack.sim.mutate(tid, "rename_group", group_name=name + " (old)", displayName=name)
    accepted = await approve(stack, tid, staged["planId"])
    assert accepted.status_code == 202, accepted.text
    assert {e["type"] for e in (await stack.events(tid))} == {"enrolled"}
    status = await stack.status(tid)
    assert status["stagedDeactivations"]["state"] == "clear" and status["lastPoll"]["mode"] == "full"
    assert await stack.assert_converged(summary) == enrolled

    # Renamed away again and approved by its id: the fresh plan is the approved one, so it applies.
    stack.sim.mutate(tid, "rename_group", group_name=name, displayName=name + " (old)")
    await stack.tick()
    staged = (await stack.status(tid))["stagedDeactivations"]
    assert (await approve(stack, tid, staged["planId"])).status_code == 202
    left = {e["deviceObjectId"] for e in await stack.events(tid) if e["type"] == "deactivated"}
    assert left == only
    assert (await stack.status(tid))["stagedDeactivations"]["state"] == "clear"


async def test_chaos_no_glitch_interleaving_ever_deactivates_a_device_in_scope(stack: Stack) -> None:
    """Seeded random interleavings of glitched membership rounds, scheduled and forced polls, directory changes and
    approvals (of the current plan or a stale one): no device in scope by the simulator's ground truth is ever
    deactivated."""
    import random

    glitches = ("round_empty", "round_truncated", "members_short")
    violations: list[tuple[int, str, str]] = []
    for seed in (1, 2, 3):
        rng = random.Random(seed)
        summary = await stack.provision(7400 + seed)
        tid = summary["tenant_id"]
        groups = summary["enrollment_groups"]
        await stack.tick()
        roots = dict(stack.sim.truth(tid, groups)["resolved_groups"])
        renamed: dict[str, str] = {}
        seen = len(await stack.events(tid))
        for _step in range(14):
            op = rng.choice(["glitch", "glitch", "tick", "approve", "approve_stale", "rename", "member"])
            if op == "glitch":
                # Full reconciles read the members of the groups in scope: glitch those (and any new round).
                stack.sim.fault(rng.choice(glitches), match={"tenant": tid, "path_prefix": "/v1.0/groups/"})
                await full_sync(stack, tid)
            elif op == "tick":
                await stack.tick(advance=3600)
            elif op in ("approve", "approve_stale"):
                staged = (await stack.status(tid))["stagedDeactivations"] or {}
                plan = staged.get("planId") if op == "approve" else None
                await approve(stack, tid, plan or "plan-" + f"{rng.getrandbits(96):024x}")
            elif op == "rename":
                name = rng.choice(sorted(roots))
                if name in renamed:
                    stack.sim.mutate(tid, "rename_group", group_id=roots[name], displayName=name)
                    del renamed[name]
                else:
                    renamed[name] = name + " (renamed)"
                    stack.sim.mutate(tid, "rename_group", group_id=roots[name], displayName=renamed[name])
                continue  # a directory change, no poll: nothing to check yet
            else:
                user = stack.sim.mutate(tid, "add_user", groups=[roots[rng.choice(sorted(roots))]])
                stack.sim.mutate(tid, "add_device", operatingSystem="iOS", owner_id=user["id"])
                continue
            events = await stack.events(tid)
            in_scope = await stack.expected(tid, groups)
            violations += [(seed, op, e["deviceObjectId"]) for e in events[seen:]
                           if e["type"] == "deactivated" and e["deviceObjectId"] in in_scope]
            seen = len(events)
        stack.sim.clear_faults()
        for name in list(renamed):
            stack.sim.mutate(tid, "rename_group", group_id=roots[name], displayName=name)
        await full_sync(stack, tid)
        await stack.assert_converged(summary)
    assert violations == []


# ---- §1: replication lag --------------------------------------------------------------------------------------


async def test_objects_graph_cannot_read_yet_are_retried_with_backoff_until_it_answers(stack: Stack) -> None:
    summary = await stack.provision(7500)
    tid = summary["tenant_id"]
    sim = stack.sim
    await stack.tick()
    gid = enrollment_group(stack, summary)
    # A new member whose user object has not replicated yet (ownedDevices answers 404), with a new phone whose owner
    # link has not replicated yet, and a new shared tablet added to the group whose object answers 404 for now.
    user = sim.mutate(tid, "add_user", groups=[gid], lag_seconds=600)["id"]
    phone = sim.mutate(tid, "add_device", operatingSystem="iOS", owner_id=user, owner_lag_seconds=600)["id"]
    tablet = sim.mutate(tid, "add_device", operatingSystem="Android", lag_seconds=600)["id"]
    sim.mutate(tid, "add_member", group_id=gid, member_id=tablet)
    await stack.tick()
    status = await stack.status(tid)
    assert status["lastPoll"]["result"] == "ok"
    waiting = status["pending"]
    assert waiting["count"] == 3 and waiting["oldestSince"] and waiting["oldestAgeSeconds"] == 0
    assert {(p["id"], p["kind"]) for p in waiting["sample"]} == {(user, "user"), (phone, "owner"), (tablet, "device")}
    rows = {d["id"]: d["state"] for d in await stack.devices(tid)}
    assert phone not in rows and tablet not in rows

    # Quiet polls while Graph still cannot read them: the two delta reads plus one $batch carrying the three retries
    # (the simulator counts the envelope and each request inside it), and not one write.
    before, used = await stored_rows(stack, tid), stack.graph_snapshot([summary])
    await stack.tick()
    assert stack.graph_since(used)[tid] == {"requests": 2 + 1 + 3, "throttled": 0}
    assert await stored_rows(stack, tid) == before
    # Backoff: a retry point (1, 3, 7, 15 … minutes of age, then hourly) has not passed since the last poll.
    used = stack.graph_snapshot([summary])
    stack.clock.offset += 60
    assert (await stack.api.post(f"/api/tenants/{tid}/sync")).status_code == 202  # a poll one minute later
    await stack.devhost.drain_queues(timeout=120)
    assert stack.graph_since(used)[tid] == {"requests": 2, "throttled": 0}
    assert await stored_rows(stack, tid) == before

    # Replicated: the next retry finds them and enrolls both devices; nothing is pending any more.
    sim.call("POST", "/_sim/clock/advance", json={"seconds": 601})
    await stack.tick()
    enrolled = await stack.assert_converged(summary)
    assert {phone, tablet} <= enrolled
    assert (await stack.status(tid))["pending"]["count"] == 0

    # One Graph never answers for: given up after PENDING_GIVE_UP_HOURS, and reported.
    ghost = sim.mutate(tid, "add_user", groups=[gid], lag_seconds=86400)["id"]
    await stack.tick()
    assert (await stack.status(tid))["pending"]["count"] == 1
    await stack.tick(advance=GIVE_UP_HOURS * 3600 + 60)
    reported = (await stack.status(tid))["pending"]
    assert reported["count"] == 0 and reported["gaveUp"] == 1 and reported["gaveUpSample"][0]["id"] == ghost
