"""Tenant provisioning: consent check, config storage, Intune discovery and ``PartnerTenants`` (de)provisioning.

What breaks what: no Graph token at all (admin consent missing) fails the PUT with ``consent_required`` — nothing
can work. Anything narrower (Intune token, a missing permission, no Intune service, Intune down) is recorded in the
``intune`` status section and the config is still stored, so enrollment keeps working and the heartbeat timer retries
provisioning later (:meth:`ProvisioningService.ensure_provisioned`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from shared_code.adapters.graph import GraphClient
from shared_code.adapters.intune import IntuneClient
from shared_code.errors import (
    ConnectorCredentialError,
    ConsentRequiredError,
    FatalError,
    NotFoundError,
    PermissionMissingError,
    RetriableError,
)
from shared_code.intune.discovery import TENANT_SERVICE, DiscoveryService, IntuneServiceMissingError
from shared_code.intune.status import IntuneStatus, IntuneStatusWriter, intune_of, iso, permission_problem
from shared_code.tenants import TenantConfig, TenantRecord, TenantRepository

log = logging.getLogger("connector.intune.provisioning")

PROVISION = 1  # PartnerTenants Provisioned values (intune.md §2, Fleet)
DEPROVISION = 2


def default_partner_url() -> str:
    """Fallback partner portal URL when the console sends none (Intune wants https URLs for Provisioned=1).

    ``WEBSITE_HOSTNAME`` is set by App Service / Functions to the app's host name.
    """
    host = os.environ.get("WEBSITE_HOSTNAME") or "localhost"
    return f"https://{host}/"


class ProvisioningService:
    """PUT/DELETE of tenants and their Intune side."""

    def __init__(
        self,
        *,
        tenants: TenantRepository,
        discovery: DiscoveryService,
        intune: IntuneClient,
        graph_for: Callable[[str], GraphClient],
        now: Callable[[], float],
    ) -> None:
        self._tenants = tenants
        self._status = IntuneStatusWriter(tenants)
        self._discovery = discovery
        self._intune = intune
        self._graph_for = graph_for
        self._now = now

    async def provision(self, config: TenantConfig) -> tuple[TenantRecord, bool]:
        """Validate consent, store the config and provision at Intune. Returns (record, created).

        Raises:
            ConsentRequiredError: no Graph token for the tenant (admin consent missing or revoked).
            RetriableError: the token endpoint is unavailable.
        """
        graph = self._graph_for(config.tenant_id)
        try:
            await graph.ensure_token()
        finally:
            await graph.aclose()
        _, created = await self._tenants.put_config(config)
        await self.ensure_provisioned(config, force=True)
        record = await self._tenants.get(config.tenant_id)
        assert record is not None
        return record, created

    async def ensure_provisioned(self, config: TenantConfig, *, force: bool = False) -> IntuneStatus:
        """Make sure the tenant is provisioned at Intune; record the outcome in the ``intune`` section.

        Args:
            config: the tenant's config (partner URLs).
            force: send ``PartnerTenants`` even when already recorded as provisioned (a PUT re-asserts it).

        Returns:
            The ``intune`` status patch written.

        Raises:
            ConnectorCredentialError: the connector's own credential is unusable (nothing recorded for the tenant).
        """
        tenant_id = config.tenant_id
        if not force:
            record = await self._tenants.get(tenant_id)
            if record and intune_of(record).get("state") == "provisioned":
                return IntuneStatus(**intune_of(record))
        patch: IntuneStatus = {"lastAttemptAt": iso(self._now())}
        intune_permission: str | None = None
        try:
            await self._intune.ensure_token(tenant_id)
            response = await self._discovery.call_service(
                tenant_id,
                TENANT_SERVICE,
                lambda url: self._intune.put_partner_tenant(
                    url,
                    tenant_id,
                    provisioned=PROVISION,
                    enrollment_url=config.partner_enrollment_url or default_partner_url(),
                    remediation_url=config.partner_remediation_url or default_partner_url(),
                ),
            )
            patch.update({
                "state": "provisioned",
                "provisioned": PROVISION,
                "provisionedAt": iso(self._now()),
                "problem": None,
                "errorDetail": response.get("ErrorDetail"),
                # A blocked-connector state Intune reported earlier no longer holds once it accepted the tenant.
                "connectorState": None,
            })
        except PermissionMissingError as exc:
            intune_permission = exc.permission
            patch.update({"state": "permission_missing", "problem": permission_problem(exc.permission)})
        except ConsentRequiredError as exc:
            patch.update({"state": "consent_required", "problem": f"consent_required: {exc}"})
        except IntuneServiceMissingError as exc:
            patch.update({"state": "discovery_failed", "problem": f"intune_service_missing: {exc}"})
        except ConnectorCredentialError:
            # The connector's own credential (Key Vault), not this tenant or Intune: nothing about the tenant is
            # recorded; the caller reports it as the connector-level state (a RetriableError subclass, so first).
            raise
        except RetriableError as exc:
            patch.update({"state": "provisioning_failed", "problem": f"intune_unavailable: {exc}"})
        except FatalError as exc:
            patch.update({"state": "provisioning_failed", "problem": f"intune_rejected: {exc}"})
        await self._status.intune(tenant_id, patch)
        await self._status.permission(tenant_id, "intune", intune_permission)
        if patch.get("state") != "provisioned":
            log.warning("tenant %s not provisioned at Intune: %s", tenant_id, patch.get("problem"))
        return patch

    async def deprovision(self, tenant_id: str) -> None:
        """Deprovision at Intune (``Provisioned: 2``) and mark the tenant deprovisioned (history kept).

        Intune trouble does not block the local deprovision: polling stops either way, and the outcome is recorded
        in the ``intune`` section (``deprovisionProblem``) for the operator.

        Raises:
            NotFoundError: unknown tenant.
        """
        record = await self._tenants.get(tenant_id)
        if record is None:
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        patch: IntuneStatus = {"state": "deprovisioned", "deprovisionedAt": iso(self._now())}
        try:
            await self._discovery.call_service(
                tenant_id,
                TENANT_SERVICE,
                lambda url: self._intune.put_partner_tenant(
                    url,
                    tenant_id,
                    provisioned=DEPROVISION,
                    enrollment_url=record.config.partner_enrollment_url or default_partner_url(),
                    remediation_url=record.config.partner_remediation_url or default_partner_url(),
                ),
            )
            patch.update({
                "provisioned": DEPROVISION,
                "connectorState": "unavailable",
                "deprovisionProblem": None,
            })
        except PermissionMissingError as exc:
            patch["deprovisionProblem"] = permission_problem(exc.permission)
        except (FatalError, RetriableError) as exc:
            patch["deprovisionProblem"] = f"{type(exc).__name__}: {exc}"
        await self._tenants.set_state(tenant_id, "deprovisioned")
        await self._status.intune(tenant_id, patch)
