"""The full reconcile's compact checkpoint format: id sets of 16-byte keys, JSON-lines chunks (issue 9, memory)."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from shared_code.domain.devices import DeviceRecord
from shared_code.domain.idset import IdSet, IdSetBuilder, guid_key
from shared_code.domain.reconcile import Desired
from shared_code.enrollment.full_reconcile import _LINE_RECORDS, Fragment, PlanInput

guids = st.uuids().map(str)
odd_ids = st.sampled_from(["", "x", "ABCDEF01-2345-6789-ABCD-EF0123456789", "{0c8b0c5e-1111-2222-3333-444444444444}",
                           "0c8b0c5e-1111-2222-3333-44444444444g", "0c8b0c5e 1111-2222-3333-444444444444"])
ids = st.lists(st.one_of(guids, odd_ids), max_size=60)


@settings(max_examples=60, deadline=None)
@given(ids, ids)
def test_an_id_set_holds_exactly_the_ids_it_was_given(members: list[str], probes: list[str]) -> None:
    got = IdSet.of(members + members[:5])  # duplicates collapse
    assert len(got) == len(set(members))
    assert sorted(got) == sorted(set(members))
    for probe in probes + members:
        assert (probe in got) == (probe in set(members))
    # Streaming pieces (as a chunk writes them) rebuild the same set.
    again = IdSetBuilder()
    for keys, other in got.key_pieces(per_piece=3):
        again.add_keys(keys, other)
    assert again.build() == got


def test_only_canonical_lower_case_guids_become_keys() -> None:
    gid = str(uuid.uuid4())
    assert guid_key(gid) == uuid.UUID(gid).bytes
    assert guid_key(gid.upper()) is None and guid_key("{" + gid + "}") is None and guid_key(gid[:-1] + "z") is None
    both = IdSet.of([gid, gid.upper()])
    assert len(both) == 2 and gid.upper() in both and gid in both
    assert len(both.keys) == 16 and both.other == frozenset({gid.upper()})


def _record(i: int, owner: str | None = None) -> DeviceRecord:
    return DeviceRecord(id=str(uuid.UUID(int=i)), device_id=f"dev-{i}", display_name=f"Phone \"{i}\" ✓",
                        operating_system=["iOS", "Android", "Windows"][i % 3], os_version=f"1{i % 4}.0",
                        trust_type="Workplace", is_managed=[True, False, None][i % 3], is_compliant=i % 2 == 0,
                        owner_id=owner)


def test_a_fragment_survives_its_lines_and_merges_as_before() -> None:
    a = Fragment(users=3, devices=7, capped=1, ownerless=["o1", "o2"], disabled={"u9"})
    for i in range(_LINE_RECORDS + 20):  # more than one line of records
        a.records[str(uuid.UUID(int=i))] = _record(i, owner=None if i % 5 == 0 else f"user-{i % 7}")
        a.owned.add(str(uuid.UUID(int=i)))
    a.seen.update(str(uuid.UUID(int=10_000 + i)) for i in range(9_000))  # more than one piece of keys
    a.seen.add("not-a-guid")
    b = Fragment(users=1, ownerless=["o2", "o3"], disabled={"u8"})
    b.records[str(uuid.UUID(int=1))] = _record(1, owner="user-new")  # a later page wins
    b.owned.add(str(uuid.UUID(int=99_999)))

    direct = Fragment()
    direct.merge(a)
    direct.merge(b)
    streamed = Fragment()
    streamed.absorb(a.lines())
    streamed.absorb(b.lines())
    assert streamed.records == direct.records
    assert streamed.records[str(uuid.UUID(int=1))].owner_id == "user-new"
    assert streamed.seen.build() == direct.seen.build() and len(streamed.seen.build()) == 9_001
    assert streamed.owned.build() == direct.owned.build() and len(streamed.owned.build()) == _LINE_RECORDS + 21
    assert streamed.ownerless == direct.ownerless == ["o1", "o2", "o3"]
    assert streamed.disabled == direct.disabled == {"u8", "u9"}
    assert (streamed.users, streamed.devices, streamed.capped) == (4, 7, 1)


def test_a_plan_input_survives_its_lines() -> None:
    records = {str(uuid.UUID(int=i)): _record(i, owner=f"user-{i % 11}") for i in range(2 * _LINE_RECORDS + 3)}
    desired = {did: Desired(rec, f"Group {i % 3}", "direct" if i % 4 == 0 else "owner")
               for i, (did, rec) in enumerate(records.items()) if i % 3 != 2}
    for seen, ownerless in ((IdSet.of([*records, "odd-id"]), None), (None, ["a", "b"])):
        plan = PlanInput(desired, records, seen, {"u1", "u2"}, ownerless)
        back = PlanInput.from_lines(plan.lines())
        assert back.desired == desired
        assert back.current == records
        assert all(back.current[did] is want.record for did, want in back.desired.items())  # one object each
        assert back.seen == seen
        assert back.disabled == {"u1", "u2"} and back.ownerless == ownerless
