"""Timestamps as the connector writes them: ISO-8601 UTC with a ``Z`` suffix, whole seconds by default."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_iso(ts: float | None = None, *, timespec: str = "seconds") -> str:
    """Epoch seconds (default: now) as ISO-8601 UTC with ``Z`` (``timespec`` as for ``datetime.isoformat``)."""
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
