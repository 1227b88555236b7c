"""The auth matrix: every way a console bearer token can be wrong, built from any token minter.

``mint(roles, **claim_overrides) -> str`` is either the local OIDC stub or the simulator's
``POST /_sim/tokens/console``; tampered variants (bad signature, unknown kid, alg=none, HS256 with the public key)
are derived from a valid token here, so both sources share one list.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

Mint = Callable[..., str]
READ = "Console.Read"
MANAGE = "Console.Manage"


@dataclass(frozen=True)
class BadAuth:
    name: str
    header: str | None  # the Authorization header value (None = absent)
    status: int  # 401 or 403


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _parts(token: str) -> tuple[dict, dict, str]:
    h, p, s = token.split(".")
    pad = lambda x: x + "=" * (-len(x) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p))), s


def with_header(token: str, **header_changes: object) -> str:
    """Same payload and signature, a changed JOSE header (so the signature no longer matches either)."""
    header, _, sig = _parts(token)
    header.update(header_changes)
    payload_b64 = token.split(".")[1]
    return f"{_b64u(json.dumps(header).encode())}.{payload_b64}.{sig}"


def bad_signature(token: str) -> str:
    """Flip bits in the signature."""
    h, p, s = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[len(raw) // 2] ^= 0xFF
    return f"{h}.{p}.{_b64u(bytes(raw))}"


def alg_none(token: str) -> str:
    """The same claims, unsigned (alg=none)."""
    header, payload, _ = _parts(token)
    header["alg"] = "none"
    return f"{_b64u(json.dumps(header).encode())}.{_b64u(json.dumps(payload).encode())}."


def hs256_with(token: str, secret: bytes) -> str:
    """The same claims signed HS256 with ``secret`` (the classic public-key-as-HMAC-secret confusion)."""
    import hmac
    from hashlib import sha256

    header, payload, _ = _parts(token)
    header["alg"] = "HS256"
    signing_input = f"{_b64u(json.dumps(header).encode())}.{_b64u(json.dumps(payload).encode())}"
    sig = hmac.new(secret, signing_input.encode(), sha256).digest()
    return f"{signing_input}.{_b64u(sig)}"


def bad_auth_cases(mint: Mint, *, write: bool, hmac_secret: bytes = b"x" * 32) -> list[BadAuth]:
    """Every rejected form for one route. ``write`` adds "read role on a write route" (403)."""
    now = int(time.time())
    good = mint([MANAGE])
    cases = [
        BadAuth("no token", None, 401),
        BadAuth("empty header", "", 401),
        BadAuth("wrong scheme", "Basic " + _b64u(b"user:pass"), 401),
        BadAuth("malformed", "Bearer not-a-jwt", 401),
        BadAuth("two tokens", f"Bearer {good} {good}", 401),
        BadAuth("expired", "Bearer " + mint([MANAGE], exp=now - 3600, nbf=now - 7200, iat=now - 7200), 401),
        BadAuth("expired beyond leeway", "Bearer " + mint([MANAGE], exp=now - 90, nbf=now - 3600), 401),
        BadAuth("not yet valid", "Bearer " + mint([MANAGE], nbf=now + 600, iat=now + 600, exp=now + 4200), 401),
        BadAuth("wrong aud", "Bearer " + mint([MANAGE], aud="api://someone-else"), 401),
        BadAuth("wrong iss", "Bearer " + mint([MANAGE], iss="https://evil.example/tenant/v2.0"), 401),
        BadAuth("wrong tid", "Bearer " + mint([MANAGE], tid="00000000-0000-0000-0000-0000000000aa"), 401),
        BadAuth("no tid", "Bearer " + mint([MANAGE], tid=None), 401),
        BadAuth("bad signature", "Bearer " + bad_signature(good), 401),
        BadAuth("unknown kid", "Bearer " + with_header(good, kid="unknown-kid-0001"), 401),
        BadAuth("alg none", "Bearer " + alg_none(good), 401),
        BadAuth("alg HS256", "Bearer " + hs256_with(good, hmac_secret), 401),
        # The token policy (issue 11 §3): the calling client is allow-listed, ID tokens and delegated tokens are
        # refused by an app-only deployment, both audience forms are the API's own (a foreign API's is not).
        BadAuth("client not allowed", "Bearer " + mint([MANAGE], azp="00000000-0000-0000-0000-00000000beef"), 401),
        BadAuth("no client", "Bearer " + mint([MANAGE], azp=None, appid=None), 401),
        BadAuth("ID token", "Bearer " + mint([MANAGE], nonce="n-0S6_WzA2Mj", idtyp=None), 401),
        BadAuth("delegated token", "Bearer " + mint([MANAGE], scp="Console.SignIn", idtyp=None), 401),
        BadAuth("idtyp user without scp", "Bearer " + mint([MANAGE], idtyp="user"), 401),
        BadAuth("bare id of another API", "Bearer " + mint([MANAGE], aud="00000000-0000-0000-0000-0000000000a1"), 401),
        BadAuth("no roles", "Bearer " + mint([]), 403),
        BadAuth("foreign role", "Bearer " + mint(["Console.Admin"]), 403),
    ]
    if write:
        cases.append(BadAuth("read role on write route", "Bearer " + mint([READ]), 403))
    return cases
