"""Issue 10, end to end through devhost (HTTP API, ``dispatch_polls``, the poll queue) against the simulator and
Azurite: situations real tenants produce every day that the connector must get right.

* §3 devices that are members of an enrollment group themselves are in scope with or without an owner;
* §5 status tells the truth after recovery (and quiet polls still write nothing).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.chaos.conftest import Stack

pytestmark = pytest.mark.chaos


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
