"""Intune partner service discovery per customer tenant: each service found, cached and re-discovered on its own.

Flow (reference/intune.md §1–2, Fleet): Graph ``GET /servicePrincipals?$filter=appId eq '0000000a-…'`` → the Intune
service principal's id → ``GET /servicePrincipals/{id}/endpoints`` → the entries whose ``providerName`` equals the
configured provider of each service → their ``uri`` are the service base URLs. Two services, used independently:

* ``tenant`` (``INTUNE_TENANT_SYNC_PROVIDER``): provisioning (``PartnerTenants``) and heartbeats;
* ``device`` (``INTUNE_DEVICE_SYNC_PROVIDER``): DataUploadMessages (threat levels, App Sync inventory).

A tenant whose service principal lists only one of them keeps what that one serves: a missing device service never
stops provisioning or heartbeats (Intune would mark the connector unresponsive), it makes threat levels and inventory
answer ``device_service_unavailable``. Each service's outcome is cached on its own — a found URL for
``INTUNE_DISCOVERY_TTL_SECONDS`` (Fleet: 24 h), a missing one for ``MISSING_RECHECK_SECONDS`` — and mirrored into the
tenant's ``intune`` status (``services``), so a cold instance reuses a fresh discovery and the console sees each
service's state. A 401/404/unreachable answer re-discovers only the service that gave it.
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
from shared_code.intune.status import IntuneServiceStatus, IntuneStatusWriter, intune_of, iso, parse_iso
from shared_code.permissions import call
from shared_code.settings import Settings
from shared_code.tenants import TenantRepository

INTUNE_APP_ID = "0000000a-0000-0000-c000-000000000000"  # Intune's first-party app id (intune.md §1)
TENANT_SERVICE = "tenant"
DEVICE_SERVICE = "device"
SERVICES = (TENANT_SERVICE, DEVICE_SERVICE)
# A service the tenant's Intune service principal did not list is looked for again after this long, not after the
# 24 h TTL: an admin who fixes the tenant should not wait a day, and a console reporting threat levels for such a
# tenant costs Graph at most two discovery requests per interval.
MISSING_RECHECK_SECONDS = 300
T = TypeVar("T")


async def read_intune_endpoints(graph: GraphClient) -> tuple[list[dict[str, Any]], str]:
    """The Intune service principal's endpoints as ``{"providerName", "uri"}`` dicts, or ``([], why)`` without one.

    Two low-volume calls through msgraph-sdk's typed builders (``GraphClient.typed``; docs/architecture.md,
    "msgraph-sdk"), imported here so no route's cold start pays for the SDK:
    ``GET /servicePrincipals?$filter=appId eq '0000000a-…'&$select=id,appId`` (``service_principals.get``) and
    ``GET /servicePrincipals/{id}/endpoints`` (``service_principals.by_service_principal_id(id).endpoints.get``,
    following ``@odata.nextLink``). Permission ``Application.Read.All``.

    Raises:
        PermissionMissingError, ConsentRequiredError, RetriableError, FatalError: see ``GraphClient.typed``;
        FatalError also for a repeated nextLink.
    """
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.service_principals.service_principals_request_builder import (
        ServicePrincipalsRequestBuilder,
    )

    sp_call = call("graph.intune_service_principal")
    query = ServicePrincipalsRequestBuilder.ServicePrincipalsRequestBuilderGetQueryParameters(
        filter=f"appId eq '{INTUNE_APP_ID}'", select=["id", "appId"]
    )
    config = RequestConfiguration(query_parameters=query)
    principals = await graph.typed(lambda sdk: sdk.service_principals.get(request_configuration=config),
                                   permission=sp_call.permission)
    matches = [sp for sp in (principals.value if principals else None) or []
               if str(sp.app_id or "").lower() == INTUNE_APP_ID]
    if not matches:
        return [], f"no Intune service principal (appId {INTUNE_APP_ID}) in the tenant: is Intune licensed?"
    sp_id = str(matches[0].id)
    ep_call = call("graph.service_principal_endpoints")
    page = await graph.typed(lambda sdk: sdk.service_principals.by_service_principal_id(sp_id).endpoints.get(),
                             permission=ep_call.permission)
    endpoints: list[dict[str, Any]] = []
    seen: set[str] = set()
    while page is not None:
        endpoints.extend({"providerName": ep.provider_name, "uri": ep.uri} for ep in page.value or [])
        next_link = page.odata_next_link
        if not next_link:
            break
        if next_link in seen:
            msg = f"Graph repeated a nextLink: paging loop on /servicePrincipals/{sp_id}/endpoints"
            raise FatalError(msg)
        seen.add(next_link)
        page = await graph.typed(_next_endpoints_page(sp_id, next_link), permission=ep_call.permission)
    return endpoints, ""


def _next_endpoints_page(sp_id: str, url: str) -> Callable[[Any], Awaitable[Any]]:
    def request(sdk: Any) -> Awaitable[Any]:
        return sdk.service_principals.by_service_principal_id(sp_id).endpoints.with_url(url).get()  # type: ignore[no-any-return]

    return request


class IntuneServiceMissingError(FatalError):
    """The tenant's Intune service principal lists no usable endpoint for a partner service (or there is none).

    Attributes:
        service: ``tenant`` or ``device``.
        provider: the ``providerName`` looked for.
    """

    def __init__(self, message: str, *, service: str = TENANT_SERVICE, provider: str = "") -> None:
        super().__init__(message, status=None, code=f"{service}_service_unavailable")
        self.service = service
        self.provider = provider


@dataclass(frozen=True)
class IntuneEndpoint:
    """One partner service of one tenant as last discovered: its base URL, or (``url`` empty) why there is none."""

    service: str
    provider: str
    url: str
    discovered_at: float
    problem: str = ""

    @property
    def available(self) -> bool:
        """Whether the service can be called."""
        return bool(self.url)

    def status(self) -> IntuneServiceStatus:
        """The form mirrored into the ``intune`` status section (``services.<service>``)."""
        return {
            "state": "available" if self.available else "unavailable",
            "provider": self.provider,
            "url": self.url or None,
            "discoveredAt": iso(self.discovered_at),
            "problem": self.problem or None,
        }

    @classmethod
    def from_status(cls, service: str, section: Any) -> IntuneEndpoint | None:
        """Read back :meth:`status` (None when absent or unreadable)."""
        if not isinstance(section, dict):
            return None
        discovered = parse_iso(section.get("discoveredAt"))
        if discovered is None or not section.get("provider"):
            return None
        return cls(service, str(section["provider"]), str(section.get("url") or ""), discovered,
                   str(section.get("problem") or ""))


class DiscoveryService:
    """Finds and caches each tenant's Intune partner service URLs, one service at a time."""

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
        self._status = IntuneStatusWriter(tenants)
        self._now = now
        self._cache: dict[tuple[str, str], IntuneEndpoint] = {}
        self.discoveries = 0  # Graph discoveries performed (tests count cache hits by it)

    def provider(self, service: str) -> str:
        """The configured ``providerName`` of ``service``."""
        if service == TENANT_SERVICE:
            return self._settings.intune_tenant_provider
        return self._settings.intune_device_provider

    def _fresh(self, endpoint: IntuneEndpoint | None) -> bool:
        if endpoint is None or endpoint.provider != self.provider(endpoint.service):
            return False
        ttl = self._settings.intune_discovery_ttl_seconds
        if not endpoint.available:
            ttl = min(ttl, MISSING_RECHECK_SECONDS)
        return self._now() - endpoint.discovered_at < ttl

    async def _forget_token(self, tenant_id: str) -> None:
        if self._forget is not None:
            await self._forget(tenant_id)

    def invalidate(self, tenant_id: str, service: str | None = None) -> None:
        """Forget a tenant's URL of ``service`` (of both when None); the next use re-discovers."""
        for name in SERVICES if service is None else (service,):
            self._cache.pop((tenant_id, name), None)

    async def endpoint(self, tenant_id: str, service: str, *, refresh: bool = False) -> IntuneEndpoint:
        """The tenant's URL of one partner service, discovering it when not cached or stale.

        Raises:
            IntuneServiceMissingError: the tenant's Intune service principal lists no usable endpoint for it.
            PermissionMissingError: Application.Read.All not granted.
            ConsentRequiredError, RetriableError: token or Graph trouble.
        """
        found = await self._lookup(tenant_id, service, refresh=refresh)
        if not found.available:
            raise IntuneServiceMissingError(found.problem, service=service, provider=found.provider)
        return found

    async def _lookup(self, tenant_id: str, service: str, *, refresh: bool) -> IntuneEndpoint:
        key = (tenant_id, service)
        if not refresh:
            cached = self._cache.get(key)
            if cached is not None and self._fresh(cached):
                return cached
            persisted = await self._persisted(tenant_id, service)
            if persisted is not None and self._fresh(persisted):
                self._cache[key] = persisted
                return persisted
        found = await self._discover(tenant_id)
        # One Graph read answers for both services. The requested one takes this answer; the other only when
        # nothing fresh is known of it, so a re-discovery for one service never overwrites what works for the other.
        for name, endpoint in found.items():
            current = self._cache.get((tenant_id, name))
            if name == service or current is None or not self._fresh(current):
                self._cache[(tenant_id, name)] = endpoint
        await self._status.intune(tenant_id, {
            "services": {name: self._cache[(tenant_id, name)].status() for name in SERVICES},
            "discoveredAt": iso(found[service].discovered_at),
        })
        return self._cache[key]

    async def _persisted(self, tenant_id: str, service: str) -> IntuneEndpoint | None:
        record = await self._tenants.get(tenant_id)
        services = intune_of(record).get("services") if record else None
        found = IntuneEndpoint.from_status(service, services.get(service)) if isinstance(services, dict) else None
        # A stored URL outside the Intune service domains (tampered, or from another cloud) is rediscovered.
        if found is not None and found.available and not self._allowed(found.url):
            return None
        return found

    def _allowed(self, url: str) -> bool:
        """Whether a service URL lies under the configured cloud's Intune service domains."""
        return intune_url_allowed(url, self._settings.intune_service_domains)

    def service_url(self, endpoints: list[dict[str, Any]], provider: str) -> tuple[str, str]:
        """``(url, "")`` for the base URL the Intune service principal's ``endpoints`` list for ``provider``, or
        ``("", why)`` when none is usable.

        The one place a discovered URL is judged: https only, and under ``INTUNE_SERVICE_DOMAINS`` (the URL receives
        the connector's Intune token).
        """
        uris = [str(e.get("uri", "")) for e in endpoints
                if str(e.get("providerName", "")).lower() == provider.lower()]
        https = [u for u in uris if u.startswith("https://")]
        if not https:
            return "", f"the Intune service principal lists no https endpoint for provider {provider}"
        for uri in https:
            if self._allowed(uri):
                return uri, ""
        domains = ", ".join(self._settings.intune_service_domains)
        return "", f"the endpoint of provider {provider} lies outside the Intune service domains ({domains})"

    async def _discover(self, tenant_id: str) -> dict[str, IntuneEndpoint]:
        """Find the tenant's partner service URLs in Graph (no cache): one :class:`IntuneEndpoint` per service.

        Endpoints: ``GET /servicePrincipals?$filter=appId eq '0000000a-0000-0000-c000-000000000000'&$select=id,appId``
        then ``GET /servicePrincipals/{id}/endpoints`` (paged), both v1.0 with the connector's app token.
        Permission: ``Application.Read.All`` (calls ``graph.intune_service_principal``,
        ``graph.service_principal_endpoints``). No Intune service principal, or no usable endpoint for a configured
        provider (https, under ``INTUNE_SERVICE_DOMAINS``: the token is never sent elsewhere), is an answer (that
        service unavailable), not an error.

        Raises:
            PermissionMissingError: 403, Application.Read.All not granted.
            ConsentRequiredError: no token for the tenant (consent missing or revoked).
            RetriableError: Graph or the token endpoint unavailable after the retries.
            FatalError: another Graph 4xx, or a nextLink loop.
        """
        self.discoveries += 1
        graph = self._graph_for(tenant_id)
        try:
            endpoints, missing_sp = await read_intune_endpoints(graph)
        finally:
            await graph.aclose()
        now = self._now()
        found: dict[str, IntuneEndpoint] = {}
        for service in SERVICES:
            provider = self.provider(service)
            url, problem = ("", missing_sp) if missing_sp else self.service_url(endpoints, provider)
            found[service] = IntuneEndpoint(service, provider, url, now, problem)
        return found

    async def call_service(self, tenant_id: str, service: str, action: Callable[[str], Awaitable[T]]) -> T:
        """Run an Intune call with the base URL of ``service``; on 401/404/unreachable re-discover it once and retry.

        Fleet notes Intune "intermittently rejects freshly-issued access tokens" and retries once (intune.md §2);
        a URL that moved answers 404 or stops resolving. A second 401 after re-discovery means consent is gone.

        Raises:
            IntuneServiceMissingError: the tenant lists no endpoint for ``service``.
            ConsentRequiredError: Intune still rejects the token after re-discovery.
            whatever ``action`` raises otherwise.
        """
        endpoint = await self.endpoint(tenant_id, service)
        try:
            return await action(endpoint.url)
        except IntuneUnauthorizedError:
            # Fleet clears its token cache on 401 before the one retry (reference/intune.md §2).
            await self._forget_token(tenant_id)
            self.invalidate(tenant_id, service)
        except (IntuneNotFoundError, IntuneUnreachableError):
            self.invalidate(tenant_id, service)
        endpoint = await self.endpoint(tenant_id, service, refresh=True)
        try:
            return await action(endpoint.url)
        except IntuneUnauthorizedError:
            raise ConsentRequiredError(
                f"Intune rejects the connector's token for tenant {tenant_id} (admin consent for the Intune API?)"
            ) from None
