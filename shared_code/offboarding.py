"""Offboarding a customer tenant: deprovision it, then purge what the connector stored about it.

``DELETE /api/tenants/{id}?purge=true`` (Console.Manage) calls :meth:`OffboardingService.purge`:

1. Deprovision at Intune (``Provisioned: 2``) and stop polling, exactly as a plain DELETE does; the tenant's state
   becomes ``purging`` (no poll, heartbeat or console flow treats it as active again).
2. Take the tenant's poll lease, so no poll writes while rows are deleted (a running poll: 409, retry).
3. Each table's owner deletes the tenant's rows: ``devices`` (device rows, events, index rows; the PartitionKey range
   ``[tid, tid+'~')`` of every shard) and ``memberships`` (shared_code/enrollment/store.py), ``cursors``
   (shared_code/enrollment/cursors.py), ``uploads`` (its partition and its ``~pending`` index rows,
   shared_code/intune/uploads.py), then the lease row (shared_code/enrollment/leases.py) and last the tenant document
   with its status (shared_code/adapters/tenant_store.py), so an interrupted purge is still findable and resumable.

A call deletes at most ``PURGE_STEP_ROWS`` rows and answers whether the purge is complete; repeating the request
continues where the previous one stopped (every delete is idempotent). Retention for customers is in docs/deploy.md
("Offboarding and data retention").
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from shared_code.enrollment.service import LEASE_SECONDS, EnrollmentService
from shared_code.errors import ConflictError, NotFoundError
from shared_code.intune.provisioning import ProvisioningService
from shared_code.intune.uploads import UploadStore

PURGING = "purging"
# Rows one request deletes at most (bounded work per call; the request is repeated until complete).
PURGE_STEP_ROWS = 20_000


class OffboardingService:
    """Deprovision + purge of one customer tenant, each table purged by its owner."""

    def __init__(
        self,
        *,
        enrollment: EnrollmentService,
        provisioning: ProvisioningService,
        uploads: UploadStore,
        clock: Callable[[], float] = time.time,
        step_rows: int = PURGE_STEP_ROWS,
    ) -> None:
        self._enrollment = enrollment
        self._tenants = enrollment.tenants
        self._provisioning = provisioning
        self._uploads = uploads
        self._clock = clock
        self._step = step_rows
        self._worker = f"purge-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    async def purge(self, tenant_id: str) -> dict[str, Any]:
        """Deprovision (once) and delete up to ``step_rows`` of the tenant's rows.

        Returns:
            ``{"tenantId", "state": "purging" | "purged", "complete": bool}``.

        Raises:
            NotFoundError: the tenant was never provisioned (or is already purged).
            ConflictError: a poll of the tenant holds its lease right now (retry).
        """
        record = await self._tenants.get(tenant_id)
        if record is None:
            raise NotFoundError(f"tenant {tenant_id} is not provisioned", status=404)
        if record.state != PURGING:
            # Intune trouble does not block the local offboarding (recorded in the intune section, as for DELETE).
            await self._provisioning.deprovision(tenant_id)
            await self._tenants.set_state(tenant_id, PURGING)
        leases = self._enrollment.leases
        lease = await leases.acquire(tenant_id, self._worker, LEASE_SECONDS, self._clock())
        if lease is None:
            raise ConflictError(f"a poll of tenant {tenant_id} is running; repeat the purge in a minute", status=409)
        try:
            complete = await self._enrollment.store.delete_tenant(tenant_id, limit=self._step)
            if complete:
                await self._enrollment.cursors.delete_tenant(tenant_id)
                complete = await self._uploads.delete_tenant(tenant_id, limit=self._step)
            if not complete:
                return {"tenantId": tenant_id, "state": PURGING, "complete": False}
            await leases.forget(lease)
            lease = None
            await self._tenants.delete_tenant(tenant_id)
            return {"tenantId": tenant_id, "state": "purged", "complete": True}
        finally:
            if lease is not None:
                await leases.release(lease, self._clock())


def build_offboarding(c: Any) -> OffboardingService:
    """The process's OffboardingService: ``container().service(build_offboarding)``."""
    from shared_code.enrollment.service import build_enrollment_service
    from shared_code.intune.wiring import build_intune

    return OffboardingService(
        enrollment=c.service(build_enrollment_service),
        provisioning=c.service(build_intune).provisioning,
        uploads=UploadStore(c.storage),
        clock=c.clock.now,
        step_rows=PURGE_STEP_ROWS,
    )
