"""The operator CLI (``python -m shared_code.cli``) driven as an operator would, against the local stack: devhost
running function_app on Azurite with the simulator, the CLI a separate process reading only a settings file (what
``make run`` writes to ``.run/stack.env``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.storage.queue.aio import QueueClient

from shared_code.cli import write_env_file
from tests.conftest import REPO
from tests.e2e.conftest import provision


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory, module_env: dict[str, str]) -> Path:
    path = tmp_path_factory.mktemp("cli") / "stack.env"
    write_env_file(path, module_env)
    return path


class Cli:
    """Runs the CLI in its own process with nothing but the settings file (the app's settings are not inherited)."""

    def __init__(self, env_file: Path, module_env: dict[str, str]) -> None:
        self.env_file = env_file
        self.env = {k: v for k, v in os.environ.items() if k not in module_env} | {"COLUMNS": "250"}

    async def run(self, *args: str, expect: int = 0) -> tuple[str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shared_code.cli", "--env-file", str(self.env_file), *args,
            cwd=REPO, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=300)
        assert process.returncode == expect, (args, out.decode()[-2000:], err.decode()[-3000:])
        return out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        out, _err = await self.run("--json", *args)
        return json.loads(out)


@pytest.fixture(scope="module")
def cli(env_file: Path, module_env: dict[str, str]) -> Cli:
    return Cli(env_file, module_env)


async def test_every_command_against_the_local_stack(
    sim: Any, api: httpx.AsyncClient, devhost: Any, cli: Cli, module_env: dict[str, str]
) -> None:
    summary = await provision(sim, api, 1331)
    tid = summary["tenant_id"]
    truth = {d["id"] for d in sim.truth(tid, summary["enrollment_groups"])["devices"]}

    # tenants: the fleet with its state (nothing polled yet).
    rows = {r["tenantId"]: r for r in await cli.json("tenants")}
    assert rows[tid]["state"] == "active" and rows[tid]["poll"] is None and rows[tid]["poisoned"] == 0
    table, _ = await cli.run("tenants")
    assert tid in table and "active tenant(s)" in table

    # plan: the dry run enrolls the ground truth and writes nothing.
    plan = await cli.json("plan", tid)
    assert plan["dryRun"] is True and plan["counts"]["enroll"] == len(truth)
    assert (await cli.json("show", tid))["status"]["lastPoll"] is None

    # poll --all: every active tenant of this stack (one here), with a progress bar on stderr.
    everyone = await cli.json("poll", "--all")
    assert {q["tenantId"] for q in everyone["queued"]} == {tid}
    await devhost.drain_queues()

    # poll --wait: enqueued through the service, run by the function app, waited for with a progress bar.
    polled = await cli.json("poll", tid, "--wait")
    assert [{k: q[k] for k in ("tenantId", "queued", "full", "collapsed")} for q in polled["queued"]] == [
        {"tenantId": tid, "queued": True, "full": False, "collapsed": False}]
    assert polled["polls"][tid]["result"] == "ok" and polled["polls"][tid]["mode"] == "full"
    shown = await cli.json("show", tid)
    assert shown["status"]["counts"]["enrolled"] == len(truth)
    text, _ = await cli.run("show", tid)
    assert "lastPoll" in text and "counts" in text

    # approve: a plan that deactivates more than 20 % is staged; the CLI approves it, the next poll applies it.
    gone = sorted(truth)[: len(truth) // 2 + 1]
    for device in gone:
        sim.mutate(tid, "delete_device", device_id=device)
    staged = await cli.json("poll", tid, "--wait")
    assert staged["polls"][tid]["result"] == "ok"
    row = {r["tenantId"]: r for r in await cli.json("tenants")}[tid]
    assert row["staged"] == len(gone) and row["planId"]
    _out, err = await cli.run("approve", tid, "--plan-id", "not-the-plan", expect=1)
    assert "ConflictError" in err and row["planId"] in err  # the current plan is shown to approve instead
    approved = await cli.json("approve", tid, "--plan-id", row["planId"])
    assert approved["approved"] == len(gone) and approved["queued"] is True and approved["planId"] == row["planId"]
    await devhost.drain_queues()
    after = await cli.json("show", tid)
    assert after["status"]["counts"]["enrolled"] == len(truth) - len(gone)
    assert after["status"]["stagedDeactivations"]["state"] != "deactivations_staged"
    _out, err = await cli.run("approve", tid, "--plan-id", row["planId"], expect=1)
    assert "ConflictError" in err and "no deactivations are staged" in err

    # poison / requeue: the host's poison copy of this tenant's message, and a message nobody can read.
    poison = module_env["POLL_QUEUE_NAME"] + "-poison"
    message = {"tenant_id": tid, "reason": "manual", "full": True, "enqueued_at": 1.0}
    async with QueueClient.from_connection_string(module_env["AzureWebJobsStorage"], poison) as queue:
        await queue.create_queue()
        await queue.send_message(base64.b64encode(json.dumps(message).encode()).decode())
        await queue.send_message("not a poll message")
    listed = await cli.json("poison")
    assert listed["count"] == 2
    assert sorted((m["tenantId"] or "", m["reason"] or "") for m in listed["messages"]) == [("", ""), (tid, "manual")]
    assert [m["tenantId"] for m in (await cli.json("poison", tid))["messages"]] == [tid]
    before = devhost.counters()["poll_tenant"]["successes"]
    requeued = await cli.json("requeue", tid)
    assert requeued == {"tenantId": tid, "requeued": 1, "tenants": [tid], "remaining": 1, "unreadable": 1}
    await devhost.drain_queues()
    assert devhost.counters()["poll_tenant"]["successes"] == before + 1
    assert (await cli.json("show", tid))["status"]["sections"]["delivery"]["requeuedBy"].startswith("cli")
    everything = await cli.json("requeue", "--all")
    assert everything["requeued"] == 0 and everything["unreadable"] == 1  # unreadable messages stay for a human
    assert (await cli.json("poison"))["count"] == 1

    # Bad input and missing settings: clear messages, no tracebacks.
    _out, err = await cli.run("show", "not-a-guid", expect=2)
    assert "is not a tenant id" in err and "Traceback" not in err
    _out, err = await cli.run("show", "00000000-0000-4000-8000-000000000000", expect=1)
    assert "is not provisioned" in err and "Traceback" not in err
