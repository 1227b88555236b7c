"""Token acquisition against the simulator's Entra: what each failure means for the connector."""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.adapters.credentials import TenantCredentials
from shared_code.adapters.graph import GRAPH_SCOPE
from shared_code.errors import ConsentRequiredError, CredentialRejectedError


class CountingSecret:
    """A secret source that counts reads and invalidations (rotation is read again after a rejection)."""

    def __init__(self, values: list[str]) -> None:
        self.values = values
        self.reads = 0
        self.invalidations = 0

    async def get_secret(self) -> str:
        value = self.values[min(self.reads, len(self.values) - 1)]
        self.reads += 1
        return value

    def invalidate(self) -> None:
        self.invalidations += 1


def _credentials(sim: Any, secret: CountingSecret) -> TenantCredentials:
    return TenantCredentials(
        client_id=sim.info["connector"]["client_id"], authority_host=sim.info["authority"], secret_source=secret
    )


@pytest.fixture(scope="module", autouse=True)
def _trust_the_simulator(connector_env: dict[str, str]) -> None:
    """connector_env exports the simulator's CA to the process environment (tls_options reads it)."""


@pytest.fixture(scope="module")
def tenant_id(sim: Any) -> str:
    return str(sim.create_tenant("small", seed=515)["tenant_id"])


async def test_a_wrong_secret_is_the_connectors_problem_not_the_customers(sim: Any, tenant_id: str) -> None:
    secret = CountingSecret(["not-the-secret"])
    credentials = _credentials(sim, secret)
    try:
        with pytest.raises(CredentialRejectedError, match="AADSTS7000215"):
            await credentials.get_token(tenant_id, GRAPH_SCOPE)
    finally:
        await credentials.close()
    assert secret.invalidations == 1  # re-read once (a rotation may have happened), then reported


async def test_a_rotated_secret_is_picked_up_after_one_rejection(sim: Any, tenant_id: str) -> None:
    secret = CountingSecret(["stale-secret", sim.info["connector"]["client_secret"]])
    credentials = _credentials(sim, secret)
    try:
        token = await credentials.get_token(tenant_id, GRAPH_SCOPE)
    finally:
        await credentials.close()
    assert token.count(".") == 2 and secret.invalidations == 1


async def test_revoked_consent_is_the_customers_problem(sim: Any) -> None:
    tid = str(sim.create_tenant("small", seed=516)["tenant_id"])
    sim.call("DELETE", "/_sim/consent", params={"tenant_id": tid, "app_id": sim.info["connector"]["client_id"]})
    credentials = _credentials(sim, CountingSecret([sim.info["connector"]["client_secret"]]))
    try:
        with pytest.raises(ConsentRequiredError) as raised:
            await credentials.get_token(tid, GRAPH_SCOPE)
    finally:
        await credentials.close()
    assert raised.value.aadsts is not None


async def test_forgetting_a_tenant_fetches_a_fresh_token_without_breaking_holders(sim: Any, tenant_id: str) -> None:
    credentials = _credentials(sim, CountingSecret([sim.info["connector"]["client_secret"]]))
    try:
        held = await credentials.get_token(tenant_id, GRAPH_SCOPE)
        old = credentials.credential_for(tenant_id)
        await credentials.forget(tenant_id)
        fresh = await credentials.get_token(tenant_id, GRAPH_SCOPE)
        assert old is not None and credentials.credential_for(tenant_id) is not old
        # A coroutine still holding the retired credential can keep using it until shutdown.
        assert (await old.get_token(GRAPH_SCOPE)).token == held
    finally:
        await credentials.close()
    assert fresh.count(".") == 2


async def test_every_tenants_credential_sends_on_one_shared_session(sim: Any, tenant_id: str) -> None:
    others = [str(sim.create_tenant("small", seed=seed)["tenant_id"]) for seed in (517, 518)]
    credentials = _credentials(sim, CountingSecret([sim.info["connector"]["client_secret"]]))
    try:
        for tid in (tenant_id, *others):
            assert await credentials.get_token(tid, GRAPH_SCOPE)
        session = credentials._session
        assert session is not None and not session.closed
        # Three tenants' first tokens, three credentials (three token caches), one kept-alive connection to the token
        # endpoint: a session per credential held ~350 KiB per cached tenant (bench/notes/issue9.md).
        assert sum(len(held) for held in session.connector._conns.values()) == 1
        await credentials.forget(others[0])
        assert await credentials.get_token(others[0], GRAPH_SCOPE)  # a rebuilt credential shares the session too
        assert sum(len(held) for held in session.connector._conns.values()) == 1
    finally:
        await credentials.close()
    assert session.closed  # closed once, with the last credential
