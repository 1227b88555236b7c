"""A tiny HTTPS OpenID provider for console-auth tests: OIDC document + JWKS, and a token minter.

It mirrors what Entra publishes for a tenant (``/{tid}/v2.0/.well-known/openid-configuration`` → ``jwks_uri``)
with keys generated in the test, so the validator is exercised without the simulator.
"""

from __future__ import annotations

import base64
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
import trustme
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "api://mtd-connector"
# The console app the stub's tokens are issued to (azp); tests allow-list it in CONSOLE_ALLOWED_CLIENT_IDS.
CONSOLE_CLIENT_ID = "5f2b3c4d-0000-4000-8000-00000000c0de"


def _b64u_int(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass
class Key:
    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def generate(cls) -> Key:
        return cls(kid=uuid.uuid4().hex, private=rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        pub = self.private.public_key().public_numbers()
        return {"kty": "RSA", "use": "sig", "kid": self.kid, "n": _b64u_int(pub.n), "e": _b64u_int(pub.e)}


@dataclass
class OidcStub:
    """Serves metadata for one tenant over HTTPS (test CA) and mints tokens like Entra's v2 endpoint."""

    tenant_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    keys: list[Key] = field(default_factory=lambda: [Key.generate()])
    base_url: str = ""
    ca_path: str = ""
    metadata_hits: int = 0
    jwks_hits: int = 0
    down: bool = False
    # The v1 issuer the tenant's v1 document names ({tid} is replaced); a sovereign cloud has another host.
    v1_issuer_template: str = "https://sts.windows.net/{tid}/"
    _runner: web.AppRunner | None = None

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/{self.tenant_id}/v2.0"

    async def start(self, tmp_dir: str) -> OidcStub:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_path = f"{tmp_dir}/oidc-ca.pem"
        ca.cert_pem.write_to_path(self.ca_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        app = web.Application()
        app.router.add_get("/{tid}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_get("/{tid}/.well-known/openid-configuration", self._metadata_v1)
        app.router.add_get("/{tid}/discovery/v2.0/keys", self._jwks)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"https://localhost:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_hits += 1
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        tid = request.match_info["tid"]
        return web.json_response({
            "issuer": f"{self.base_url}/{tid}/v2.0",
            "jwks_uri": f"{self.base_url}/{tid}/discovery/v2.0/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
        })

    async def _metadata_v1(self, request: web.Request) -> web.Response:
        if self.down:
            return web.json_response({"error": "temporarily_unavailable"}, status=503)
        tid = request.match_info["tid"]
        return web.json_response({
            "issuer": self.v1_issuer_template.format(tid=tid),
            "jwks_uri": f"{self.base_url}/{tid}/discovery/keys",
        })

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        return web.json_response({"keys": [k.jwk() for k in self.keys]})

    def rotate(self, drop_old: bool = False) -> Key:
        new = Key.generate()
        self.keys = [new] if drop_old else [*self.keys, new]
        return new

    def claims(self, roles: list[str] | None = None, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": AUDIENCE, "iss": self.issuer, "iat": now, "nbf": now, "exp": now + 3600,
            "tid": self.tenant_id, "oid": str(uuid.uuid4()), "sub": "console-app", "azp": CONSOLE_CLIENT_ID,
            "ver": "2.0", "roles": roles if roles is not None else ["Console.Read"],
        }
        for k, v in overrides.items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        return claims

    def token(self, roles: list[str] | None = None, *, key: Key | None = None, kid: str | None = None,
              alg: str = "RS256", **overrides: Any) -> str:
        key = key or self.keys[-1]
        return jwt.encode(self.claims(roles, **overrides), key.private, algorithm=alg,
                          headers={"kid": kid or key.kid, "typ": "JWT"})
