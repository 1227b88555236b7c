"""A small FunctionApp used only by devhost's tests: HTTP, timer and queue functions that record what they saw."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict
from typing import Any

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# What the functions saw, keyed by function name; tests reset it.
RECORD: dict[str, list[Any]] = defaultdict(list)
_lock = threading.Lock()
CONCURRENCY = {"tick_slow": 0, "tick_slow_max": 0}


def reset() -> None:
    """Forget everything recorded."""
    RECORD.clear()
    CONCURRENCY.update(tick_slow=0, tick_slow_max=0)


@app.route(route="items/{item_id}", methods=["GET", "POST", "PUT"])
def items(req: func.HttpRequest) -> func.HttpResponse:
    """Echo the request; ``?status=`` picks the status code."""
    payload = {
        "method": req.method,
        "route_params": dict(req.route_params),
        "params": dict(req.params),
        "body": req.get_body().decode(),
        "x_test": req.headers.get("x-test"),
        "url": req.url,
    }
    return func.HttpResponse(
        json.dumps(payload),
        status_code=int(req.params.get("status", "200")),
        mimetype="application/json",
        headers={"X-Echo": "1"},
    )


@app.route(route="items/{item_id}/boom", methods=["POST"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    """Always raises."""
    raise ValueError("boom " + req.route_params["item_id"])


@app.route(route="things/{thing_id:int}", methods=["GET"])
async def thing_by_id(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Async handler with a constrained parameter and a context."""
    return func.HttpResponse(
        json.dumps({"id": int(req.route_params["thing_id"]), "function": context.function_name}),
        mimetype="application/json",
    )


@app.route(route="things/special", methods=["GET"])
def thing_special(req: func.HttpRequest) -> str:
    """A literal segment that must win over ``{thing_id}`` (registered after it)."""
    return "special"


@app.route(route="files/{*path}", methods=["GET"])
def files(req: func.HttpRequest) -> func.HttpResponse:
    """Catch-all parameter."""
    return func.HttpResponse(req.route_params.get("path", ""))


@app.route(route="nothing", methods=["DELETE"])
def nothing(req: func.HttpRequest) -> None:
    """Returns None → 204."""
    return None


@app.schedule(arg_name="timer", schedule="%TICK_SCHEDULE%")
def tick(timer: func.TimerRequest) -> None:
    """Records every run."""
    with _lock:
        RECORD["tick"].append({"past_due": timer.past_due, "status": timer.schedule_status})


@app.timer_trigger(arg_name="timer", schedule="%SLOW_SCHEDULE%")
async def tick_slow(timer: func.TimerRequest) -> None:
    """Takes a while; must never run twice at once."""
    CONCURRENCY["tick_slow"] += 1
    CONCURRENCY["tick_slow_max"] = max(CONCURRENCY["tick_slow_max"], CONCURRENCY["tick_slow"])
    try:
        await asyncio.sleep(0.3)
        RECORD["tick_slow"].append(timer.past_due)
    finally:
        CONCURRENCY["tick_slow"] -= 1


@app.queue_trigger(arg_name="msg", queue_name="%WORK_QUEUE%", connection="AzureWebJobsStorage")
async def work(msg: func.QueueMessage) -> None:
    """JSON body ``{"action": "ok"|"fail", ...}``; a non-JSON body raises like a real handler would."""
    RECORD["work"].append({"id": msg.id, "dequeue_count": msg.dequeue_count, "body": msg.get_body()})
    data = json.loads(msg.get_body())
    if data.get("action") == "fail":
        raise RuntimeError("asked to fail")
    RECORD["work_ok"].append(data)
