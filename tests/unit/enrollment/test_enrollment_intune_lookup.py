"""The enrolled-device lookup the Intune flows use answers from the enrollment store."""

from __future__ import annotations

from shared_code.domain.devices import DeviceRecord
from shared_code.domain.reconcile import DEACTIVATE, ENROLL, PlanItem
from shared_code.enrollment.intune_devices import StoreEnrolledDevices
from shared_code.enrollment.store import MemoryEnrollmentStore

T = "11111111-2222-4333-8444-555555555555"


async def test_only_currently_enrolled_devices_are_found_by_device_id_or_object_id() -> None:
    store = MemoryEnrollmentStore()
    a = DeviceRecord(id="obj-a", device_id="DEV-A", operating_system="iOS", owner_id="user-1", display_name="A")
    b = DeviceRecord(id="obj-b", device_id="DEV-B", operating_system="Android", owner_id="user-2")
    await store.apply(T, [PlanItem(ENROLL, a, "r"), PlanItem(ENROLL, b, "r")], "t")
    await store.apply(T, [PlanItem(DEACTIVATE, b, "r")], "t")
    lookup = StoreEnrolledDevices(store)
    found = await lookup.get(T, "dev-a")
    assert found is not None and (found.device_id, found.user_id, found.operating_system) == ("DEV-A", "user-1", "iOS")
    assert await lookup.get(T, "obj-a") is not None
    assert await lookup.get(T, "DEV-B") is None  # deactivated
    assert await lookup.get(T, "nope") is None
