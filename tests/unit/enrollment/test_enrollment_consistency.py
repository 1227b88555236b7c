"""Consistency checks and the re-verification of deactivations (``domain.consistency``), I/O-free."""

from __future__ import annotations

import pytest

from shared_code.domain import consistency
from shared_code.domain.devices import DeviceRecord, normalize_platforms
from shared_code.domain.reconcile import DEACTIVATE, DELETED, DIRECT, GROUP_UNRESOLVED, LEFT_GROUP, OWNER, PlanItem
from shared_code.domain.scope import GroupNode, MembershipGraph, expand_scope

MOBILE = normalize_platforms(("iOS", "Android"))


def item(did: str, owner: str | None, cause: str = LEFT_GROUP, path: str = OWNER, via: str = "Sales") -> PlanItem:
    return PlanItem(DEACTIVATE, DeviceRecord(did, operating_system="iOS", owner_id=owner), "why", via, path, cause)


def test_a_group_in_scope_missing_from_the_membership_data_is_an_inconsistent_read() -> None:
    graph = MembershipGraph({"root": GroupNode("Sales", {"u1": "u", "child": "g"})})
    scope = expand_scope(graph, {"Sales": "root"})
    assert consistency.scope_gaps(scope) == ["child"] and "u1" in scope.users
    with pytest.raises(consistency.InconsistentRead, match="1 group"):
        consistency.check_scope(scope)
    empty = expand_scope(MembershipGraph(), {"Sales": "root"})  # an empty round with the name still resolving
    assert consistency.scope_gaps(empty) == ["root"]
    consistency.check_scope(expand_scope(graph, {}))  # nothing resolved: nothing missing


def test_only_membership_derived_deactivations_are_verified_all_up_to_the_limit_else_a_spread_sample() -> None:
    items = [item(f"d{i:03d}", "u") for i in range(150)] + [item("gone", "u", cause=DELETED)]
    few = consistency.verification_targets(items[:5] + items[-1:])
    assert few.complete and [i.record.id for i in few.items] == [f"d{i:03d}" for i in range(5)]
    many = consistency.verification_targets(items)
    assert not many.complete and len(many.items) == consistency.VERIFY_SAMPLE
    assert many.items[0].record.id == "d000" and many.items[-1].record.id > "d100"


def test_the_second_read_contradicts_a_deactivation_whose_device_is_still_in_scope() -> None:
    items = [
        item("still", "u-in"),                     # owner still in an enrollment group
        item("left", "u-out"),                     # owner really left
        item("kiosk", None, path=DIRECT),          # a member device still in the group
        item("moved", "u-in"),                     # its owner changed to someone outside
        item("deleted", "u-in"),                   # gone from Graph
        item("renamed", "u-x", cause=GROUP_UNRESOLVED, via="Field"),
    ]
    read = consistency.SecondRead(
        devices={
            "still": DeviceRecord("still", operating_system="iOS", owner_id="u-in"),
            "left": DeviceRecord("left", operating_system="iOS", owner_id="u-out"),
            "kiosk": DeviceRecord("kiosk", operating_system="Android"),
            "moved": DeviceRecord("moved", operating_system="iOS", owner_id="u-out"),
            "deleted": None,
            "renamed": DeviceRecord("renamed", operating_system="iOS", owner_id="u-x"),
        },
        member_of={"u-in": {"root", "other"}, "u-out": {"other"}, "kiosk": {"root"}, "u-x": set()},
        roots={"root"},
        platforms=MOBILE,
        resolves_again={"Field"},
    )
    wrong = {i.record.id for i in consistency.unsupported(items, read)}
    assert wrong == {"still", "kiosk", "renamed"}
    devices, direct, names = consistency.reads_needed(items)
    assert direct == ["kiosk"] and names == ["Field"] and len(devices) == len(items)


def test_the_plan_id_names_which_devices_a_plan_deactivates() -> None:
    a = consistency.plan_id([item("d1", "u"), item("d2", "u")])
    assert a == consistency.plan_id([item("d2", "v", cause=DELETED), item("d1", "u")])
    assert a != consistency.plan_id([item("d1", "u")]) and a.startswith("plan-") and len(a) == 29
    assert consistency.plan_id([]) == ""
