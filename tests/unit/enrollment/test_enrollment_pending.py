"""Objects Graph could not read yet (``domain.pending``): persistence form, backoff without writes, give-up, status."""

from __future__ import annotations

from shared_code.domain import pending
from shared_code.domain.pending import DEVICE, OWNER_LINK, USER, Pending


def test_pending_objects_round_trip_and_bad_stored_data_decodes_to_nothing() -> None:
    items = [Pending("u1", USER, 100.0), Pending("d1", OWNER_LINK, 160.5)]
    assert pending.decode(pending.encode(items)) == tuple(items)
    assert pending.encode([]) == "" and pending.decode("") == ()
    for bad in ("{", '{"a": 1}', '[["x", "alien", 1]]', '[["x", "user", "soon"]]', "[[1, 2]]"):
        assert pending.decode(bad) == ()


def test_retries_back_off_without_any_write_between_polls() -> None:
    item = Pending("u1", USER, 1000.0)
    assert pending.due(item, 1000.0, None)  # first sight (and dry runs): retried
    polls = [1000.0 + 300 * k for k in range(1, 40)]  # a poll every 5 minutes for over 3 hours
    retried = [now for prev, now in zip([1000.0, *polls], polls, strict=False) if pending.due(item, now, prev)]
    ages = [int(now - 1000) // 60 for now in retried]
    # Retry points at 1, 3, 7, 15, 31, 63 minutes, then hourly: seen by the first poll after each.
    assert ages == [5, 10, 15, 35, 65, 125, 185]
    assert not pending.due(item, 1360.0, 1300.0)


def test_objects_are_given_up_after_the_bound_and_owner_links_after_an_hour() -> None:
    items = [Pending("u1", USER, 0.0), Pending("d1", DEVICE, 0.0), Pending("d2", OWNER_LINK, 0.0)]
    live, gone = pending.split(items, 2 * 3600.0, 24 * 3600.0)
    assert [p.id for p in live] == ["u1", "d1"] and [p.id for p in gone] == ["d2"]
    live, gone = pending.split(items, 24 * 3600.0, 24 * 3600.0)
    assert live == [] and len(gone) == 3
    many = [Pending(f"u{i}", USER, float(i)) for i in range(pending.MAX_PENDING + 5)]
    live, gone = pending.split(many, 100.0, 24 * 3600.0)
    assert len(live) == pending.MAX_PENDING and [p.id for p in gone] == [f"u{i}" for i in range(5)]
    assert len(pending.encode(live)) < 32_000  # one Table string property


def test_merge_keeps_the_first_sighting_and_status_reports_count_oldest_and_sample() -> None:
    kept = [Pending("u1", USER, 50.0)]
    merged = pending.merge(kept, [Pending("u1", USER, 90.0), Pending("d1", DEVICE, 80.0)])
    assert merged == [Pending("u1", USER, 50.0), Pending("d1", DEVICE, 80.0)]
    section = pending.status(merged, 110.0, [Pending("u9", USER, 0.0)])
    assert section["count"] == 2 and section["oldestAgeSeconds"] == 60
    assert section["sample"][0] == {"id": "u1", "kind": "user", "since": "1970-01-01T00:00:50Z"}
    assert section["gaveUp"] == 1 and section["gaveUpSample"][0]["id"] == "u9"
