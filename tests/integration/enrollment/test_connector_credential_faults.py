"""One broken Key Vault secret must not quarantine every tenant (issue 11 §4).

The connector reads its credential from the simulator's Key Vault (challenge auth, the local vault identity). A
missing secret, then a malformed certificate, fail every poll; none of it counts toward any tenant's quarantine, the
connector reports one connector-level state (``GET /api/connector``, Console.Read), and the first poll after the
vault is fixed succeeds for every tenant.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import azure.functions as func
import pytest
from enrollment_sim_helpers import provision

from shared_code.adapters.keyvault import KeyVaultSecret, vault_credential
from shared_code.bootstrap import Container, use_container
from shared_code.enrollment.service import EnrollmentService, build_enrollment_service
from shared_code.settings import Settings

QUARANTINE_AFTER = 3


def _vault_env(sim: Any) -> dict[str, str]:
    return {
        "AZURE_TENANT_ID": sim.info["console"]["tenant_id"],
        "AZURE_CLIENT_ID": sim.info["connector"]["client_id"],
        "AZURE_CLIENT_CERTIFICATE_PATH": sim.info["connector"]["certificate_path"],
    }


async def _container(sim: Any, module_env: dict[str, str], **extra: str) -> Container:
    env = module_env | {
        "KEY_VAULT_URL": sim.info["key_vault_url"],
        "CONNECTOR_SECRET_NAME": f"conn-{uuid.uuid4().hex[:12]}",
        "QUARANTINE_AFTER_FAILURES": str(QUARANTINE_AFTER),
        "TABLE_PREFIX": f"k{uuid.uuid4().hex[:10]}",
        **extra,
    }
    env.pop("CONNECTOR_CLIENT_SECRET", None)
    settings = Settings.from_env(env)
    source = KeyVaultSecret(settings, credential=vault_credential(settings, _vault_env(sim)))
    return Container(settings, secret_source=source)


@pytest.fixture
async def vault_container(sim: Any, module_env: dict[str, str]) -> AsyncIterator[Container]:
    c = await _container(sim, module_env)
    use_container(c)
    try:
        yield c
    finally:
        use_container(None)
        await c.close()
        await c.secret_source.close()  # type: ignore[attr-defined]


async def _connector_state(console_token: Any) -> dict[str, Any]:
    """``GET /api/connector`` through the registered route function (real console auth, real storage)."""
    import function_app  # noqa: F401 - registers the blueprints
    from functions.health import connector_state

    token = console_token(["Console.Read"])
    req = func.HttpRequest(method="GET", url="http://localhost/api/connector",
                           headers={"Authorization": f"Bearer {token}"}, body=b"")
    resp = await connector_state(req)
    assert resp.status_code == 200, resp.get_body()
    body: dict[str, Any] = json.loads(resp.get_body())
    return body["credential"]


async def _poll_all(service: EnrollmentService, tenants: list[str]) -> list[dict[str, Any]]:
    return [await service.run_poll(tid, reason="scheduled") for tid in tenants]


async def _assert_never_quarantined(service: EnrollmentService, tenants: list[str]) -> None:
    for tid in tenants:
        record = await service.tenants.get(tid)
        assert record is not None
        q = record.status.get("quarantine", {})
        assert int(q.get("failures") or 0) == 0 and q.get("state") != "quarantined", q


async def test_a_missing_secret_is_one_connector_state_and_the_fix_heals_every_tenant(
    sim: Any, vault_container: Container, console_token: Any
) -> None:
    service = vault_container.service(build_enrollment_service)
    summaries = [sim.create_tenant("small", seed=s) for s in (1101, 1102)]
    tenants = [s["tenant_id"] for s in summaries]
    for summary in summaries:
        await provision(service, summary, guard_max_percent=100.0)

    for _ in range(QUARANTINE_AFTER + 2):
        results = await _poll_all(service, tenants)
        assert [r["result"] for r in results] == ["failed", "failed"]
        assert {r["reason"] for r in results} == {"connector_credential_unavailable"}
    await _assert_never_quarantined(service, tenants)
    state = await _connector_state(console_token)
    assert state["state"] == "credential_failed" and state["reason"] == "connector_credential_unavailable"

    # The operator fixes the vault; the next poll of every tenant succeeds and the connector state clears.
    sim.call("POST", "/_sim/keyvault/secrets",
             json={"name": vault_container.settings.secret_name, "value": sim.info["connector"]["client_secret"]})
    results = await _poll_all(service, tenants)
    assert [r["result"] for r in results] == ["ok", "ok"], results
    assert (await _connector_state(console_token))["state"] == "ok"
    await _assert_never_quarantined(service, tenants)


async def test_a_malformed_certificate_is_a_connector_fault_not_a_tenant_consent_problem(
    sim: Any, module_env: dict[str, str], console_token: Any
) -> None:
    c = await _container(sim, module_env, CONNECTOR_CREDENTIAL_TYPE="certificate")
    use_container(c)
    try:
        sim.call("POST", "/_sim/keyvault/secrets", json={"name": c.settings.secret_name, "value": "bm90IGEgY2VydA=="})
        service = c.service(build_enrollment_service)
        summary = sim.create_tenant("small", seed=1103)
        await provision(service, summary, guard_max_percent=100.0)
        for _ in range(QUARANTINE_AFTER + 1):
            result = await service.run_poll(summary["tenant_id"], reason="scheduled")
            assert result["result"] == "failed" and result["reason"] == "connector_credential_unavailable"
        await _assert_never_quarantined(service, [summary["tenant_id"]])
        assert (await _connector_state(console_token))["state"] == "credential_failed"
    finally:
        use_container(None)
        await c.close()
        await c.secret_source.close()  # type: ignore[attr-defined]


async def test_a_heartbeat_that_must_provision_blames_the_connector_not_the_tenant(
    sim: Any, vault_container: Container
) -> None:
    """A heartbeat that has to (re)provision first meets the broken vault: the tenant's Intune state is untouched
    (no ``provisioning_failed`` / ``intune_unavailable``), its heartbeat backoff does not grow, and the first run
    after the fix provisions and beats."""
    from shared_code.intune.wiring import build_intune

    intune = vault_container.service(build_intune)
    summary = sim.create_tenant("small", seed=1104)
    tid = summary["tenant_id"]
    await provision(intune, summary)
    for _ in range(QUARANTINE_AFTER + 1):
        record = await intune.tenants.get(tid)
        assert record is not None
        assert await intune.heartbeat.beat(record) == "failed"
    record = await intune.tenants.get(tid)
    assert record is not None
    assert record.status.get("intune", {}).get("state") != "provisioning_failed", record.status.get("intune")
    beat = record.status["heartbeat"]
    assert beat["lastError"].startswith("connector_credential") and int(beat["consecutiveFailures"]) == 0, beat

    sim.call("POST", "/_sim/keyvault/secrets",
             json={"name": vault_container.settings.secret_name, "value": sim.info["connector"]["client_secret"]})
    assert await intune.heartbeat.beat(record) == "sent"
    record = await intune.tenants.get(tid)
    assert record is not None and record.status["intune"]["state"] == "provisioned"
