"""Timer triggers: run_timer, real NCRONTAB ticks, no overlap, runOnStartup, retry."""

from __future__ import annotations

import asyncio

import azure.functions as func
import pytest

from devhost import DevHost, InvocationError
from tests.devhost import devhost_sample_app as sample


async def _until(predicate, what: str, limit: int = 400) -> None:
    """Wait (bounded by a number of 50 ms steps, not asserted as time) until predicate() holds."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_run_timer_fires_once_with_timer_request(make_host):
    host = await make_host()
    await host.run_timer("tick")
    assert len(sample.RECORD["tick"]) == 1
    run = sample.RECORD["tick"][0]
    assert run["past_due"] is False
    assert set(run["status"]) == {"Last", "Next", "LastUpdated"}
    assert host.stats["tick"].invocations == 1
    with pytest.raises(KeyError):
        await host.run_timer("items")  # an HTTP function is not a timer


async def test_real_schedule_ticks_every_second(make_host):
    host = await make_host({"TICK_SCHEDULE": "*/1 * * * * *"})
    await _until(lambda: len(sample.RECORD["tick"]) >= 2, "two scheduled ticks")
    assert host.stats["tick"].failures == 0
    assert host.stats["tick"].successes >= 2


async def test_timer_never_overlaps_itself(make_host):
    host = await make_host({"SLOW_SCHEDULE": "*/1 * * * * *"})
    # Manual runs racing the schedule: the singleton lock serialises them.
    await asyncio.gather(*(host.run_timer("tick_slow") for _ in range(3)))
    await _until(lambda: len(sample.RECORD["tick_slow"]) >= 4, "a scheduled run besides the manual ones")
    assert sample.CONCURRENCY["tick_slow_max"] == 1


async def test_run_on_startup_failure_and_retry(azurite):
    app = func.FunctionApp()
    calls: list[int] = []

    @app.timer_trigger(arg_name="t", schedule="0 0 0 1 1 *", run_on_startup=True)
    def startup(t: func.TimerRequest) -> None:
        calls.append(1)

    @app.retry(strategy="fixed_delay", max_retry_count="2", delay_interval="00:00:00")
    @app.timer_trigger(arg_name="t", schedule="0 0 0 1 1 *")
    def flaky(t: func.TimerRequest, context: func.Context) -> None:
        calls.append(100 + context.retry_context.retry_count)
        raise RuntimeError("nope")

    host = DevHost(app, {}, port=0, host_json={})
    async with host:
        await _until(lambda: 1 in calls, "runOnStartup run")
        with pytest.raises(InvocationError, match="nope"):
            await host.run_timer("flaky")
    assert [c for c in calls if c >= 100] == [100, 101, 102]  # first try + 2 retries
    assert host.stats["flaky"].failures == 3
    assert host.stats["startup"].successes == 1
