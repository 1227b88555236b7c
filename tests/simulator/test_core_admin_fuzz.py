"""Property test: arbitrary JSON to every core admin route gets a JSON answer < 500, never a hang or a crash."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simulator.conftest import SimHandle

ROUTES = [
    ("POST", "/_sim/faults"), ("POST", "/_sim/consent"), ("POST", "/_sim/tokens/console"),
    ("POST", "/_sim/tokens/user"), ("POST", "/_sim/clock/advance"), ("POST", "/_sim/keys/rotate"),
    ("POST", "/_sim/throttle"), ("POST", "/_sim/keyvault/secrets"), ("POST", "/_sim/intune/config"),
    ("POST", "/_sim/entra/tenants"), ("POST", "/_sim/counters/reset"),
]
FIELDS = ["kind", "match", "count", "status", "retry_after", "latency_ms", "unlimited", "tenant_id", "app_id", "roles",
          "exp_in", "claims", "user_id", "scopes", "audience", "seconds", "drop_old", "scale", "enabled", "name",
          "value", "unresponsive_days", "processing_seconds", "pending_polls", "tenant_api_versions", "x"]
scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=4) | values


@pytest.fixture(scope="module")
def fuzz_sim(private_sim: Any) -> SimHandle:
    return private_sim()  # type: ignore[no-any-return]


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_admin_routes_answer_json_below_500(fuzz_sim: SimHandle, route: tuple[str, str], body: Any) -> None:
    method, path = route
    if path == "/_sim/clock/advance" and isinstance(body, dict) and isinstance(body.get("seconds"), int | float):
        body = dict(body, seconds=abs(body["seconds"]) % 1000)  # keep the clock sane for later examples
    r = fuzz_sim.admin(method, path, body)
    assert r.status_code < 500, (path, body, r.text)
    payload = r.json()
    if r.status_code == 400:
        assert set(payload) == {"error", "field"}


INTUNE_FIELDS = ["Provisioned", "PartnerEnrollmentUrl", "PartnerRemediationUrl", "Timestamp", "TenantId", "UploadTime",
                 "Content", "EntityType", "DeviceId", "ThreatLevel"]
intune_bodies = st.dictionaries(st.sampled_from(INTUNE_FIELDS), values | st.just("2026-01-01T00:00:00Z"),
                                max_size=4) | values


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(["PartnerTenants", "PartnerTenantHeartbeat", "DataUploadMessages"]), body=intune_bodies)
def test_intune_routes_answer_below_500(fuzz_sim: SimHandle, call: str, body: Any) -> None:
    tid = fuzz_sim.tenant_ids[0]
    token = fuzz_sim.app_token(tid, "https://api.manage.microsoft.com//.default")
    if call == "DataUploadMessages":
        path = (f"/intune/{tid}/StatelessPartnerDeviceDataSyncService/"
                f"DataUploadMessages(guid'{'0' * 8}-0000-0000-0000-{abs(hash(repr(body))) % 10**12:012d}')"
                "?api-version=1.2")
    else:
        path = f"/intune/{tid}/StatelessPartnerTenantDataSyncService/{call}(guid'{tid}')?api-version=1.6"
    r = fuzz_sim.put(path, token, body)
    assert r.status_code < 500, (path, body, r.text)
    assert "ErrorDetail" in r.json()
