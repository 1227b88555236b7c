"""Intune timers: heartbeats (``%HEARTBEAT_SCHEDULE%``) and upload result polling (``%UPLOAD_RESULTS_SCHEDULE%``)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared_code import telemetry
from shared_code.bootstrap import container
from shared_code.intune.wiring import build_intune

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("connector.intune.jobs")


@bp.timer_trigger(schedule="%HEARTBEAT_SCHEDULE%", arg_name="timer", run_on_startup=False)
async def send_heartbeats(timer: func.TimerRequest) -> None:
    """One PartnerTenantHeartbeat per due, active tenant (bounded concurrency, per-tenant failures recorded)."""
    run = await container().service(build_intune).heartbeat.run()
    log.info("send_heartbeats: %s", run.summary())


@bp.timer_trigger(schedule="%UPLOAD_RESULTS_SCHEDULE%", arg_name="timer", run_on_startup=False)
async def poll_upload_results(timer: func.TimerRequest) -> None:
    """Poll pending DataUploadMessages until Succeeded/Failed; store results and inventories."""
    async with telemetry.unit(telemetry.UPLOAD_RESULTS) as work:
        counts = await container().service(build_intune).messages.settle_pending()
        work.set(**{f"upload_results.{k}": v for k, v in counts.items()})
    log.info("poll_upload_results: %s", counts)
