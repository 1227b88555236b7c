"""The enrolled-device lookup the Intune flows use (``shared_code.intune.wiring.build_enrolled_devices``)."""

from __future__ import annotations

from shared_code.bootstrap import Container
from shared_code.domain.reconcile import ENROLLED
from shared_code.enrollment.store import EnrollmentStore, TableEnrollmentStore
from shared_code.intune.devices import EnrolledDevice


class StoreEnrolledDevices:
    """Answers from the enrollment store: only devices whose row is currently ``enrolled``."""

    def __init__(self, store: EnrollmentStore) -> None:
        self._store = store

    async def get(self, tenant_id: str, device_id: str) -> EnrolledDevice | None:
        """The device by Entra deviceId or object id when enrolled, else None."""
        row = await self._store.find_device(tenant_id, device_id)
        if row is None or row.state != ENROLLED:
            return None
        rec = row.record
        return EnrolledDevice(
            device_id=rec.device_id,
            user_id=rec.owner_id or "",
            operating_system=rec.operating_system,
            display_name=rec.display_name,
        )


def build(c: Container) -> StoreEnrolledDevices:
    """Lookup over the Table store of this container."""
    return StoreEnrolledDevices(TableEnrollmentStore(c.storage))
