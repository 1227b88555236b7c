"""MAM check: a user's Intune app protection (MAM) registrations, and whether a device has one.

``GET /users/{id}/managedAppRegistrations`` (v1.0, ``DeviceManagementApps.Read.All``; ``managedAppRegistrations`` is a
documented navigation property of user in v1.0, api-reference/v1.0/resources/user.md; msgraph-sdk
``users.by_user_id(id).managed_app_registrations``) reads one user's registrations only. The seed's call,
``GET /deviceAppManagement/managedAppRegistrations``, lists the whole tenant: whether it honours
``$filter=userId eq …`` is undocumented and Intune lists are known to ignore unsupported filters silently
(reference/graph.md §2), so one HTTP request could have paged through every registration of the tenant. The
user navigation is the same data and permission, bounded by one user.

The call goes through msgraph-sdk's typed request builder (``GraphClient.typed``): a user has a handful of
registrations, so model deserialization costs nothing here, and the SDK shares the bulk path's transport, retry
layer and token host pinning. The SDK is imported inside :func:`read_registrations`, so no route's cold start pays
for it (docs/architecture.md, "msgraph-sdk").

Device match: a registration carries ``deviceTag`` (the SDK's tag relating apps on one device, "not guaranteed") and
``deviceName``; a device has a MAM registration when the tag equals its Entra deviceId or, failing that, the name
equals its display name (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from shared_code.adapters.graph import GraphClient
from shared_code.errors import FatalError, NotFoundError, PermissionMissingError
from shared_code.intune.devices import EnrolledDevices
from shared_code.intune.status import IntuneStatusWriter, permissions_of
from shared_code.permissions import call
from shared_code.tenants import TenantRepository

_SELECT = (
    "id", "userId", "appIdentifier", "deviceType", "deviceTag", "deviceName", "lastSyncDateTime", "createdDateTime",
    "applicationVersion", "platformVersion", "flaggedReasons",
)


def _platform(registration: Any) -> str:
    kind = str(getattr(registration, "odata_type", "") or "").lower()
    for name, label in (("ios", "iOS"), ("android", "Android"), ("windows", "Windows")):
        if name in kind:
            return label
    return "unknown"


def _app(registration: Any) -> str:
    ident = getattr(registration, "app_identifier", None)
    # iosMobileAppIdentifier.bundleId, androidMobileAppIdentifier.packageId, windowsAppIdentifier.windowsAppId.
    for attribute in ("bundle_id", "package_id", "windows_app_id"):
        value = getattr(ident, attribute, None)
        if value:
            return str(value)
    return ""


def _iso(value: Any) -> str | None:
    """A model's datetime back in Graph's wire form (``…Z``)."""
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    return text.replace("+00:00", "Z")


def summarize(registration: Any) -> dict[str, Any]:
    """One registration (an msgraph-sdk ``ManagedAppRegistration`` model) as the API shows it."""
    reasons = getattr(registration, "flagged_reasons", None) or []
    return {
        "id": registration.id,
        "app": _app(registration),
        "platform": _platform(registration),
        "deviceType": registration.device_type,
        "deviceTag": registration.device_tag,
        "deviceName": registration.device_name,
        "lastSyncDateTime": _iso(registration.last_sync_date_time),
        "applicationVersion": registration.application_version,
        "platformVersion": registration.platform_version,
        "flaggedReasons": [str(getattr(r, "value", r)) for r in reasons],
    }


def _next_page(user_id: str, url: str) -> Callable[[Any], Awaitable[Any]]:
    def request(sdk: Any) -> Awaitable[Any]:
        return sdk.users.by_user_id(user_id).managed_app_registrations.with_url(url).get()  # type: ignore[no-any-return]

    return request


async def read_registrations(
    graph: GraphClient, user_id: str, *, permission: str, page_size: int | None = None
) -> list[Any]:
    """Every ``managedAppRegistration`` of one user, following ``@odata.nextLink`` (``page_size`` = ``$top``).

    ``GET /users/{user_id}/managedAppRegistrations?$select=…`` through msgraph-sdk
    (``users.by_user_id(id).managed_app_registrations``); permission ``DeviceManagementApps.Read.All``.

    Raises:
        NotFoundError: no such user (404). PermissionMissingError: 403. FatalError: a repeated nextLink.
        RetriableError, ConsentRequiredError: Graph or token trouble (see ``GraphClient.typed``).
    """
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.users.item.managed_app_registrations.managed_app_registrations_request_builder import (
        ManagedAppRegistrationsRequestBuilder,
    )

    query = ManagedAppRegistrationsRequestBuilder.ManagedAppRegistrationsRequestBuilderGetQueryParameters(
        select=list(_SELECT), top=page_size
    )
    config = RequestConfiguration(query_parameters=query)
    page = await graph.typed(
        lambda sdk: sdk.users.by_user_id(user_id).managed_app_registrations.get(request_configuration=config),
        permission=permission,
    )
    registrations: list[Any] = []
    seen: set[str] = set()
    while page is not None:
        registrations.extend(page.value or [])
        next_link = page.odata_next_link
        if not next_link:
            break
        if next_link in seen:
            msg = f"Graph repeated a nextLink: paging loop on /users/{user_id}/managedAppRegistrations"
            raise FatalError(msg)
        seen.add(next_link)
        page = await graph.typed(_next_page(user_id, next_link), permission=permission)
    return registrations


class MamService:
    """Reads managedAppRegistrations with the tenant's app token."""

    def __init__(
        self, *, tenants: TenantRepository, devices: EnrolledDevices, graph_for: Callable[[str], GraphClient]
    ) -> None:
        self._tenants = tenants
        self._status = IntuneStatusWriter(tenants)
        self._devices = devices
        self._graph_for = graph_for

    async def check(self, tenant_id: str, user_id: str, device_id: str | None = None) -> dict[str, Any]:
        """The user's registrations, and with ``device_id`` whether that enrolled device has one.

        Raises:
            NotFoundError: unknown tenant, ``device_id`` given but not enrolled, or no such user in the tenant.
            PermissionMissingError: DeviceManagementApps.Read.All not granted (also recorded as the ``mam`` problem).
            RetriableError, ConsentRequiredError: Graph or token trouble.
        """
        record = await self._tenants.get(tenant_id)
        if record is None or record.state != "active":
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        device = None
        if device_id:
            device = await self._devices.get(tenant_id, device_id)
            if device is None:
                raise NotFoundError(f"device {device_id} is not enrolled in tenant {tenant_id}", status=404)
        api_call = call("graph.user_managed_app_registrations")
        graph = self._graph_for(tenant_id)
        try:
            # One user's registrations: a few per app and device, so following nextLink stays small.
            registrations = await read_registrations(graph, user_id, permission=api_call.permission)
        except NotFoundError:
            raise NotFoundError(f"user {user_id} not found in tenant {tenant_id}", status=404) from None
        except PermissionMissingError as exc:
            await self._status.permission(tenant_id, "mam", exc.permission)
            raise
        finally:
            await graph.aclose()
        if permissions_of(record).get("mam"):
            await self._status.permission(tenant_id, "mam", None)
        result: dict[str, Any] = {
            "tenantId": tenant_id,
            "userId": user_id,
            "registrations": [summarize(r) for r in registrations],
        }
        if device is not None:
            tagged = [r for r in registrations if str(r.device_tag or "").lower() == device.device_id.lower()]
            named = [
                r
                for r in registrations
                if device.display_name and str(r.device_name or "").lower() == device.display_name.lower()
            ]
            matches = tagged or named
            result["device"] = {
                "deviceId": device.device_id,
                "hasMamRegistration": bool(matches),
                "matchedBy": "deviceTag" if tagged else ("deviceName" if named else None),
                "registrationIds": [r.id for r in matches],
            }
        return result
