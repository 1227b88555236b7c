"""Pure enrollment domain: scope graph, name resolution, reconcile (property-based) and the guard."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from shared_code.domain.devices import (
    DeviceRecord,
    device_from_graph,
    merge_device_update,
    normalize_platforms,
    platform_matches,
)
from shared_code.domain.guard import evaluate, threshold
from shared_code.domain.reconcile import (
    DEACTIVATE,
    DEACTIVATED,
    ENROLL,
    ENROLLED,
    UPDATE,
    Desired,
    Facts,
    Stored,
    reconcile,
)
from shared_code.domain.scope import MembershipGraph, expand_scope, odata_string, resolve_names

USER = "#microsoft.graph.user"
GROUP = "#microsoft.graph.group"
DEVICE = "#microsoft.graph.device"
CONTACT = "#microsoft.graph.orgContact"
SP = "#microsoft.graph.servicePrincipal"


def g(gid: str, name: str | None = None, *members: tuple[str, str], removed: tuple[str, ...] = ()) -> dict:
    obj: dict = {"id": gid}
    if name is not None:
        obj["displayName"] = name
    delta = [{"@odata.type": t, "id": m} for t, m in members]
    delta += [{"@odata.type": USER, "id": m, "@removed": {"reason": "deleted"}} for m in removed]
    if delta:
        obj["members@delta"] = delta
    return obj


def test_odata_string_doubles_single_quotes() -> None:
    assert odata_string("O'Brien Field Team") == "'O''Brien Field Team'"
    assert odata_string("plain") == "'plain'"


def test_repeated_group_objects_in_one_round_are_merged() -> None:
    graph = MembershipGraph()
    graph.apply_page([g("G1", "Root", (USER, "u1")), g("G2", "Other")])
    graph.apply_page([g("G1", None, (USER, "u2"), (GROUP, "G2"))])
    assert graph.groups["G1"].members == {"u1": "u", "u2": "u", "G2": "g"}
    assert graph.groups["G1"].name == "Root"


def test_removed_members_and_deleted_groups_apply_idempotently() -> None:
    graph = MembershipGraph()
    graph.apply_page([g("G1", "Root", (USER, "u1"), (USER, "u2"))])
    assert graph.apply_page([g("G1", None, removed=("u1",))])
    assert not graph.apply_page([g("G1", None, removed=("u1",))])  # replay: nothing changes
    assert graph.groups["G1"].members == {"u2": "u"}
    assert graph.apply_page([{"id": "G1", "@removed": {"reason": "changed"}}])
    assert "G1" not in graph.groups


def test_names_resolve_case_insensitively_and_report_missing_and_ambiguous() -> None:
    graph = MembershipGraph()
    graph.apply_page([g("A", "MTD Enrollment"), g("B", "Field Sales"), g("C", "field sales")])
    res = resolve_names(graph, ["mtd enrollment", "Field Sales", "Nope"])
    assert res.resolved == {"mtd enrollment": "A"}
    reasons = {u["name"]: (u["reason"], u["matches"]) for u in res.unresolved}
    assert reasons == {"Field Sales": ("ambiguous", ["B", "C"]), "Nope": ("not_found", [])}


def test_scope_walks_nested_groups_through_cycles_and_ignores_contacts_and_sps() -> None:
    graph = MembershipGraph()
    graph.apply_page(
        [
            g("R", "Root", (USER, "u1"), (GROUP, "S1"), (CONTACT, "c1"), (SP, "sp1"), (DEVICE, "d1")),
            g("S1", "Sub", (USER, "u2"), (GROUP, "S2")),
            g("S2", "SubSub", (USER, "u3"), (GROUP, "S1"), (GROUP, "R")),  # cycles back up
            g("X", "Elsewhere", (USER, "u9")),
        ]
    )
    scope = expand_scope(graph, {"Root": "R"})
    assert scope.users == {"u1": "Root", "u2": "Root", "u3": "Root"}
    assert scope.devices == {"d1": "Root"}
    assert scope.groups == {"R", "S1", "S2"}


def test_graph_round_trips_through_json() -> None:
    graph = MembershipGraph()
    graph.apply_page([g("R", "Root", (USER, "u1"), (GROUP, "S1"))])
    assert MembershipGraph.from_json(graph.to_json()) == graph


def test_device_transform_tolerates_sparse_objects_and_partial_updates() -> None:
    rec = device_from_graph({"id": "x"}, "owner")
    assert rec == DeviceRecord(id="x", owner_id="owner")
    full = device_from_graph(
        {"id": "x", "deviceId": "dx", "operatingSystem": "iOS", "operatingSystemVersion": "17", "isManaged": True}
    )
    upd = merge_device_update(full, {"id": "x", "operatingSystem": "Android"})
    assert (upd.operating_system, upd.os_version, upd.is_managed) == ("Android", "17", True)
    platforms = normalize_platforms(["iOS", " android "])
    assert platform_matches("IOS", platforms) and platform_matches("Android", platforms)
    assert not platform_matches("Windows", platforms)


def dev(i: int, os: str = "iOS", owner: str | None = "u") -> DeviceRecord:
    return DeviceRecord(id=f"d{i}", device_id=f"x{i}", operating_system=os, owner_id=owner)


def test_reconcile_gives_each_item_a_specific_reason() -> None:
    stored = {
        "d1": Stored(dev(1), ENROLLED, "Root"),
        "d2": Stored(dev(2), ENROLLED, "Root"),
        "d3": Stored(dev(3), ENROLLED, "Root"),
        "d4": Stored(dev(4), ENROLLED, "Gone"),
        "d5": Stored(dev(5), DEACTIVATED, "Root"),
        "d6": Stored(dev(6), ENROLLED, "Root"),
    }
    desired = {
        "d5": Desired(dev(5), "Root"),
        "d6": Desired(dev(6, os="iPadOS"), "Root"),
        "d7": Desired(dev(7), "Root"),
    }
    facts = Facts(
        deleted=frozenset({"d1"}),
        current={"d2": dev(2, os="Windows")},
        platforms=normalize_platforms(["iOS", "iPadOS"]),
        unresolved=frozenset({"Gone"}),
    )
    plan = reconcile(desired, stored, facts)
    got = {(i.action, i.record.id): i.reason for i in plan.items}
    assert got == {
        (ENROLL, "d5"): "re-enrolled: owner in group Root",
        (ENROLL, "d7"): "owner in group Root",
        (UPDATE, "d6"): "platform changed from iOS to iPadOS",
        (DEACTIVATE, "d1"): "device deleted",
        (DEACTIVATE, "d2"): "platform changed to Windows",
        (DEACTIVATE, "d3"): "owner left group Root",
        (DEACTIVATE, "d4"): "group Gone no longer resolves",
    }
    assert plan.counts() == {ENROLL: 2, UPDATE: 1, DEACTIVATE: 4}


ids = st.sampled_from([f"d{i}" for i in range(12)])
oses = st.sampled_from(["iOS", "Android", "iPadOS"])
records = st.builds(lambda i, os, o: DeviceRecord(id=i, device_id="x" + i, operating_system=os, owner_id=o),
                    ids, oses, st.sampled_from(["u1", "u2", None]))
stored_maps = st.dictionaries(ids, st.tuples(records, st.sampled_from([ENROLLED, DEACTIVATED])))
desired_maps = st.dictionaries(ids, records)


def _stored(m: dict) -> dict[str, Stored]:
    return {k: Stored(replace(rec, id=k), state, "Root") for k, (rec, state) in m.items()}


def _desired(m: dict) -> dict[str, Desired]:
    return {k: Desired(replace(rec, id=k), "Root") for k, rec in m.items()}


def _apply(stored: dict[str, Stored], plan) -> dict[str, Stored]:
    out = dict(stored)
    for item in plan.items:
        state = DEACTIVATED if item.action == DEACTIVATE else ENROLLED
        out[item.record.id] = Stored(item.record, state, item.via)
    return out


@settings(max_examples=300, deadline=None)
@given(stored_maps, desired_maps)
def test_applying_a_plan_reaches_the_desired_set_and_is_then_a_fixed_point(s: dict, d: dict) -> None:
    stored, desired = _stored(s), _desired(d)
    plan = reconcile(desired, stored)
    after = _apply(stored, plan)
    enrolled = {k: v.record for k, v in after.items() if v.state == ENROLLED}
    assert enrolled == {k: v.record for k, v in desired.items()}
    assert reconcile(desired, after).items == ()
    # One item per device at most, and every item has a reason.
    assert len({i.record.id for i in plan.items}) == len(plan.items)
    assert all(i.reason for i in plan.items)


@settings(max_examples=200, deadline=None)
@given(stored_maps, desired_maps)
def test_plan_never_deactivates_a_desired_device_nor_enrolls_an_undesired_one(s: dict, d: dict) -> None:
    stored, desired = _stored(s), _desired(d)
    for item in reconcile(desired, stored).items:
        if item.action == DEACTIVATE:
            assert item.record.id not in desired and stored[item.record.id].state == ENROLLED
        else:
            assert item.record.id in desired


def test_guard_threshold_is_the_smaller_of_count_and_percent() -> None:
    assert threshold(10_000, 500, 20.0) == 500
    assert threshold(100, 500, 20.0) == 20
    assert evaluate(20, 100, max_count=500, max_percent=20.0).apply_deactivations
    staged = evaluate(21, 100, max_count=500, max_percent=20.0)
    assert not staged.apply_deactivations and staged.staged == 21
    assert staged.why == "count"


def test_an_approval_applies_only_the_plan_it_names() -> None:
    approved = evaluate(30, 100, max_count=500, max_percent=20.0, plan_id="plan-a", approved_plan_id="plan-a")
    assert approved.apply_deactivations and approved.approved
    other = evaluate(30, 100, max_count=500, max_percent=20.0, plan_id="plan-b", approved_plan_id="plan-a")
    assert not other.apply_deactivations and other.staged == 30


def test_the_guard_judges_causes_a_group_that_no_longer_resolves_is_always_staged() -> None:
    # One renamed group of three: 10 of 100 enrolled is under the 20 % threshold, and is staged anyway.
    decision = evaluate(10, 100, max_count=500, max_percent=20.0, protected=10, plan_id="plan-x")
    assert not decision.apply_deactivations and decision.staged == 10 and decision.why == "cause"
    assert evaluate(10, 100, max_count=500, max_percent=20.0, protected=10, plan_id="plan-x",
                    approved_plan_id="plan-x").apply_deactivations
    assert evaluate(0, 100, max_count=500, max_percent=20.0, protected=0).apply_deactivations


def test_a_rejected_connector_credential_never_pushes_a_tenant_into_quarantine() -> None:
    from shared_code.enrollment import quarantine
    from shared_code.errors import CredentialRejectedError

    status: dict[str, object] = {}
    for _ in range(20):
        status = quarantine.after_failure(
            status, CredentialRejectedError("bad secret"), 1000.0, interval_minutes=5, quarantine_after=3
        )
    assert status["state"] == "backoff" and status["failures"] == 0
    assert status["reason"] == "connector_credential_rejected"
    assert status["nextAttemptAt"] == 1000.0 + 300


def test_backoff_stays_finite_after_a_very_long_streak() -> None:
    from shared_code.enrollment import quarantine

    assert quarantine.backoff_seconds(5000, 5) == quarantine.MAX_BACKOFF_SECONDS
