"""What one quiet poll costs, the way a fleet multiplies it (issue 9, "Fleet"): storage calls by table, kind and
partition, and Graph connections, counted through the app's own clients on Azurite and the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from azure.functions.queue import QueueMessage
from enrollment_sim_helpers import provision

from bench.storage_meter import StorageMeter, metered_storage
from functions.enrollment_jobs import poll_tenant
from shared_code.bootstrap import Container, use_container
from shared_code.enrollment.service import EnrollmentService, PollMessage, build_enrollment_service
from shared_code.settings import Settings

SEEDS = iter(range(900, 10_000))


@pytest.fixture(scope="module")
async def metered(module_env: dict[str, str]) -> AsyncIterator[tuple[Container, StorageMeter]]:
    """A container whose table and queue clients report every request to a StorageMeter."""
    container = Container(Settings.from_env(module_env))
    meter = StorageMeter(module_env["TABLE_PREFIX"])
    container._storage = metered_storage(module_env["AzureWebJobsStorage"], module_env["TABLE_PREFIX"], meter)
    use_container(container)
    try:
        yield container, meter
    finally:
        use_container(None)
        await container.close()


class CountingExecutor(ThreadPoolExecutor):
    """The event loop's default executor, counting what is handed to it (run_in_executor, asyncio.to_thread)."""

    submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def quiet_tenant(sim: Any, service: EnrollmentService) -> str:
    """A provisioned tenant polled until its polls are quiet (full sync and first devices round done)."""
    summary = sim.create_tenant("small", seed=next(SEEDS))
    await provision(service, summary, guard_max_percent=100.0)
    tid: str = summary["tenant_id"]
    for _ in range(5):
        if (await service.run_poll(tid)).get("mode") == "noop":
            return tid
    raise AssertionError("the tenant's polls never became quiet")


async def test_a_quiet_poll_reads_the_tenant_once_and_queries_no_shared_partition(
    sim: Any, metered: tuple[Container, StorageMeter]
) -> None:
    container, meter = metered
    service = container.service(build_enrollment_service)
    tid = await quiet_tenant(sim, service)
    meter.calls.clear()
    message = PollMessage(tid, "scheduled", enqueued_at=container.clock.now())
    result = await service.handle_message(message.to_json())
    assert result["result"] == "ok" and result["mode"] == "noop"
    calls = {k: v for k, v in meter.calls.items() if "~connector" not in k}
    # The lease (read + compare-and-swap take, give back), the tenant once (not once by the service and again by
    # the engine), the two delta cursors; nothing written besides the lease, no query beyond the tenant's own rows.
    assert calls == {"leases get poll": 1, "leases update poll": 2, "tenants query tenant": 1,
                     "cursors get tenant": 2}
    # The connector-level document is read at most once per RECHECK_SECONDS and instance, not per poll.
    assert sum(v for k, v in meter.calls.items() if "~connector" in k) <= 1


async def test_polls_of_different_tenants_share_one_graph_connection(
    sim: Any, metered: tuple[Container, StorageMeter]
) -> None:
    container, _ = metered
    service = container.service(build_enrollment_service)
    first, second = await quiet_tenant(sim, service), await quiet_tenant(sim, service)
    for tid in (first, second, first, second):
        assert (await service.run_poll(tid))["mode"] == "noop"
    pool = container._graph_pool
    assert pool is not None
    # httpcore's pool (behind httpx's transport) lists its open connections: every poll of both tenants (each with
    # its own GraphClient, meter and token) went over one kept-alive connection instead of a handshake per poll.
    assert len(pool._inner._pool.connections) == 1  # type: ignore[attr-defined]


async def test_a_quiet_poll_hands_nothing_to_a_thread(sim: Any, metered: tuple[Container, StorageMeter]) -> None:
    container, _ = metered
    service = container.service(build_enrollment_service)
    tid = await quiet_tenant(sim, service)
    executor = CountingExecutor(max_workers=4)
    asyncio.get_running_loop().set_default_executor(executor)
    body = PollMessage(tid, "scheduled", enqueued_at=container.clock.now()).to_json().encode()
    # The queue function itself (telemetry unit included), as the host invokes it.
    poll = poll_tenant._function.get_user_function()  # the blueprint's function, as devhost and the host call it
    await poll(QueueMessage(id="m1", body=body, dequeue_count=1))  # type: ignore[no-untyped-call]
    # Seven storage calls and two Graph requests on kept-alive connections, with no thread hand-off for any of
    # them (aiohttp's per-request netrc/proxy lookups with trust_env; a telemetry wait when it is already off).
    assert executor.submitted == 0
