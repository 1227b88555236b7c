"""The declaration of one outbound Graph or Intune call (a leaf module: features declare their calls with it, and
``shared_code/permissions.py`` gathers every declaration into docs/permissions.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CallType = Literal["application", "delegated"]


@dataclass(frozen=True)
class ApiCall:
    """One outbound call.

    Attributes:
        name: stable code name (``graph.…`` / ``intune.…``), unique.
        api: ``graph`` or ``intune``.
        method: HTTP method.
        path: path relative to the API root (Graph ``/v1.0``, Intune the discovered service URL).
        permission: the least-privileged permission the call needs (what a 403 is reported as).
        type: ``application`` (client credentials) or ``delegated`` (a user's token).
        purpose: why the connector makes it.
        feature: the console-visible feature that breaks without it (status reports name this feature).
        seed_api: the ``SEED_TABLE`` row's API text this call corresponds to, or None when we add it.
    """

    name: str
    api: str
    method: str
    path: str
    permission: str
    type: CallType
    purpose: str
    feature: str
    seed_api: str | None = None
