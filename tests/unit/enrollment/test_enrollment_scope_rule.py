"""The one scope rule (``domain.scope.device_scope``) and the desired set built from it (I/O-free)."""

from __future__ import annotations

from shared_code.domain.devices import DeviceRecord, normalize_platforms
from shared_code.domain.reconcile import DIRECT, OWNER, desired_set
from shared_code.domain.scope import Scope, device_scope

MOBILE = normalize_platforms(("iOS", "iPadOS", "Android"))
SCOPE = Scope(users={"u1": "Sales"}, devices={"kiosk": "Sales", "owned-member": "Field"}, groups=frozenset({"g"}))


def test_a_member_device_is_in_scope_with_or_without_an_owner() -> None:
    assert device_scope("kiosk", None, "iOS", SCOPE, MOBILE) == (DIRECT, "Sales")
    assert device_scope("owned-member", "u9", "Android", SCOPE, MOBILE) == (DIRECT, "Field")


def test_an_owned_device_is_in_scope_through_its_owner_and_an_ownerless_non_member_is_not() -> None:
    assert device_scope("phone", "u1", "iOS", SCOPE, MOBILE) == (OWNER, "Sales")
    assert device_scope("phone", None, "iOS", SCOPE, MOBILE) is None
    assert device_scope("phone", "u9", "iOS", SCOPE, MOBILE) is None


def test_the_platform_filter_and_disabled_owners_apply_to_both_paths() -> None:
    assert device_scope("kiosk", None, "Windows", SCOPE, MOBILE) is None
    assert device_scope("phone", "u1", "macOS", SCOPE, MOBILE) is None
    assert device_scope("phone", "u1", "iOS", SCOPE, MOBILE, frozenset({"u1"})) is None
    assert device_scope("owned-member", "u1", "iOS", SCOPE, MOBILE, frozenset({"u1"})) is None
    assert device_scope("kiosk", None, "iOS", SCOPE, MOBILE, frozenset({"u1"})) == (DIRECT, "Sales")


def test_the_desired_set_uses_the_rule_and_drops_deleted_devices() -> None:
    records = {
        "kiosk": DeviceRecord("kiosk", operating_system="iOS"),
        "phone": DeviceRecord("phone", operating_system="iOS", owner_id="u1"),
        "orphan": DeviceRecord("orphan", operating_system="iOS"),
        "gone": DeviceRecord("gone", operating_system="iOS", owner_id="u1"),
    }
    desired = desired_set(records, SCOPE, MOBILE, deleted={"gone"})
    assert {d: (w.path, w.via) for d, w in desired.items()} == {"kiosk": (DIRECT, "Sales"), "phone": (OWNER, "Sales")}
    assert SCOPE.may_contain("kiosk", None) and SCOPE.may_contain("x", "u1") and not SCOPE.may_contain("x", None)
