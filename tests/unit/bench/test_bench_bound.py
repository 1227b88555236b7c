"""The benchmark's page lower bound (bench/bound.py): counts from a tenant's shape, priced by the documented table."""

from __future__ import annotations

from typing import Any

from bench.bound import lower_bound


def shape(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"names": 1, "group_members": {f"g{i}": 800 for i in range(26)}, "groups_round_pages": 70,
                            "scope_users": 20_000, "direct_devices": 2, "capped_users": 4, "platforms": []}
    return {**base, **kw}


def test_a_big_tenant_is_bounded_by_member_walks_not_the_whole_groups_round() -> None:
    b = lower_bound(shape(), users=30_000, devices=50_000)
    # 1 name lookup + 1 groups cursor + 26 member pages + 1 $batch of direct-device owners + 1 devices/delta page.
    assert b["fixed"]["requests"] == 30 and b["fixed"]["membership"] == "member walks"
    # users?$expand=ownedDevices: 300 pages (2 RU each) + one $batch for the 4 users past the 20-device cap.
    assert b["plan"] == "users_expand_owned"
    assert (b["requests"], b["ru"]) == (30 + 301, 1 + 1 + 26 * 2 + 2 + 1 + 300 * 2 + 4)
    assert b["plans"]["per_user_batch"]["requests"] == 30 + 1000


def test_a_small_tenant_reads_the_whole_groups_round_when_that_is_fewer_requests() -> None:
    b = lower_bound(shape(group_members={"g0": 30, "g1": 5}, groups_round_pages=1, scope_users=19, capped_users=0,
                          direct_devices=0), users=40, devices=70)
    assert b["fixed"]["membership"] == "whole groups/delta round"
    assert b["plan"] == "devices_expand_owners"  # one page of 70 devices with owners
    assert b["requests"] == 1 + 1 + 1 + 1
