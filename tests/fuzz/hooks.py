"""schemathesis hooks for ``tests.fuzz.run`` (loaded in the schemathesis process through ``SCHEMATHESIS_HOOKS``).

The fuzz tenant is one real, provisioned tenant shared by every phase. ``DELETE /tenants/{id}`` on it is a legitimate
case (and checked like any other), but it deprovisions the tenant: every later case on it would then answer 404 and
the stateful phase would never get past its first step. So after a successful DELETE of the fuzz tenant the hook
provisions it again with its original configuration (``PUT``), and records that it did (``FUZZ_RESTORE_LOG``).

Environment (set by tests/fuzz/run.py): ``FUZZ_API`` (base URL ending in /api), ``FUZZ_TOKEN`` (a Console.Manage
bearer token), ``FUZZ_RESTORE`` (JSON: tenant id → PUT body), ``FUZZ_RESTORE_LOG`` (file to append to),
``FUZZ_TENANT`` and ``FUZZ_USER_TOKEN`` (the fuzz tenant and the console sign-in token of one of its users).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import schemathesis


@schemathesis.hook
def after_call(context: Any, case: Any, response: Any) -> None:
    """Re-provision the fuzz tenant right after a case deleted it."""
    if str(case.method).upper() != "DELETE" or response.status_code != 204:
        return
    tenant = str((case.path_parameters or {}).get("tenantId", "")).lower()
    bodies: dict[str, Any] = json.loads(os.environ.get("FUZZ_RESTORE", "{}"))
    if tenant not in bodies:
        return
    restored = httpx.put(
        f"{os.environ['FUZZ_API']}/tenants/{tenant}",
        json=bodies[tenant],
        headers={"Authorization": "Bearer " + os.environ["FUZZ_TOKEN"]},
        timeout=120,
    )
    with open(os.environ["FUZZ_RESTORE_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{tenant} {restored.status_code}\n")


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    """Give most positive ``POST /sso/roles`` cases a real console user's token (``FUZZ_USER_TOKEN``).

    A generated ``accessToken`` is never a token Graph accepts, so without this the route's success path (two Graph
    calls as the user, the role mapping) would never be fuzzed. A generated ``tenantId`` is replaced by the token's
    tenant (``FUZZ_TENANT``) for most of those cases and kept (a mismatch, 400) for the others. Negative cases are
    left alone: replacing their token could turn an invalid body into a valid one. Every choice is a function of the
    generated values (no random draw), so a seed still reproduces its run.
    """
    user_token = os.environ.get("FUZZ_USER_TOKEN")
    if not user_token or case.operation.path != "/sso/roles" or not isinstance(case.body, dict):
        return case
    meta = getattr(case, "meta", None)
    generated = case.body.get("accessToken")
    if meta is None or meta.generation.mode.is_negative or not isinstance(generated, str) or len(generated) % 4 == 0:
        return case
    body = {**case.body, "accessToken": user_token}
    if "tenantId" in body and len(generated) % 3:
        body["tenantId"] = os.environ.get("FUZZ_TENANT", body["tenantId"])
    case.body = body
    return case
