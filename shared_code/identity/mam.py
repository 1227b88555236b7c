"""MAM check: a user's Intune app protection (MAM) registrations, and whether a device has one.

``GET /users/{id}/managedAppRegistrations`` (v1.0, ``DeviceManagementApps.Read.All``; ``managedAppRegistrations`` is a
documented navigation property of user in v1.0, api-reference/v1.0/resources/user.md; msgraph-sdk
``users.by_user_id(id).managed_app_registrations``) reads one user's registrations only. The seed's call,
``GET /deviceAppManagement/managedAppRegistrations``, lists the whole tenant: whether it honours
``$filter=userId eq …`` is undocumented and Intune lists are known to ignore unsupported filters silently
(reference/graph.md §2), so one HTTP request could have paged through every registration of the tenant. The
user navigation is the same data and permission, bounded by one user.

Device match: a registration carries ``deviceTag`` (the SDK's tag relating apps on one device, "not guaranteed") and
``deviceName``; a device has a MAM registration when the tag equals its Entra deviceId or, failing that, the name
equals its display name (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared_code.adapters.graph import GraphClient
from shared_code.errors import NotFoundError, PermissionMissingError
from shared_code.intune.devices import EnrolledDevices
from shared_code.intune.status import PERMISSIONS, permission_problem
from shared_code.permissions import call
from shared_code.tenants import TenantRepository

_SELECT = (
    "id,userId,appIdentifier,deviceType,deviceTag,deviceName,lastSyncDateTime,createdDateTime,"
    "applicationVersion,platformVersion,flaggedReasons"
)


def _platform(registration: dict[str, Any]) -> str:
    kind = str(registration.get("@odata.type", "")).lower()
    for name, label in (("ios", "iOS"), ("android", "Android"), ("windows", "Windows")):
        if name in kind:
            return label
    return "unknown"


def _app(registration: dict[str, Any]) -> str:
    ident = registration.get("appIdentifier") or {}
    if isinstance(ident, dict):
        for key in ("bundleId", "packageId", "windowsAppId"):
            if ident.get(key):
                return str(ident[key])
    return ""


def summarize(registration: dict[str, Any]) -> dict[str, Any]:
    """One registration as the API shows it."""
    return {
        "id": registration.get("id"),
        "app": _app(registration),
        "platform": _platform(registration),
        "deviceType": registration.get("deviceType"),
        "deviceTag": registration.get("deviceTag"),
        "deviceName": registration.get("deviceName"),
        "lastSyncDateTime": registration.get("lastSyncDateTime"),
        "applicationVersion": registration.get("applicationVersion"),
        "platformVersion": registration.get("platformVersion"),
        "flaggedReasons": registration.get("flaggedReasons") or [],
    }


class MamService:
    """Reads managedAppRegistrations with the tenant's app token."""

    def __init__(
        self, *, tenants: TenantRepository, devices: EnrolledDevices, graph_for: Callable[[str], GraphClient]
    ) -> None:
        self._tenants = tenants
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
        registrations: list[dict[str, Any]] = []
        try:
            # One user's registrations: a few per app and device, so following nextLink stays small.
            async for page in graph.pages(
                f"/users/{user_id}/managedAppRegistrations",
                permission=api_call.permission,
                params={"$select": _SELECT},
            ):
                registrations.extend(r for r in page.get("value", []) if isinstance(r, dict))
        except NotFoundError:
            raise NotFoundError(f"user {user_id} not found in tenant {tenant_id}", status=404) from None
        except PermissionMissingError as exc:
            await self._tenants.update_status(tenant_id, PERMISSIONS, {"mam": permission_problem(exc.permission)})
            raise
        finally:
            await graph.aclose()
        if record.status.get(PERMISSIONS, {}).get("mam"):
            await self._tenants.update_status(tenant_id, PERMISSIONS, {"mam": None})
        result: dict[str, Any] = {
            "tenantId": tenant_id,
            "userId": user_id,
            "registrations": [summarize(r) for r in registrations],
        }
        if device is not None:
            tagged = [r for r in registrations if str(r.get("deviceTag") or "").lower() == device.device_id.lower()]
            named = [
                r
                for r in registrations
                if device.display_name and str(r.get("deviceName") or "").lower() == device.display_name.lower()
            ]
            matches = tagged or named
            result["device"] = {
                "deviceId": device.device_id,
                "hasMamRegistration": bool(matches),
                "matchedBy": "deviceTag" if tagged else ("deviceName" if named else None),
                "registrationIds": [r.get("id") for r in matches],
            }
        return result
