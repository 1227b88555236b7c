"""Intune partner service discovery per customer tenant, cached, with re-discovery on 401/404/DNS failure.

Flow (reference/intune.md §1–2, Fleet): Graph ``GET /servicePrincipals?$filter=appId eq '0000000a-…'`` → the Intune
service principal's id → ``GET /servicePrincipals/{id}/endpoints`` → the entries whose ``providerName`` equals the
configured tenant/device data-sync provider names → their ``uri`` are the service base URLs. URLs are cached in
memory for ``INTUNE_DISCOVERY_TTL_SECONDS`` (Fleet: 24 h) and mirrored into the tenant's ``intune`` status so a
cold instance reuses a fresh discovery instead of calling Graph again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from shared_code.adapters.graph import GraphClient
from shared_code.adapters.intune import (
    IntuneNotFoundError,
    IntuneUnauthorizedError,
    IntuneUnreachableError,
    intune_url_allowed,
)
from shared_code.errors import ConsentRequiredError, FatalError
from shared_code.intune.status import INTUNE, iso, parse_iso
from shared_code.permissions import call
from shared_code.settings import Settings
from shared_code.tenants import TenantRepository

INTUNE_APP_ID = "0000000a-0000-0000-c000-000000000000"  # Intune's first-party app id (intune.md §1)
T = TypeVar("T")


class IntuneServiceMissingError(FatalError):
    """The tenant has no Intune service principal, or its endpoints lack a configured provider."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, code="intune_service_missing")


@dataclass(frozen=True)
class IntuneEndpoints:
    """Discovered partner service base URLs of one tenant."""

    tenant_url: str
    device_url: str
    discovered_at: float


