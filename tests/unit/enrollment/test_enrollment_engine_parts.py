"""Pure parts of the poll engine: strategy costs, backoff/quarantine, due-ness, cursors and messages."""

from __future__ import annotations

import base64

import pytest

from shared_code.enrollment import quarantine, strategies
from shared_code.enrollment.cursors import Cursor
from shared_code.enrollment.service import PollMessage, decode_event_cursor, encode_event_cursor, is_guid
from shared_code.errors import ConsentRequiredError, PermissionMissingError, RetriableError, ValidationError

T1 = "11111111-2222-4333-8444-555555555555"
T2 = "99999999-2222-4333-8444-555555555555"


@pytest.mark.parametrize(
    ("shape", "winner"),
    [
        (strategies.Shape(users=40, devices=70, scope_users=20), strategies.DEVICES_EXPAND),
        (strategies.Shape(users=400, devices=700, scope_users=170), strategies.USERS_EXPAND),
        (strategies.Shape(users=20_000, devices=35_000, scope_users=6_800, capped_users=4), strategies.USERS_EXPAND),
        (strategies.Shape(users=100_000, devices=180_000, scope_users=60), strategies.PER_USER),
    ],
)
def test_the_cheapest_strategy_depends_on_the_tenant_shape(shape: strategies.Shape, winner: str) -> None:
    best, costs = strategies.choose(shape)
    assert best.strategy == winner
    assert len(costs) == 3 and costs[0] == best


def test_estimates_follow_graphs_documented_page_limits() -> None:
    costs = {c.strategy: c for c in strategies.estimate(
        strategies.Shape(users=20_000, devices=35_000, scope_users=6_800, capped_users=4))}
    assert costs[strategies.DEVICES_EXPAND].requests == 350  # 100 per page with $expand
    assert costs[strategies.USERS_EXPAND].requests == 200 + 1  # users/100 + one $batch (no /devices list)
    assert costs[strategies.PER_USER].requests == 340  # 20 per $batch


def test_backoff_grows_then_quarantines_and_success_clears_the_streak() -> None:
    state: dict[str, object] = {}
    delays = []
    for _ in range(5):
        state = quarantine.after_failure(state, RetriableError("x", status=503), 1000.0,
                                         interval_minutes=5, quarantine_after=5)
        delays.append(float(state["nextAttemptAt"]) - 1000.0)  # type: ignore[arg-type]
    assert delays[:4] == [300.0, 600.0, 1200.0, 2400.0]
    assert state["state"] == "quarantined" and delays[4] == quarantine.QUARANTINE_RETRY_SECONDS
    assert state["reason"] == "graph_unavailable (503)"
    assert quarantine.after_success(state, 2000.0) == {
        "state": "ok", "failures": 0, "reason": None, "nextAttemptAt": None, "quarantinedAt": None,
        "recoveredAt": 2000.0,
    }
    assert quarantine.after_success({}, 1.0) is None


def test_failure_reasons_name_the_cause_without_secrets() -> None:
    assert quarantine.failure_reason(ConsentRequiredError("m", aadsts="65001")) == "consent_required (AADSTS65001)"
    assert quarantine.failure_reason(PermissionMissingError("m", permission="Device.Read.All")) == (
        "permission_missing: Device.Read.All")
    assert quarantine.failure_reason(KeyError("secret-ish")) == "internal_error (KeyError)"


def test_a_tenant_is_due_after_its_interval_unless_running_or_backing_off() -> None:
    def due(**kw: object) -> bool:
        args = {"interval_minutes": 5, "last_started": 0.0, "holder_expires_at": 0.0, "quarantine": {}} | kw
        return quarantine.is_due(1000.0, **args)  # type: ignore[arg-type]

    assert due()
    assert due(last_started=1000.0 - 280)  # a tick may come slightly early
    assert not due(last_started=1000.0 - 200)
    assert not due(holder_expires_at=1200.0)
    assert not due(quarantine={"failures": 2, "nextAttemptAt": 1500.0})
    assert due(quarantine={"failures": 2, "nextAttemptAt": 900.0})


def test_a_cursor_commit_promotes_the_delta_link_and_clears_the_in_flight_one() -> None:
    cur = Cursor(inflight="next", generation=3)
    done = cur.commit("delta", 50.0, full=True)
    assert (done.committed, done.inflight, done.generation, done.full_at) == ("delta", "", 4, 50.0)
    assert cur.commit("d2", 60.0).generation == 3


def test_event_cursors_are_opaque_and_bound_to_their_tenant() -> None:
    cursor = encode_event_cursor(T1, [42, 0, 300_000])
    assert "42" not in cursor and decode_event_cursor(T1, cursor) == [42, 0, 300_000]
    # 32 shards of a big tenant still fit the API's 256 characters.
    assert len(encode_event_cursor(T1, [10**9] * 32)) <= 256
    # A cursor issued before sharding (one partition) keeps working.
    legacy = "ev1." + base64.urlsafe_b64encode(f"{T1[:8]}:42".encode()).decode().rstrip("=")
    assert decode_event_cursor(T1, legacy) == [42]
    for bad in ("", "42", "ev1.!!!", "ev1." + "A" * 80, "ev2.!!!", "ev2." + "A" * 300, "ev2.AAAA",
                encode_event_cursor(T2, [42])):
        with pytest.raises(ValidationError) as info:
            decode_event_cursor(T1, bad)
        assert info.value.field == "after"


def test_poll_messages_round_trip_and_reject_junk() -> None:
    msg = PollMessage(T1, "manual", full=True, enqueued_at=5.0)
    assert PollMessage.from_json(msg.to_json()) == msg
    for junk in ("not json", "[]", '{"tenant_id": "x"}', "{}"):
        with pytest.raises(ValidationError):
            PollMessage.from_json(junk)
    assert is_guid(T1) and not is_guid(T1.upper()[:-1]) and not is_guid("{" + T1 + "}")
