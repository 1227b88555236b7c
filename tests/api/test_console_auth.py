"""JwtConsoleAuth against keys generated in the test and a local HTTPS OIDC provider (tests/api/oidc_stub.py)."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization

from shared_code.adapters.console_auth import JwtConsoleAuth
from shared_code.errors import AuthenticationError, ForbiddenError, RetriableError
from shared_code.settings import Settings
from tests.api.oidc_stub import AUDIENCE, CONSOLE_CLIENT_ID, Key, OidcStub
from tests.api.tokens import MANAGE, READ, bad_auth_cases, with_header


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


CONNECTOR_CLIENT_ID = "0c0c0c0c-1111-4222-8333-444444444444"


def _settings(stub: OidcStub, **kw: str) -> Settings:
    return Settings(
        storage_connection="UseDevelopmentStorage=true",
        client_id=CONNECTOR_CLIENT_ID,
        client_secret="s",
        authority_host=kw.get("authority", stub.base_url),
        console_audience=kw.get("audience", AUDIENCE),
        console_tenant_id=kw.get("tenant", stub.tenant_id),
        console_allowed_client_ids=tuple(kw.get("clients", CONSOLE_CLIENT_ID).split(",")),
        console_token_kind=kw.get("kind", "app"),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def stub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OidcStub]:
    s = await OidcStub().start(str(tmp_path_factory.mktemp("oidc")))
    yield s
    await s.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def http(stub: OidcStub) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=stub.ca_path)) as client:
        yield client


def _auth(stub: OidcStub, http: httpx.AsyncClient, clock: FakeClock | None = None, **kw: str) -> JwtConsoleAuth:
    return JwtConsoleAuth(_settings(stub, **kw), http=http, clock=clock or FakeClock())


class TestValidTokens:
    async def test_read_token_passes_a_read_route_and_returns_claims(self, stub, http):
        claims = await _auth(stub, http).authenticate("Bearer " + stub.token([READ]), READ)
        assert claims["tid"] == stub.tenant_id and claims["roles"] == [READ]

    async def test_manage_implies_read(self, stub, http):
        auth = _auth(stub, http)
        assert await auth.authenticate("Bearer " + stub.token([MANAGE]), READ)
        assert await auth.authenticate("bearer " + stub.token([MANAGE]), MANAGE)

    async def test_v1_issuer_of_the_same_tenant_is_accepted(self, stub, http):
        token = stub.token([READ], iss=f"https://sts.windows.net/{stub.tenant_id}/", ver="1.0")
        assert await _auth(stub, http).authenticate("Bearer " + token, READ)

    async def test_v1_issuer_of_another_tenant_is_rejected(self, stub, http):
        token = stub.token([READ], iss="https://sts.windows.net/11111111-1111-1111-1111-111111111111/")
        with pytest.raises(AuthenticationError, match="issuer"):
            await _auth(stub, http).authenticate("Bearer " + token, READ)

    async def test_clock_skew_within_leeway_is_tolerated(self, stub, http):
        now = int(time.time())
        auth = _auth(stub, http)
        assert await auth.authenticate("Bearer " + stub.token([READ], exp=now - 30), READ)
        assert await auth.authenticate("Bearer " + stub.token([READ], nbf=now + 30), READ)

    async def test_metadata_is_fetched_once_for_many_requests(self, stub, http):
        auth = _auth(stub, http)
        for _ in range(20):
            await auth.authenticate("Bearer " + stub.token([READ]), READ)
        assert auth.metadata_fetches == 1


class TestRejectedTokens:
    @pytest.mark.parametrize("write", [False, True])
    async def test_matrix(self, stub, http, write):
        auth = _auth(stub, http)
        # The HS256 case signs with the PEM of the real public key: the key-confusion attack.
        pem = stub.keys[-1].private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        cases = bad_auth_cases(lambda roles, **o: stub.token(roles, **o), write=write, hmac_secret=pem)
        assert len(cases) == (25 if write else 24)
        for case in cases:
            expected = AuthenticationError if case.status == 401 else ForbiddenError
            with pytest.raises(expected) as info:
                await auth.authenticate(case.header, MANAGE if write else READ)
            message = str(info.value)
            # Messages are fixed strings: never the token nor any part of it.
            token_part = (case.header or "").split(" ")[-1]
            assert not token_part or token_part[:16] not in message, case.name
            assert "eyJ" not in message, case.name

    async def test_token_signed_by_a_key_of_another_issuer_with_a_known_kid_is_rejected(self, stub, http):
        forged = jwt.encode(stub.claims([MANAGE]), Key.generate().private, algorithm="RS256",
                            headers={"kid": stub.keys[-1].kid})
        with pytest.raises(AuthenticationError, match="signature"):
            await _auth(stub, http).authenticate("Bearer " + forged, READ)

    async def test_rs512_is_refused_even_with_a_valid_key(self, stub, http):
        with pytest.raises(AuthenticationError, match="algorithm"):
            await _auth(stub, http).authenticate("Bearer " + stub.token([READ], alg="RS512"), READ)

    async def test_oversized_token_is_refused_before_parsing(self, stub, http):
        with pytest.raises(AuthenticationError, match="too large"):
            await _auth(stub, http).authenticate("Bearer " + "a" * 20000, READ)

    async def test_unconfigured_api_accepts_nobody(self, stub, http):
        with pytest.raises(AuthenticationError, match="not configured"):
            await _auth(stub, http, audience="").authenticate("Bearer " + stub.token([READ]), READ)


class TestKeyRotation:
    async def test_unknown_kid_refreshes_once_then_rate_limits(self, stub, http):
        clock = FakeClock()
        auth = _auth(stub, http, clock)
        good = stub.token([READ])
        await auth.authenticate("Bearer " + good, READ)
        assert auth.metadata_fetches == 1
        with pytest.raises(AuthenticationError, match="unknown"):
            await auth.authenticate("Bearer " + with_header(good, kid="bogus-early"), READ)
        assert auth.metadata_fetches == 1  # inside the window of the first fetch: no request at all
        clock.t += 301
        for i in range(50):
            with pytest.raises(AuthenticationError, match="unknown"):
                await auth.authenticate("Bearer " + with_header(good, kid=f"bogus-{i}"), READ)
        # The first bogus kid forced one refresh; the other 49 were inside the rate-limit window.
        assert auth.metadata_fetches == 2

    async def test_rotated_key_is_picked_up_on_first_use_after_the_interval(self, stub, http):
        clock = FakeClock()
        auth = _auth(stub, http, clock)
        await auth.authenticate("Bearer " + stub.token([READ]), READ)
        new = stub.rotate()
        try:
            clock.t += 301  # beyond MIN_REFRESH_SECONDS since the last fetch
            assert await auth.authenticate("Bearer " + stub.token([READ], key=new), READ)
            assert auth.metadata_fetches == 2
        finally:
            stub.keys = [k for k in stub.keys if k is not new]

    async def test_dropped_key_stops_validating_after_scheduled_refresh(self, stub, http):
        clock = FakeClock()
        auth = _auth(stub, http, clock)
        old_token = stub.token([READ])
        await auth.authenticate("Bearer " + old_token, READ)
        saved = stub.keys
        stub.keys = [Key.generate()]
        try:
            clock.t += 13 * 3600  # past the 12 h scheduled refresh
            with pytest.raises(AuthenticationError, match="unknown"):
                await auth.authenticate("Bearer " + old_token, READ)
        finally:
            stub.keys = saved

    async def test_authority_outage_at_start_is_retriable_and_cached_keys_survive_later_outages(self, stub, http):
        clock = FakeClock()
        auth = _auth(stub, http, clock)
        stub.down = True
        try:
            with pytest.raises(RetriableError):
                await auth.authenticate("Bearer " + stub.token([READ]), READ)
            stub.down = False
            clock.t += 6
            assert await auth.authenticate("Bearer " + stub.token([READ]), READ)
            stub.down = True
            clock.t += 13 * 3600
            assert await auth.authenticate("Bearer " + stub.token([READ]), READ)
        finally:
            stub.down = False


async def test_default_http_client_trusts_ssl_cert_file(stub, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", stub.ca_path)
    auth = JwtConsoleAuth(_settings(stub))
    try:
        assert await auth.authenticate("Bearer " + stub.token([READ]), READ)
    finally:
        await auth.close()


class TestTokenPolicy:
    """Issue 11 §3: allow-listed clients, no ID tokens, one token kind per deployment, both audience forms, v1
    issuer from the authority's v1 document, bounded trust in cached keys."""

    async def test_both_audience_forms_of_the_api_are_accepted(self, stub, http):
        api = "7a7a7a7a-1111-4222-8333-000000000001"
        auth = _auth(stub, http, audience=f"api://{api}")
        assert await auth.authenticate("Bearer " + stub.token([READ], aud=api), READ)
        assert await auth.authenticate("Bearer " + stub.token([READ], aud=f"api://{api}"), READ)
        # A custom App ID URI is the connector app registration's: its client id is the other form.
        custom = _auth(stub, http)
        assert await custom.authenticate("Bearer " + stub.token([READ], aud=CONNECTOR_CLIENT_ID), READ)
        with pytest.raises(AuthenticationError, match="audience"):
            await custom.authenticate("Bearer " + stub.token([READ], aud=api), READ)

    async def test_delegated_operators_are_a_setting_and_exclude_app_tokens(self, stub, http):
        auth = _auth(stub, http, kind="delegated")
        operator = stub.token([MANAGE], scp="Console.Manage", idtyp="user")
        assert await auth.authenticate("Bearer " + operator, MANAGE)
        with pytest.raises(AuthenticationError, match="delegated"):
            await auth.authenticate("Bearer " + stub.token([MANAGE]), READ)
        with pytest.raises(AuthenticationError, match="app"):
            await _auth(stub, http).authenticate("Bearer " + operator, READ)

    async def test_id_tokens_and_foreign_clients_are_refused(self, stub, http):
        auth = _auth(stub, http)
        with pytest.raises(AuthenticationError, match="not an access token"):
            await auth.authenticate("Bearer " + stub.token([READ], nonce="abc", azp=None), READ)
        with pytest.raises(AuthenticationError, match="not allowed"):
            await auth.authenticate("Bearer " + stub.token([READ], azp="11111111-2222-4333-8444-555555555555"), READ)
        # v1 tokens name the client in appid.
        v1 = stub.token([READ], azp=None, appid=CONSOLE_CLIENT_ID, iss=f"https://sts.windows.net/{stub.tenant_id}/")
        assert await auth.authenticate("Bearer " + v1, READ)

    async def test_the_v1_issuer_comes_from_the_authority_not_a_hard_coded_host(self, stub, http):
        stub.v1_issuer_template = "https://sts.chinacloudapi.cn/{tid}/"
        try:
            auth = _auth(stub, http)
            sovereign = stub.token([READ], iss=f"https://sts.chinacloudapi.cn/{stub.tenant_id}/", ver="1.0")
            assert await auth.authenticate("Bearer " + sovereign, READ)
            public = stub.token([READ], iss=f"https://sts.windows.net/{stub.tenant_id}/", ver="1.0")
            with pytest.raises(AuthenticationError, match="issuer"):
                await auth.authenticate("Bearer " + public, READ)
        finally:
            stub.v1_issuer_template = "https://sts.windows.net/{tid}/"

    async def test_cached_keys_are_trusted_for_a_bounded_time_without_a_refresh(self, stub, http):
        clock = FakeClock()
        auth = _auth(stub, http, clock)
        assert await auth.authenticate("Bearer " + stub.token([READ]), READ)
        stub.down = True
        try:
            clock.t += 20 * 3600  # the scheduled refresh fails; the keys are still within their trust window
            assert await auth.authenticate("Bearer " + stub.token([READ]), READ)
            clock.t += 5 * 3600  # 25 h without a successful refresh
            with pytest.raises(RetriableError):
                await auth.authenticate("Bearer " + stub.token([READ]), READ)
            stub.down = False
            clock.t += 301
            assert await auth.authenticate("Bearer " + stub.token([READ]), READ)
        finally:
            stub.down = False

