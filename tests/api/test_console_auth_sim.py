"""JwtConsoleAuth against the simulator's Entra: real OIDC discovery + JWKS over HTTPS, simulator-minted tokens."""

from __future__ import annotations

from typing import Any

import pytest

from shared_code.adapters.console_auth import JwtConsoleAuth
from shared_code.errors import AuthenticationError, ForbiddenError
from shared_code.settings import Settings
from tests.api.tokens import MANAGE, READ, bad_auth_cases


def sim_mint(sim: Any):
    """mint(roles, **claim_overrides) through POST /_sim/tokens/console (null removes a claim)."""

    def mint(roles: list[str], **overrides: Any) -> str:
        claims: dict[str, Any] = {"roles": roles or None, **overrides}
        return str(sim.console_token([], claims=claims))

    return mint


@pytest.fixture(scope="module")
def sim_settings(connector_env: dict[str, str]) -> Settings:
    return Settings.from_env(connector_env)


async def test_simulator_tokens_pass_and_every_bad_form_is_refused(sim, sim_settings):
    auth = JwtConsoleAuth(sim_settings)  # default httpx client: trusts SSL_CERT_FILE (the simulator's CA)
    try:
        claims = await auth.authenticate("Bearer " + sim.console_token([READ]), READ)
        assert claims["tid"] == sim.info["console"]["tenant_id"] and claims["ver"] == "2.0"
        assert await auth.authenticate("Bearer " + sim.console_token([MANAGE]), MANAGE)
        assert await auth.authenticate("Bearer " + sim.console_token([MANAGE]), READ)
        for write in (False, True):
            for case in bad_auth_cases(sim_mint(sim), write=write):
                expected = AuthenticationError if case.status == 401 else ForbiddenError
                with pytest.raises(expected):
                    await auth.authenticate(case.header, MANAGE if write else READ)
        # One discovery for the session of checks, plus at most one forced refresh for the unknown kid.
        assert auth.metadata_fetches <= 2
    finally:
        await auth.close()


async def test_graph_token_for_a_customer_tenant_is_not_a_console_token(sim, sim_settings):
    """A v1 app token Entra issues for Graph (another audience, another tenant) must never open the console API."""
    tenant = sim.create_tenant("small", seed=5)["tenant_id"]
    graph_token = sim.call("POST", "/_sim/tokens/user", json={
        "tenant_id": tenant, "user_id": _first_user(sim, tenant), "scopes": ["User.Read"]})["access_token"]
    auth = JwtConsoleAuth(sim_settings)
    try:
        with pytest.raises(AuthenticationError):
            await auth.authenticate("Bearer " + graph_token, READ)
    finally:
        await auth.close()


def _first_user(sim: Any, tenant: str) -> str:
    truth = sim.truth(tenant, sim.call("GET", f"/_sim/tenants/{tenant}")["enrollment_groups"])
    owners = [d["ownerId"] for d in truth["devices"] if d.get("ownerId")]
    assert owners
    return str(owners[0])
