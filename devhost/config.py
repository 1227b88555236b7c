"""host.json and app-setting handling with the Functions host's semantics.

Sources: ``functions-host-json`` (host.json reference), ``functions-bindings-storage-queue#hostjson-settings``
(queue defaults), ``functions-bindings-http-webhook#hostjson-settings`` (routePrefix), ``functions-bindings-timer``
(``%SETTING%`` schedules), ``functions-bindings-expressions-patterns#binding-expressions---app-settings``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DevHostError(Exception):
    """A configuration or input problem devhost reports instead of starting (clear message, no traceback needed)."""


# .NET TimeSpan text form "[-][d.]hh:mm:ss[.fffffff]" used throughout host.json (functions-host-json).
_TIMESPAN_RE = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?$")


def parse_timespan(value: str | int | float, *, what: str) -> float:
    """Parse a .NET TimeSpan string (``00:01:00``, ``1.02:03:04.5``) into seconds.

    Args:
        value: the host.json value (a number is taken as seconds for convenience).
        what: the setting name, for the error message.

    Raises:
        DevHostError: the value is not a TimeSpan.
    """
    if isinstance(value, bool):
        raise DevHostError(f"{what}: expected a TimeSpan like '00:01:00', got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    m = _TIMESPAN_RE.match(str(value).strip())
    if not m:
        raise DevHostError(f"{what}: expected a TimeSpan like '00:01:00', got {value!r}")
    days, hours, minutes, seconds, frac = m.groups()
    total = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    if frac:
        total += int(frac) / 10 ** len(frac)
    return float(total)


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` of host.json, defaults from functions-bindings-storage-queue#hostjson-settings."""

    max_polling_interval: float = 60.0  # maxPollingInterval 00:01:00
    visibility_timeout: float = 0.0  # visibilityTimeout 00:00:00: gap before a failed message is retried
    batch_size: int = 16  # batchSize 16, max 32
    new_batch_threshold: int = 8  # newBatchThreshold = batchSize / 2 (per instance)
    max_dequeue_count: int = 5  # maxDequeueCount 5
    message_encoding: str = "base64"  # messageEncoding base64 (default) | none (extension 5.0+)


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json devhost honours."""

    route_prefix: str = "api"  # extensions.http.routePrefix
    queues: QueueOptions = QueueOptions()
    function_timeout: float | None = None  # functionTimeout (enforced for async functions only)
    source: str = "<defaults>"


def load_host_json(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> HostConfig:
    """Read host.json (path, parsed mapping, or None for ``./host.json`` if present, else defaults).

    Raises:
        DevHostError: unreadable JSON or an out-of-range value.
    """
    if source is None:
        default = Path.cwd() / "host.json"
        if not default.exists():
            return HostConfig()
        source = default
    if isinstance(source, Mapping):
        data: Any = dict(source)
        where = "<dict>"
    else:
        path = Path(source)
        where = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError as exc:
            raise DevHostError(f"host.json not found: {path}") from exc
        except json.JSONDecodeError as exc:
            raise DevHostError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DevHostError(f"{where}: host.json must be a JSON object")
    extensions = data.get("extensions") or {}
    http = extensions.get("http") or {}
    q = extensions.get("queues") or {}
    if not isinstance(http, dict) or not isinstance(q, dict):
        raise DevHostError(f"{where}: extensions.http and extensions.queues must be objects")

    route_prefix = str(http.get("routePrefix", "api")).strip("/")
    batch_size = _int(q.get("batchSize", 16), "extensions.queues.batchSize", 1, 32)
    new_batch = _int(
        q.get("newBatchThreshold", max(batch_size // 2, 0)), "extensions.queues.newBatchThreshold", 0, 10_000
    )
    max_dequeue = _int(q.get("maxDequeueCount", 5), "extensions.queues.maxDequeueCount", 1, 10_000)
    encoding = str(q.get("messageEncoding", "base64")).lower()
    if encoding not in {"base64", "none"}:
        raise DevHostError(f"{where}: extensions.queues.messageEncoding must be 'base64' or 'none', got {encoding!r}")
    max_poll = parse_timespan(q.get("maxPollingInterval", "00:01:00"), what="extensions.queues.maxPollingInterval")
    if max_poll < 0.1:
        # The host rejects values under 100 ms (functions-bindings-storage-queue#hostjson-settings).
        raise DevHostError(f"{where}: extensions.queues.maxPollingInterval must be at least 00:00:00.1")
    visibility = parse_timespan(q.get("visibilityTimeout", "00:00:00"), what="extensions.queues.visibilityTimeout")
    timeout_raw = data.get("functionTimeout")
    function_timeout = None
    if timeout_raw is not None and str(timeout_raw) != "-1":
        function_timeout = parse_timespan(timeout_raw, what="functionTimeout")
    return HostConfig(
        route_prefix=route_prefix,
        queues=QueueOptions(
            max_polling_interval=max_poll,
            visibility_timeout=visibility,
            batch_size=batch_size,
            new_batch_threshold=new_batch,
            max_dequeue_count=max_dequeue,
            message_encoding=encoding,
        ),
        function_timeout=function_timeout,
        source=where,
    )


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DevHostError(f"{what}: expected an integer, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise DevHostError(f"{what}: expected an integer, got {value!r}")
    ivalue = int(value)
    if not lo <= ivalue <= hi:
        raise DevHostError(f"{what}: must be between {lo} and {hi}, got {ivalue}")
    return ivalue


_SETTING_RE = re.compile(r"%([^%]+)%")


def resolve_setting_expr(value: str, settings: Mapping[str, str], *, what: str) -> str:
    """Replace ``%NAME%`` with app setting NAME, as binding expressions do.

    Raises:
        DevHostError: a referenced setting is missing (the host refuses to index the function too).
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in settings:
            raise DevHostError(f"{what}: app setting '{name}' referenced as %{name}% is not set")
        return settings[name]

    return _SETTING_RE.sub(sub, value)


def connection_string_for(connection: str | None, settings: Mapping[str, str], *, what: str) -> str:
    """Resolve a binding's ``connection`` name the way the host does.

    Empty → ``AzureWebJobsStorage``; NAME is looked up as NAME then ``AzureWebJobsNAME``
    (functions-bindings-storage-queue-trigger#connections). Identity-based (``NAME__serviceUri``) connections are
    not emulated.

    Raises:
        DevHostError: the setting is missing.
    """
    name = connection or "AzureWebJobsStorage"
    for candidate in (name, f"AzureWebJobs{name}"):
        if settings.get(candidate):
            return settings[candidate]
    raise DevHostError(
        f"{what}: connection setting '{name}' is not set (devhost needs a connection string; "
        "identity-based NAME__serviceUri connections are not emulated)"
    )


def load_local_settings(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read ``Values`` of a local.settings.json (what ``func start`` exports as environment variables).

    Raises:
        DevHostError: unreadable JSON or a non-object ``Values``.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DevHostError(f"{p}: invalid JSON: {exc}") from exc
    values = data.get("Values", {}) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise DevHostError(f"{p}: 'Values' must be an object")
    return {str(k): "" if v is None else str(v) for k, v in values.items()}
