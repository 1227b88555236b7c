"""The pure planning of an incremental poll (``domain.incremental``): no storage, no Graph."""

from __future__ import annotations

from shared_code.domain import incremental
from shared_code.domain.devices import DeviceRecord, normalize_platforms
from shared_code.domain.reconcile import DEACTIVATE, DEACTIVATED, ENROLL, ENROLLED, Stored
from shared_code.domain.scope import GroupNode, MembershipGraph

MOBILE = normalize_platforms(("iOS", "Android"))
USER, DEVICE = "#microsoft.graph.user", "#microsoft.graph.device"


def graph() -> MembershipGraph:
    return MembershipGraph({
        "g-sales": GroupNode("Sales", {"u1": "u", "u2": "u", "kiosk": "d"}),
        "g-other": GroupNode("Other", {"u9": "u"}),
    })


def row(did: str, owner: str | None, state: str = ENROLLED, reason: str = "", os: str = "iOS") -> Stored:
    return Stored(DeviceRecord(did, operating_system=os, owner_id=owner), state, "Sales", reason=reason)


def test_device_changes_fold_in_order() -> None:
    changes = incremental.fold_device_changes([
        {"id": "a", "operatingSystem": "iOS"}, {"id": "a", "operatingSystemVersion": "18"},
        {"id": "b", "@removed": {"reason": "deleted"}}, {"id": "c", "@removed": {}}, {"id": "c", "displayName": "back"},
    ])
    assert changes.deleted == {"b"}
    assert dict(changes.updated["a"]) == {"id": "a", "operatingSystem": "iOS", "operatingSystemVersion": "18"}
    assert set(changes.updated) == {"a", "c"}


def test_the_scope_shift_applies_group_pages_to_a_copy() -> None:
    old = graph()
    pages = [[{"id": "g-sales", "members@delta": [
        {"id": "u2", "@odata.type": USER, "@removed": {"reason": "deleted"}},
        {"id": "u3", "@odata.type": USER}, {"id": "tablet", "@odata.type": DEVICE},
    ]}]]
    shift = incremental.shift_scope(old, pages, ["Sales"])
    assert shift.graph_changed and "u3" not in old.groups["g-sales"].members
    assert shift.entering_users == {"u3"} and shift.moved_users == {"u2", "u3"}
    assert shift.moved_devices == {"tablet"}
    assert not incremental.shift_scope(old, [[]], ["Sales"]).graph_changed


def test_targeted_rows_unless_the_plan_must_see_every_row() -> None:
    shift = incremental.shift_scope(graph(), [[{"id": "g-sales", "members@delta": [
        {"id": "u2", "@odata.type": USER, "@removed": {}}]}]], ["Sales"])
    changes = incremental.fold_device_changes([{"id": "d5", "operatingSystem": "iOS"}])
    rows = incremental.rows_to_read(changes, shift, staged=False, disabled_changed=False, known_enrolled=10,
                                    extra_devices=["late"])
    assert rows == incremental.RowsToRead(("d5", "late"), ("u2",), True)
    for flags in ({"staged": True, "disabled_changed": False, "known_enrolled": 10},
                  {"staged": False, "disabled_changed": True, "known_enrolled": 10},
                  {"staged": False, "disabled_changed": False, "known_enrolled": None}):
        assert not incremental.rows_to_read(changes, shift, **flags).partial  # type: ignore[arg-type]
    wide = incremental.fold_device_changes({"id": f"d{i}"} for i in range(incremental.DEVICE_LOOKUP_LIMIT + 1))
    assert not incremental.rows_to_read(wide, shift, staged=False, disabled_changed=False, known_enrolled=1).partial


def test_what_to_read_from_graph_and_the_plan() -> None:
    shift = incremental.shift_scope(graph(), [[{"id": "g-sales", "members@delta": [
        {"id": "u2", "@odata.type": USER, "@removed": {}}, {"id": "u3", "@odata.type": USER},
        {"id": "tablet", "@odata.type": DEVICE}]}]], ["Sales"])
    stored = {"p1": row("p1", "u1"), "p2": row("p2", "u2"), "old": row("old", "u1", DEACTIVATED, "owner disabled")}
    changes = incremental.fold_device_changes([{"id": "p1", "operatingSystem": "Windows"},
                                               {"id": "new", "operatingSystem": "Android"},
                                               {"id": "pc", "operatingSystem": "Windows"}])
    current = incremental.current_records(stored, changes)
    assert current["p1"].operating_system == "Windows" and set(current) == {"p1", "p2"}
    assert incremental.entering_owners(shift, stored, None) == ["u3"]
    assert incremental.entering_owners(shift, stored, set()) == ["u1", "u3"]  # re-enabled owner of a disabled row
    assert incremental.entering_owners(shift, stored, {"u1"}) == ["u3"]
    assert incremental.device_lookups(changes, stored, shift, current, MOBILE) == ["new", "tablet"]
    current |= {"tablet": DeviceRecord("tablet", operating_system="Android"),
                "new": DeviceRecord("new", operating_system="Android", owner_id="u3")}
    result, desired = incremental.plan(current, stored, shift, MOBILE, deleted=(), disabled=set())
    assert set(desired) == {"tablet", "new"}
    actions = {(i.action, i.record.id, i.cause) for i in result.items}
    assert actions == {(ENROLL, "tablet", ""), (ENROLL, "new", ""), (DEACTIVATE, "p1", "platform"),
                       (DEACTIVATE, "p2", "left_group")}
