"""Enrollment fan-out: timer ``dispatch_polls`` (``%POLL_SCHEDULE%``) and queue worker ``poll_tenant``.

The timer enqueues one message per due tenant on ``%POLL_QUEUE_NAME%``; each message polls one tenant under that
tenant's lease, so duplicate or concurrent messages do one poll and a tenant's failure stays its own (the service
records it as a failure streak / quarantine and the message is acknowledged, not retried by the host). What does
fail a delivery (storage refusing the lease or status write, a bug) is recorded in the tenant's status section
``delivery`` and retried by the host up to ``maxDequeueCount``, then poisoned (shared_code/enrollment/poison.py).
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared_code import telemetry
from shared_code.bootstrap import container
from shared_code.enrollment.poison import build_poison_service
from shared_code.enrollment.service import build_enrollment_service
from shared_code.errors import ValidationError

bp = func.Blueprint()  # type: ignore[no-untyped-call]
log = logging.getLogger("connector.enrollment.jobs")


@bp.timer_trigger(schedule="%POLL_SCHEDULE%", arg_name="timer", run_on_startup=False)
async def dispatch_polls(timer: func.TimerRequest) -> None:
    """Enqueue a poll for every active tenant that is due (interval elapsed, not backing off, not running)."""
    enqueued = await container().service(build_enrollment_service).dispatch()
    log.info("dispatch_polls: enqueued %d", len(enqueued))
    if await telemetry.ready(wait=True):
        # The poison-queue alert's metric (infra/modules/alerts.bicep): sampled once per dispatch tick.
        poison = container().service(build_poison_service)
        telemetry.record_poison_length(await poison.count(), poison.poison_queue_name)


@bp.queue_trigger(arg_name="msg", queue_name="%POLL_QUEUE_NAME%", connection="AzureWebJobsStorage")
async def poll_tenant(msg: func.QueueMessage) -> None:
    """Poll the tenant named in the message (JSON ``{"tenant_id": …}``)."""
    attempt = msg.dequeue_count or 1
    try:
        # One span per poll (tenant, mode, pages, Graph requests, RU, 429s, events written; telemetry.py).
        attributes = {"messaging.message.id": msg.id, "delivery_attempt": attempt}
        async with telemetry.unit(telemetry.POLL, attributes) as work:
            # The service decodes the bytes itself: undecodable UTF-8 is a ValidationError like any other junk.
            result = await container().service(build_enrollment_service).handle_message(msg.get_body())
            telemetry.poll_result(work, result)
    except ValidationError as exc:
        # A malformed message can never succeed, however often it is redelivered: acknowledge it with an error log
        # (the log line is the evidence) instead of five pointless dequeues ending in the poison queue.
        log.error("poll_tenant: dropping malformed message %s (%s): %s", msg.id, exc.field, exc)
        return
    except Exception as exc:
        # Not the tenant's own failure (the service records those): say why in the tenant's status, then let the
        # host retry and, after maxDequeueCount, poison the message.
        await container().service(build_poison_service).record_failure(msg.get_body(), msg.id or "", attempt, exc)
        raise
    if attempt > 1:
        await container().service(build_poison_service).record_recovered(msg.get_body(), msg.id or "", attempt)
    log.info("poll_tenant: %s", {k: result.get(k) for k in ("tenantId", "result", "mode", "counts")})