class DiscoveryService:
    """Finds and caches each tenant's Intune partner service URLs."""

    def __init__(
        self,
        *,
        settings: Settings,
        graph_for: Callable[[str], GraphClient],
        tenants: TenantRepository,
        now: Callable[[], float],
        forget_token: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._forget = forget_token
        self._graph_for = graph_for
        self._tenants = tenants
        self._now = now
        self._cache: dict[str, IntuneEndpoints] = {}
        self.discoveries = 0  # Graph discoveries performed (tests count cache hits by it)

    def _fresh(self, endpoints: IntuneEndpoints | None) -> bool:
        ttl = self._settings.intune_discovery_ttl_seconds
        return endpoints is not None and self._now() - endpoints.discovered_at < ttl

    async def _forget_token(self, tenant_id: str) -> None:
        if self._forget is not None:
            await self._forget(tenant_id)

    def invalidate(self, tenant_id: str) -> None:
        """Forget a tenant's URLs (next use re-discovers)."""
        self._cache.pop(tenant_id, None)

    async def endpoints(self, tenant_id: str, *, refresh: bool = False) -> IntuneEndpoints:
        """The tenant's partner service URLs, discovering them when not cached or stale.

        Raises:
            IntuneServiceMissingError: no Intune service principal / provider in the tenant.
            PermissionMissingError: Application.Read.All not granted.
            ConsentRequiredError, RetriableError: token or Graph trouble.
        """
        if not refresh:
            cached = self._cache.get(tenant_id)
            if self._fresh(cached):
                assert cached is not None
                return cached
            persisted = await self._persisted(tenant_id)
            if persisted is not None and self._fresh(persisted):
                self._cache[tenant_id] = persisted
                return persisted
        found = await self._discover(tenant_id)
        self._cache[tenant_id] = found
        await self._tenants.update_status(
            tenant_id,
            INTUNE,
            {"tenantUrl": found.tenant_url, "deviceUrl": found.device_url, "discoveredAt": iso(found.discovered_at)},
        )
        return found

    async def _persisted(self, tenant_id: str) -> IntuneEndpoints | None:
        record = await self._tenants.get(tenant_id)
        section = record.status.get(INTUNE, {}) if record else {}
        discovered = parse_iso(section.get("discoveredAt"))
        if discovered is None or not section.get("tenantUrl") or not section.get("deviceUrl"):
            return None
        found = IntuneEndpoints(str(section["tenantUrl"]), str(section["deviceUrl"]), discovered)
        # A stored copy outside the Intune service domains (tampered, or from another cloud) is rediscovered.
        return found if self._allowed(found.tenant_url) and self._allowed(found.device_url) else None

    def _allowed(self, url: str) -> bool:
        """Whether a service URL lies under the configured cloud's Intune service domains."""
        return intune_url_allowed(url, self._settings.intune_service_domains)

    async def _discover(self, tenant_id: str) -> IntuneEndpoints:
        """Find the tenant's partner service URLs in Graph (no cache).

        Endpoints: ``GET /servicePrincipals?$filter=appId eq '0000000a-0000-0000-c000-000000000000'&$select=id,appId``
        then ``GET /servicePrincipals/{id}/endpoints`` (paged), both v1.0 with the connector's app token.
        Permission: ``Application.Read.All`` (calls ``graph.intune_service_principal``,
        ``graph.service_principal_endpoints``).

        Raises:
            IntuneServiceMissingError: no Intune service principal, no https endpoint for a configured provider, or
                one outside ``INTUNE_SERVICE_DOMAINS`` (the token is never sent there).
            PermissionMissingError: 403, Application.Read.All not granted.
            ConsentRequiredError: no token for the tenant (consent missing or revoked).
            RetriableError: Graph or the token endpoint unavailable after the retries.
            FatalError: another Graph 4xx, or a nextLink loop.
        """
        self.discoveries += 1
        graph = self._graph_for(tenant_id)
        try:
            sp_call = call("graph.intune_service_principal")
            page = await graph.get_json(
                "/servicePrincipals",
                permission=sp_call.permission,
                params={"$filter": f"appId eq '{INTUNE_APP_ID}'", "$select": "id,appId"},
            )
            matches = [sp for sp in page.get("value", []) if str(sp.get("appId", "")).lower() == INTUNE_APP_ID]
            if not matches:
                msg = f"no Intune service principal (appId {INTUNE_APP_ID}) in the tenant: is Intune licensed?"
                raise IntuneServiceMissingError(msg)
            sp_id = str(matches[0]["id"])
            endpoints: list[dict[str, Any]] = []
            ep_call = call("graph.service_principal_endpoints")
            async for ep_page in graph.pages(f"/servicePrincipals/{sp_id}/endpoints", permission=ep_call.permission):
                endpoints.extend(ep_page.get("value", []))
        finally:
            await graph.aclose()
        by_provider = {str(e.get("providerName", "")).lower(): str(e.get("uri", "")) for e in endpoints}
        tenant_url = by_provider.get(self._settings.intune_tenant_provider.lower(), "")
        device_url = by_provider.get(self._settings.intune_device_provider.lower(), "")
        missing = [
            name
            for name, url in (
                (self._settings.intune_tenant_provider, tenant_url),
                (self._settings.intune_device_provider, device_url),
            )
            if not url.startswith("https://")
        ]
        if missing:
            msg = f"the Intune service principal lists no endpoint for provider(s) {', '.join(missing)}"
            raise IntuneServiceMissingError(msg)
        if not self._allowed(tenant_url) or not self._allowed(device_url):
            domains = ", ".join(self._settings.intune_service_domains)
            msg = f"the Intune service principal lists an endpoint outside the Intune service domains ({domains})"
            raise IntuneServiceMissingError(msg)
        return IntuneEndpoints(tenant_url, device_url, self._now())

    async def call_with_endpoints(self, tenant_id: str, action: Callable[[IntuneEndpoints], Awaitable[T]]) -> T:
        """Run an Intune call with the tenant's URLs; on 401/404/unreachable re-discover once and retry.

        Fleet notes Intune "intermittently rejects freshly-issued access tokens" and retries once (intune.md §2);
        a URL that moved answers 404 or stops resolving. A second 401 after re-discovery means consent is gone.

        Raises:
            ConsentRequiredError: Intune still rejects the token after re-discovery.
            whatever ``action`` raises otherwise.
        """
        endpoints = await self.endpoints(tenant_id)
        try:
            return await action(endpoints)
        except IntuneUnauthorizedError:
            # Fleet clears its token cache on 401 before the one retry (reference/intune.md §2).
            await self._forget_token(tenant_id)
            self.invalidate(tenant_id)
        except (IntuneNotFoundError, IntuneUnreachableError):
            self.invalidate(tenant_id)
        endpoints = await self.endpoints(tenant_id, refresh=True)
        try:
            return await action(endpoints)
        except IntuneUnauthorizedError:
            raise ConsentRequiredError(
                f"Intune rejects the connector's token for tenant {tenant_id} (admin consent for the Intune API?)"
            ) from None
