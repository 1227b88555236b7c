"""Intune partner data-sync services client (MTD partner side), over httpx with the shared retry layer.

Wire format from the best public evidence (reference/intune.md §2, Fleet's compliance-partner integration):
OData-style keys ``Entity(guid'…')``, ``?api-version=`` per service, JSON bodies, ``Content`` of an upload is a JSON
*string* of an entity array. Service URLs come from discovery (shared_code/intune/discovery.py); api-versions and
provider names are settings because they are not public.

Tokens: client credentials for ``{INTUNE_RESOURCE}/.default`` from the connector's app credential. With the default
resource ``https://api.manage.microsoft.com/`` that is Fleet's double-slash scope
``https://api.manage.microsoft.com//.default``; azure-identity caches the token per credential and scope until
shortly before expiry.

Tokens go only to Intune: :meth:`IntuneClient._send`, the one place the token is attached, refuses a URL whose host
is not under the configured cloud's Intune service domains (``INTUNE_SERVICE_DOMAINS``, :func:`intune_url_allowed`);
discovery applies the same check to what Graph lists and to the copy kept in the tenant's status. Redirects are not
followed (httpx's default) and a 3xx is an error.

Status → taxonomy mapping happens once, in :func:`raise_for_intune`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from shared_code.adapters.credentials import TenantCredentials
from shared_code.adapters.http_retry import RetryTransport, UsageMeter
from shared_code.api_call import ApiCall
from shared_code.domain.timestamps import utc_iso
from shared_code.errors import (
    ConflictError,
    FatalError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
)
from shared_code.permissions import call

# Intune's answer when the MTD connector is Not Set Up / Unavailable and blocks threat and App Sync messages
# (mobile-threat-defense.md "since 2308/2309"; the error code is the simulator's — the real one is not public).
CONNECTOR_BLOCKED_CODES = frozenset({"PartnerConnectorNotEnabled"})
NOT_PROVISIONED_CODES = frozenset({"PartnerTenantNotProvisioned"})


class IntuneUnauthorizedError(FatalError):
    """Intune rejected the token (401): stale discovery or token; after a re-discovery, missing consent."""


class IntuneNotFoundError(NotFoundError):
    """Intune answered 404: the service URL moved (re-discover) or the message id is unknown."""


class IntuneUnreachableError(RetriableError):
    """DNS or connection failure to the discovered host after the retry layer gave up (re-discover)."""


class IntuneConnectorStateError(ConflictError):
    """Intune reports the MTD connector as Not Set Up / Unavailable (threat and App Sync messages are blocked).

    Attributes:
        state: the connector state Intune named (``notSetUp`` / ``unavailable``) or ``unknown``.
        detail: Intune's ErrorDetail.
    """

    def __init__(self, message: str, *, state: str, detail: str) -> None:
        super().__init__(message, status=409, code="connector_not_enabled")
        self.state = state
        self.detail = detail


class IntuneNotProvisionedError(ConflictError):
    """Intune says the partner tenant is not provisioned (heartbeat before PartnerTenants)."""


class IntuneUrlRejectedError(FatalError):
    """A service URL is not under the configured cloud's Intune service domains: the token is not sent."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=None, code="intune_url_rejected")


