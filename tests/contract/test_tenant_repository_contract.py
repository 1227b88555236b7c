"""TenantRepository contract: the same behaviour from the in-memory fake and the Table Storage implementation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared_code.errors import NotFoundError
from shared_code.tenants import TenantConfig

TENANT = "11111111-1111-1111-1111-111111111111"
OTHER = "22222222-2222-2222-2222-222222222222"


def _config(tenant: str = TENANT, **overrides: Any) -> TenantConfig:
    values: dict[str, Any] = {"tenant_id": tenant, "enrollment_groups": ("MTD Users",)}
    values.update(overrides)
    return TenantConfig(**values)


async def test_get_unknown_tenant_is_none(tenant_repo: Any) -> None:
    assert await tenant_repo.get(TENANT) is None


async def test_put_creates_then_replaces(tenant_repo: Any) -> None:
    record, created = await tenant_repo.put_config(_config(role_mappings=(("g1", "Console.Read"),)))
    assert created is True
    assert record.state == "active"
    assert record.config.config_version == 1
    assert record.config.role_mappings == (("g1", "Console.Read"),)
    assert record.created_at and record.updated_at

    again, created_again = await tenant_repo.put_config(_config(role_mappings=(("g1", "Console.Read"),)))
    assert created_again is False
    assert again.config.config_version == 1, "an identical PUT must not bump the version"

    changed, _ = await tenant_repo.put_config(_config(enrollment_groups=("MTD Users", "Execs")))
    assert changed.config.config_version == 2
    assert changed.config.enrollment_groups == ("MTD Users", "Execs")
    assert changed.created_at == record.created_at


async def test_status_sections_merge_independently(tenant_repo: Any) -> None:
    await tenant_repo.put_config(_config())
    await tenant_repo.update_status(TENANT, "poll", {"mode": "full", "requests": 3})
    await tenant_repo.update_status(TENANT, "poll", {"requests": 5, "ru": 7})
    await tenant_repo.update_status(TENANT, "intune", {"state": "provisioned"})
    record = await tenant_repo.get(TENANT)
    assert record.status["poll"] == {"mode": "full", "requests": 5, "ru": 7}
    assert record.status["intune"] == {"state": "provisioned"}


async def test_concurrent_status_writers_all_land(tenant_repo: Any) -> None:
    await tenant_repo.put_config(_config())
    writers = 12
    await asyncio.gather(*(tenant_repo.update_status(TENANT, "heartbeat", {f"k{i}": i}) for i in range(writers)))
    record = await tenant_repo.get(TENANT)
    assert record.status["heartbeat"] == {f"k{i}": i for i in range(writers)}
    if hasattr(tenant_repo, "conflicts"):
        assert tenant_repo.conflicts > 0, "the fake must really interleave writers"


async def test_large_status_section_round_trips(tenant_repo: Any) -> None:
    await tenant_repo.put_config(_config())
    # ~200 KB of JSON: more than three 64 KiB properties' worth, well under one entity.
    problems = [f"group-{i:05d}-" + "x" * 40 for i in range(4000)]
    await tenant_repo.update_status(TENANT, "scope", {"unresolved": problems})
    await tenant_repo.update_status(TENANT, "scope", {"unresolved": problems[:2]})
    record = await tenant_repo.get(TENANT)
    assert record.status["scope"]["unresolved"] == problems[:2]


async def test_state_and_list_active(tenant_repo: Any) -> None:
    await tenant_repo.put_config(_config())
    await tenant_repo.put_config(_config(OTHER))
    await tenant_repo.update_status(OTHER, "poll", {"mode": "delta"})
    assert [r.config.tenant_id for r in await tenant_repo.list_active()] == [TENANT, OTHER]

    await tenant_repo.set_state(TENANT, "deprovisioned")
    active = await tenant_repo.list_active()
    assert [r.config.tenant_id for r in active] == [OTHER]
    assert active[0].status["poll"] == {"mode": "delta"}
    kept = await tenant_repo.get(TENANT)
    assert kept.state == "deprovisioned"

    # Re-provisioning brings it back to active with the same version when the config is unchanged.
    record, created = await tenant_repo.put_config(_config())
    assert (created, record.state, record.config.config_version) == (False, "active", 1)


async def test_set_state_unknown_tenant_raises(tenant_repo: Any) -> None:
    with pytest.raises(NotFoundError):
        await tenant_repo.set_state(TENANT, "deprovisioned")


async def test_concurrent_put_config_creates_once(tenant_repo: Any) -> None:
    results = await asyncio.gather(*(tenant_repo.put_config(_config()) for _ in range(5)))
    assert sum(1 for _, created in results if created) == 1
    assert all(r.config.config_version == 1 for r, _ in results)


async def test_concurrent_increments_all_land(tenant_repo: Any) -> None:
    await tenant_repo.put_config(_config())
    await tenant_repo.update_status(TENANT, "intune_activity", {"other": "kept"})
    writers = 25
    values = await asyncio.gather(
        *(tenant_repo.increment(TENANT, "intune_activity", "threatReportsAccepted") for _ in range(writers))
    )
    assert sorted(values) == list(range(1, writers + 1)), "each increment returns its own new value"
    record = await tenant_repo.get(TENANT)
    assert record.status["intune_activity"] == {"other": "kept", "threatReportsAccepted": writers}


async def test_increment_creates_the_section_and_counts_garbage_as_zero(tenant_repo: Any) -> None:
    await tenant_repo.put_config(_config())
    assert await tenant_repo.increment(TENANT, "counters_new", "n", 3) == 3
    await tenant_repo.update_status(TENANT, "counters_new", {"bad": "x"})
    assert await tenant_repo.increment(TENANT, "counters_new", "bad") == 1
    record = await tenant_repo.get(TENANT)
    assert record.status["counters_new"] == {"n": 3, "bad": 1}
