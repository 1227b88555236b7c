"""Simulated Key Vault secrets: `GET /secrets/{name}[/{version}]`, `PUT /secrets/{name}` (set).

Bodies follow the Key Vault REST "SecretBundle" (https://learn.microsoft.com/rest/api/keyvault/secrets/get-secret):
`value`, `id` (`{vault}/secrets/{name}/{version}`), `attributes` (`enabled`, `created`, `updated`, `recoveryLevel`,
`recoverableDays`), `tags`. A missing secret is 404 `SecretNotFound`. Authentication (401 challenge) is done by the
core middleware (auth.py). Authorization (RBAC / access policies) is not modelled: any valid vault token may read.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from simulator.auth import INFO


@dataclass
class SecretVersion:
    version: str
    value: str
    created: int
    content_type: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    enabled: bool = True


class Vault:
    def __init__(self) -> None:
        self._secrets: dict[str, list[SecretVersion]] = {}
        self._lock = threading.Lock()

    def set(self, name: str, value: str, content_type: str | None = None,
            tags: dict[str, str] | None = None) -> SecretVersion:
        v = SecretVersion(uuid.uuid4().hex, value, int(time.time()), content_type, dict(tags or {}))
        with self._lock:
            self._secrets.setdefault(name.lower(), []).append(v)
        return v

    def get(self, name: str, version: str | None = None) -> SecretVersion | None:
        with self._lock:
            versions = self._secrets.get(name.lower())
            if not versions:
                return None
            if not version:
                return versions[-1]
            for v in versions:
                if v.version == version:
                    return v
            return None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._secrets)


def bundle(vault_url: str, name: str, v: SecretVersion) -> dict[str, Any]:
    out: dict[str, Any] = {
        "value": v.value,
        "id": f"{vault_url}/secrets/{name}/{v.version}",
        "attributes": {"enabled": v.enabled, "created": v.created, "updated": v.created,
                       # Soft delete is on by default with 90 days (azure.md §7).
                       "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
        "tags": v.tags,
    }
    if v.content_type:
        out["contentType"] = v.content_type
    return out


VAULT: web.AppKey[Vault] = web.AppKey("sim_vault", Vault)


def _kv_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _check_api_version(request: web.Request) -> web.Response | None:
    # Every Key Vault data-plane call carries api-version (https://learn.microsoft.com/rest/api/keyvault/).
    if not request.query.get("api-version"):
        return _kv_error(400, "BadParameter", "The request URI must contain the api-version query parameter.")
    return None


async def get_secret(request: web.Request) -> web.Response:
    bad = _check_api_version(request)
    if bad:
        return bad
    name = request.match_info["name"]
    version = request.match_info.get("version")
    v = request.app[VAULT].get(name, version)
    if v is None:
        # 404 SecretNotFound (Key Vault REST reference, get-secret error responses).
        what = f"{name}/{version}" if version else name
        return _kv_error(404, "SecretNotFound",
                         f"A secret with (name/id) {what} was not found in this key vault. If you recently deleted "
                         "this secret you may be able to recover it using the correct recovery command. For help "
                         "resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182")
    return web.json_response(bundle(request.app[INFO]["key_vault_url"], name, v))


async def set_secret(request: web.Request) -> web.Response:
    bad = _check_api_version(request)
    if bad:
        return bad
    try:
        body = await request.json()
    except ValueError:
        return _kv_error(400, "BadParameter", "The request body is not valid JSON.")
    if not isinstance(body, dict) or not isinstance(body.get("value"), str):
        return _kv_error(400, "BadParameter", "Property 'value' is required and must be a string.")
    name = request.match_info["name"]
    v = request.app[VAULT].set(name, body["value"], body.get("contentType"), body.get("tags"))
    return web.json_response(bundle(request.app[INFO]["key_vault_url"], name, v))


async def list_secrets(request: web.Request) -> web.Response:
    """`GET /secrets` (list secret properties, no values; one page — Key Vault pages with nextLink)."""
    bad = _check_api_version(request)
    if bad:
        return bad
    vault_url = request.app[INFO]["key_vault_url"]
    items = []
    for name in request.app[VAULT].names():
        v = request.app[VAULT].get(name)
        assert v is not None
        b = bundle(vault_url, name, v)
        items.append({"id": f"{vault_url}/secrets/{name}", "attributes": b["attributes"], "tags": b["tags"]})
    return web.json_response({"value": items, "nextLink": None})


def register(app: web.Application) -> None:
    app.router.add_get("/secrets", list_secrets)
    app.router.add_get("/secrets/{name}", get_secret)
    app.router.add_get("/secrets/{name}/", get_secret)
    app.router.add_get("/secrets/{name}/{version}", get_secret)
    app.router.add_put("/secrets/{name}", set_secret)