def intune_url_allowed(url: str, domains: Iterable[str]) -> bool:
    """Whether ``url`` may carry the Intune token: ``https``, no userinfo, host equal to or under one of ``domains``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme.lower() != "https" or not host or parts.username is not None or parts.password is not None:
        return False
    return any(host == d or host.endswith("." + d) for d in domains)


def _error_parts(response: httpx.Response) -> tuple[str, str]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    odata = body.get("odata.error") or body.get("error") or {}
    code = str(odata.get("code", "")) if isinstance(odata, dict) else ""
    message = body.get("ErrorDetail")
    if not message and isinstance(odata, dict):
        raw = odata.get("message")
        message = raw.get("value") if isinstance(raw, dict) else raw
    return code, str(message or "")[:500]


def _connector_state(detail: str) -> str:
    lowered = detail.lower()
    if "not set up" in lowered or "notsetup" in lowered:
        return "notSetUp"
    if "unavailable" in lowered:
        return "unavailable"
    return "unknown"


def raise_for_intune(response: httpx.Response, *, api_call: ApiCall) -> None:
    """Map a non-2xx Intune response to the error taxonomy (the only place that does).

    Raises:
        FatalError: a 3xx (redirects are not followed: the token stays with Intune).
        IntuneUnauthorizedError: 401.
        IntuneConnectorStateError: 403 with a connector-blocked code (Not Set Up / Unavailable).
        PermissionMissingError: any other 403 (``update_device_health`` not granted).
        IntuneNotFoundError: 404.
        IntuneNotProvisionedError: 400 PartnerTenantNotProvisioned.
        ConflictError: 409.
        RetriableError: 429/5xx left after the retry layer gave up.
        FatalError: any other 4xx.
    """
    status = response.status_code
    if 300 <= status < 400:
        raise FatalError(f"Intune answered {api_call.name} with a redirect (HTTP {status}); not followed",
                         status=status, code="redirect")
    if status < 400:
        return
    code, detail = _error_parts(response)
    if status == 401:
        raise IntuneUnauthorizedError(f"Intune rejected the token ({code or 401})", status=401, code=code)
    if status == 403 and code in CONNECTOR_BLOCKED_CODES:
        state = _connector_state(detail)
        raise IntuneConnectorStateError(f"Intune MTD connector is {state}", state=state, detail=detail)
    if status == 403:
        raise PermissionMissingError(f"Intune denied {api_call.name}: {code}", permission=api_call.permission)
    if status == 404:
        raise IntuneNotFoundError(f"Intune resource not found ({code})", status=404, code=code)
    if status == 400 and code in NOT_PROVISIONED_CODES:
        raise IntuneNotProvisionedError(detail or "partner tenant not provisioned", status=400, code=code)
    if status == 409:
        raise ConflictError(f"Intune conflict: {detail}", status=409, code=code)
    if status == 429 or status >= 500:
        raise RetriableError(f"Intune unavailable after retries ({status} {code})", status=status)
    raise FatalError(f"Intune rejected {api_call.name} ({status} {code}): {detail}", status=status, code=code)


def iso_now() -> str:
    """UTC now, ISO-8601 with milliseconds and ``Z``."""
    return utc_iso(timespec="milliseconds")


class IntuneClient:
    """Calls to the partner services of any customer tenant (one per process; URLs are passed per call)."""

    def __init__(
        self,
        *,
        credentials: TenantCredentials,
        resource: str,
        tenant_api_version: str,
        device_api_version: str,
        max_retries: int,
        service_domains: Iterable[str],
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        self._credentials = credentials
        self._domains = tuple(service_domains)
        # f"{resource}/.default": the double slash for the default resource is deliberate (Fleet, intune.md §2).
        self.scope = f"{resource}/.default"
        self._tenant_version = tenant_api_version
        self._device_version = device_api_version
        self.meter = UsageMeter()
        retry = RetryTransport(
            transport or httpx.AsyncHTTPTransport(retries=0),
            max_retries=max_retries,
            meter_for=lambda request: request.extensions.get("meter") or self.meter,
        )
        self._http = httpx.AsyncClient(
            transport=retry, timeout=httpx.Timeout(timeout_seconds, connect=10.0), trust_env=True
        )

    async def ensure_token(self, tenant_id: str) -> None:
        """Get (and cache) an Intune token now, so consent problems surface early.

        Raises:
            ConsentRequiredError, RetriableError: see TenantCredentials.get_token.
        """
        await self._credentials.get_token(tenant_id, self.scope)

    async def _send(
        self,
        tenant_id: str,
        method: str,
        url: str,
        api_call: ApiCall,
        body: dict[str, Any] | None = None,
        meter: UsageMeter | None = None,
    ) -> dict[str, Any]:
        # The one place the token is attached: checked again here, however the URL was stored or cached.
        if not intune_url_allowed(url, self._domains):
            raise IntuneUrlRejectedError(f"refused to send the Intune token outside {', '.join(self._domains)}")
        token = await self._credentials.get_token(tenant_id, self.scope)
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "client-request-id": str(uuid.uuid4()),
        }
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
            # Fleet sends Prefer: return-content so PUTs answer with the entity (intune.md §2).
            headers["Prefer"] = "return-content"
        request = self._http.build_request(
            method, url, headers=headers, content=content, extensions={"meter": meter} if meter else {}
        )
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise IntuneUnreachableError(f"Intune unreachable: {type(exc).__name__}") from None
        raise_for_intune(response, api_call=api_call)
        if not response.content:
            return {}
        try:
            parsed = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise FatalError(f"Intune answered {api_call.name} with non-JSON content") from None
        return parsed if isinstance(parsed, dict) else {"value": parsed}

    async def put_partner_tenant(
        self,
        tenant_url: str,
        tenant_id: str,
        *,
        provisioned: int,
        enrollment_url: str,
        remediation_url: str,
    ) -> dict[str, Any]:
        """Provision (``provisioned=1``) or deprovision (``2``) the partner tenant at Intune.

        Endpoint: ``PUT {tenant_url}/PartnerTenants(guid'{tenant}')?api-version={INTUNE_TENANT_API_VERSION}``
        (StatelessPartnerTenantDataSyncService), body ``{Provisioned, PartnerEnrollmentUrl, PartnerRemediationUrl}``.
        Permission: ``update_device_health`` (Intune application role; call ``intune.partner_tenants``).

        Returns:
            Intune's response entity (``Key``, ``Provisioned``, ``HttpStatusCode``, ``ErrorDetail`` …).

        Raises:
            ConsentRequiredError, RetriableError: no token for the tenant (see TenantCredentials.get_token).
            IntuneUnauthorizedError: 401 (stale URL or token; callers re-discover once).
            PermissionMissingError: 403, ``update_device_health`` not granted.
            IntuneNotFoundError: 404 (the service URL moved).
            IntuneUnreachableError: DNS/connection failure after the retries.
            RetriableError: 429/5xx after the retries. FatalError: other 4xx or a non-JSON answer.
        """
        url = f"{tenant_url.rstrip('/')}/PartnerTenants(guid'{tenant_id}')?api-version={self._tenant_version}"
        body = {
            "Provisioned": provisioned,
            "PartnerEnrollmentUrl": enrollment_url,
            "PartnerRemediationUrl": remediation_url,
        }
        return await self._send(tenant_id, "PUT", url, call("intune.partner_tenants"), body)

    async def heartbeat(self, tenant_url: str, tenant_id: str, *, timestamp: str | None = None) -> dict[str, Any]:
        """Tell Intune the connector is healthy for the tenant (else it turns the connector Unresponsive).

        Endpoint: ``PUT {tenant_url}/PartnerTenantHeartbeat(guid'{tenant}')?api-version={INTUNE_TENANT_API_VERSION}``
        (StatelessPartnerTenantDataSyncService), body ``{"Timestamp": ISO-8601}``.
        Permission: ``update_device_health`` (call ``intune.partner_tenant_heartbeat``).

        Returns:
            Intune's response entity (``ResyncTimestamp``, ``HttpStatusCode``, ``MessageErrors`` …).

        Raises:
            IntuneNotProvisionedError: 400 PartnerTenantNotProvisioned (heartbeat before PartnerTenants).
            ConsentRequiredError, IntuneUnauthorizedError, PermissionMissingError, IntuneNotFoundError,
            IntuneUnreachableError, RetriableError, FatalError: as for :meth:`put_partner_tenant`.
        """
        url = f"{tenant_url.rstrip('/')}/PartnerTenantHeartbeat(guid'{tenant_id}')?api-version={self._tenant_version}"
        body = {"Timestamp": timestamp or iso_now()}
        return await self._send(tenant_id, "PUT", url, call("intune.partner_tenant_heartbeat"), body)

    async def upload(
        self,
        device_url: str,
        tenant_id: str,
        message_id: str,
        entities: list[dict[str, Any]],
        *,
        api_call: ApiCall,
        upload_time: str | None = None,
    ) -> dict[str, Any]:
        """Send a DataUploadMessage (threat levels, App Sync requests); ``Content`` is the entity array as JSON text.

        Endpoint: ``PUT {device_url}/DataUploadMessages(guid'{message}')?api-version={INTUNE_DEVICE_API_VERSION}``
        (StatelessPartnerDeviceDataSyncService), body ``{TenantId, UploadTime, Content}``.
        Permission: ``update_device_health`` (``api_call`` names the purpose: ``intune.upload_threat_level`` or
        ``intune.upload_app_inventory_request``). Re-sending the same message id with the same body is idempotent at
        Intune (intune.md §7 note 4).

        Raises:
            IntuneConnectorStateError: 403 PartnerConnectorNotEnabled (connector Not Set Up / Unavailable).
            ConflictError: 409, the message id was already sent with a different body.
            ConsentRequiredError, IntuneUnauthorizedError, PermissionMissingError, IntuneNotFoundError,
            IntuneUnreachableError, RetriableError, FatalError: as for :meth:`put_partner_tenant`.
        """
        url = f"{device_url.rstrip('/')}/DataUploadMessages(guid'{message_id}')?api-version={self._device_version}"
        body = {
            "TenantId": tenant_id,
            "UploadTime": upload_time or iso_now(),
            "Content": orjson.dumps(entities).decode(),
        }
        return await self._send(tenant_id, "PUT", url, api_call, body)

    async def upload_result(self, device_url: str, tenant_id: str, message_id: str) -> dict[str, Any]:
        """The processing result of a DataUploadMessage.

        Endpoint: ``GET {device_url}/DataUploadMessages(guid'{message}')?api-version={INTUNE_DEVICE_API_VERSION}``
        (StatelessPartnerDeviceDataSyncService). Permission: ``update_device_health`` (call ``intune.upload_result``).

        Returns:
            ``{Status: Pending|Succeeded|Failed, ErrorDetail, UploadTime, Results}`` (``Results``: App Sync
            inventories; its shape is the simulator's, the real one is not public).

        Raises:
            IntuneNotFoundError: 404, Intune does not know the message (or the URL moved).
            ConsentRequiredError, IntuneUnauthorizedError, PermissionMissingError, IntuneUnreachableError,
            RetriableError, FatalError: as for :meth:`put_partner_tenant`.
        """
        url = f"{device_url.rstrip('/')}/DataUploadMessages(guid'{message_id}')?api-version={self._device_version}"
        return await self._send(tenant_id, "GET", url, call("intune.upload_result"))

    async def aclose(self) -> None:
        """Close the HTTP pool."""
        await self._http.aclose()
