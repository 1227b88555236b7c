"""The operator CLI: ``python -m shared_code.cli <command>`` (docs/operations.md §5).

    tenants                         every tenant with its state
    show <tenant>                   one tenant's document
    plan <tenant> [--full]          the dry-run plan of the next poll (writes nothing)
    poll <tenant>|--all [--full] [--wait]
    approve <tenant> --plan-id ID   approve the staged deactivations of that plan (its id: show / tenants / plan)
    poison [<tenant>]               messages in the poll queue's poison queue
    requeue <tenant>|--all          move poison messages back to the poll queue

Everything goes through the app's own services (``shared_code.bootstrap.Container`` with the app's settings): no
logic of its own, so the CLI and the HTTP API cannot disagree. Settings come from the environment, the same names as
the function app; when ``AzureWebJobsStorage`` is not set, from ``.run/stack.env``, which ``make run`` writes for the
local stack (so the CLI works against it with no setup). ``--json`` prints machine-readable output.
Exit codes: 0 ok, 1 the operation failed (message on stderr), 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from shared_code.bootstrap import Container
from shared_code.errors import ConnectorError, ValidationError
from shared_code.settings import SettingsError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ENV_FILE = ROOT / ".run" / "stack.env"
STORAGE_SETTINGS = ("AzureWebJobsStorage", "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__tableServiceUri")
WAIT_SECONDS = 600.0
WAIT_INTERVAL = 0.5


class CliError(Exception):
    """A failure reported as one line on stderr (exit 1)."""


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``#`` comments and blank lines skipped; no quoting)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """Write settings as ``KEY=VALUE`` lines (owner-only: they include local secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `make run` (scripts/run_stack.py): the local stack's app settings for shared_code.cli."]
    lines += [f"{k}={v}" for k, v in sorted(env.items()) if "\n" not in v]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def load_settings_env(env_file: str | None) -> str:
    """Put the settings into ``os.environ`` (already-set variables win); returns where they came from."""
    if env_file is None:
        if any(os.environ.get(name) for name in STORAGE_SETTINGS):
            return "environment"
        if not DEFAULT_ENV_FILE.exists():
            msg = (f"no storage settings: set AzureWebJobsStorage (or AzureWebJobsStorage__accountName) as for the "
                   f"function app, or start the local stack with `make run` (writes {DEFAULT_ENV_FILE})")
            raise CliError(msg)
        path = DEFAULT_ENV_FILE
    else:
        path = Path(env_file)
        if not path.exists():
            raise CliError(f"--env-file {path}: no such file")
    for key, value in read_env_file(path).items():
        os.environ.setdefault(key, value)
    return str(path)


# ---- output -------------------------------------------------------------------------------------------------------
class Out:
    """Rich tables for people, JSON for scripts."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        self.console = Console(soft_wrap=False)
        self.err = Console(stderr=True)

    def json(self, value: Any) -> None:
        """Print one JSON document."""
        print(json.dumps(value, default=str, indent=2))

    def table(self, title: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table (``-`` for empty cells)."""
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*["-" if v is None or v == "" else str(v) for v in row])
        self.console.print(table)

    def kv(self, title: str, values: Mapping[str, Any]) -> None:
        """A two-column table of a mapping (nested values as compact JSON)."""
        rows = [[k, v if not isinstance(v, dict | list) else json.dumps(v, default=str)] for k, v in values.items()]
        self.table(title, ["field", "value"], rows)

    def progress(self) -> Any:
        """A progress bar on stderr, so stdout stays one table or one JSON document."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()]
        return Progress(*columns, console=self.err, transient=self.as_json)


# ---- commands -----------------------------------------------------------------------------------------------------
def _services(c: Container) -> tuple[Any, Any]:
    from shared_code.enrollment.poison import build_poison_service
    from shared_code.enrollment.service import build_enrollment_service

    return c.service(build_enrollment_service), c.service(build_poison_service)


def _caller() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _tenant_row(record: Any, running: bool, poisoned: int) -> dict[str, Any]:
    status = record.status
    poll, quarantine = status.get("poll", {}), status.get("quarantine", {})
    guard, heartbeat = status.get("guard", {}), status.get("heartbeat", {})
    return {
        "tenantId": record.config.tenant_id,
        "state": record.state,
        "poll": poll.get("result") or ("running" if running else None),
        "mode": poll.get("mode"),
        "lastPollAt": poll.get("lastErrorAt") if poll.get("result") == "failed" else poll.get("finishedAt"),
        "enrolled": status.get("counts", {}).get("enrolled"),
        "quarantine": quarantine.get("state") or "ok",
        "failures": quarantine.get("failures") or 0,
        "staged": guard.get("staged") if guard.get("state") == "deactivations_staged" else 0,
        "planId": guard.get("planId") if guard.get("state") == "deactivations_staged" else None,
        "heartbeat": heartbeat.get("state"),
        "intune": status.get("intune", {}).get("state"),
        "delivery": status.get("delivery", {}).get("state"),
        "poisoned": poisoned,
        "running": running,
        "lastError": poll.get("lastError"),
    }


async def cmd_tenants(c: Container, args: argparse.Namespace, out: Out) -> None:
    enrollment, poison = _services(c)
    records = await enrollment.tenants.list_active()
    leases = await enrollment.leases.all()
    now = c.clock.now()
    poisoned: dict[str, int] = {}
    for message in await poison.list():
        if message.tenant_id:
            poisoned[message.tenant_id] = poisoned.get(message.tenant_id, 0) + 1
    rows = []
    for record in sorted(records, key=lambda r: r.config.tenant_id):
        lease = leases.get(record.config.tenant_id)
        running = bool(lease and lease.holder and lease.expires_at > now)
        rows.append(_tenant_row(record, running, poisoned.get(record.config.tenant_id, 0)))
    if out.as_json:
        out.json(rows)
        return
    columns = ["tenantId", "poll", "mode", "lastPollAt", "enrolled", "quarantine", "staged", "planId", "heartbeat",
               "intune", "delivery", "poisoned"]
    out.table(f"{len(rows)} active tenant(s)", columns, [[r[k] for k in columns] for r in rows])


async def cmd_show(c: Container, args: argparse.Namespace, out: Out) -> None:
    from shared_code.intune.tenant_api import tenant_document

    enrollment, _poison = _services(c)
    record = await enrollment.tenants.get(args.tenant)
    if record is None:
        raise CliError(f"tenant {args.tenant} is not provisioned")
    document = tenant_document(record)
    if out.as_json:
        out.json(document)
        return
    config = document["config"]
    out.kv(f"tenant {args.tenant} ({document['state']})", {
        "enrollmentGroups": config["enrollmentGroups"], "platforms": config["platforms"],
        "configVersion": document["configVersion"], "updatedAt": document["updatedAt"],
    })
    status = document["status"]
    shown: list[tuple[str, Mapping[str, Any] | None]] = [
        ("lastPoll", status["lastPoll"]), ("counts", status["counts"]), ("quarantine", status["quarantine"]),
        ("stagedDeactivations", status["stagedDeactivations"]), ("intune", status["intune"]),
        ("heartbeat", status["heartbeat"]),
    ]
    for name, section in shown:
        if section:
            out.kv(name, section)
    for name, section in sorted(status.get("sections", {}).items()):
        out.kv(name, section)
    if status.get("problems"):
        out.table("problems", ["problem"], [[p] for p in status["problems"]])


async def cmd_plan(c: Container, args: argparse.Namespace, out: Out) -> None:
    enrollment, _poison = _services(c)
    plan = await enrollment.dry_run(args.tenant, full=args.full)
    if out.as_json:
        out.json(plan)
        return
    out.kv(f"dry run of tenant {args.tenant} ({plan['mode']}): nothing was written", {
        **plan["counts"], "staged": plan.get("staged"), "planId": plan.get("planId"), "desired": plan.get("desired"),
        "enrolled": plan.get("enrolled"), "usage": plan.get("usage"),
    })
    items = plan.get("items") or []
    if items:
        out.table(f"first {len(items)} item(s)" + (" (truncated)" if plan.get("truncated") else ""),
                  ["action", "deviceObjectId", "operatingSystem", "reason"],
                  [[i.get("action"), i.get("deviceObjectId") or i.get("id"), i.get("operatingSystem"),
                    i.get("reason")] for i in items])


async def _wait_for_polls(
    c: Container, tenants: list[str], since: float, out: Out, limit_seconds: float
) -> dict[str, Any]:
    """Until each tenant's lease shows a poll that started after ``since`` and has finished."""
    enrollment, _poison = _services(c)
    pending = set(tenants)
    deadline = time.monotonic() + limit_seconds
    with out.progress() as progress:
        task = progress.add_task("waiting for the poll(s)", total=len(tenants))
        while pending and time.monotonic() < deadline:
            leases = await enrollment.leases.all()
            for tid in list(pending):
                lease = leases.get(tid)
                if lease and lease.last_started >= since and lease.last_finished >= lease.last_started:
                    pending.discard(tid)
                    progress.advance(task)
            if pending:
                await asyncio.sleep(WAIT_INTERVAL)
    results = {}
    for tid in tenants:
        record = await enrollment.tenants.get(tid)
        results[tid] = (record.status.get("poll", {}) if record else {}) | {"done": tid not in pending}
    if pending:
        raise CliError(f"no poll finished within {limit_seconds:g} s for: {', '.join(sorted(pending))} "
                       "(is the function app running? `make run` locally)")
    return results


async def cmd_poll(c: Container, args: argparse.Namespace, out: Out) -> None:
    enrollment, _poison = _services(c)
    if args.all:
        tenants = sorted(r.config.tenant_id for r in await enrollment.tenants.list_active())
    elif args.tenant:
        tenants = [args.tenant]
    else:
        raise CliError("poll needs a tenant id or --all")
    since = c.clock.now()
    queued = []
    with out.progress() as progress:
        task = progress.add_task("enqueueing polls", total=len(tenants))
        for tid in tenants:
            queued.append(await enrollment.request_sync(tid, full=args.full))
            progress.advance(task)
    result: dict[str, Any] = {"queued": queued}
    if args.wait:
        result["polls"] = await _wait_for_polls(c, tenants, since, out, args.timeout)
    if out.as_json:
        out.json(result)
        return
    out.table("poll requested", ["tenantId", "full"], [[q["tenantId"], q["full"]] for q in queued])
    for tid, poll in result.get("polls", {}).items():
        out.kv(f"poll of {tid}", poll)


async def cmd_approve(c: Container, args: argparse.Namespace, out: Out) -> None:
    enrollment, _poison = _services(c)
    result = await enrollment.approve(args.tenant, _caller(), args.plan_id)
    if out.as_json:
        out.json(result)
        return
    out.kv(f"approved for {args.tenant}: applied by the poll now queued", result)


async def cmd_poison(c: Container, args: argparse.Namespace, out: Out) -> None:
    _enrollment, poison = _services(c)
    messages = [m.to_dict() for m in await poison.list(args.tenant)]
    if out.as_json:
        out.json({"queue": poison.poison_queue_name, "count": await poison.count(), "messages": messages})
        return
    columns = ["messageId", "tenantId", "reason", "insertedAt", "dequeueCount"]
    out.table(f"{poison.poison_queue_name}: {await poison.count()} message(s) (first 32 shown)", columns,
              [[m[k] if k != "tenantId" else (m[k] or "(unreadable)") for k in columns] for m in messages])


async def cmd_requeue(c: Container, args: argparse.Namespace, out: Out) -> None:
    _enrollment, poison = _services(c)
    if not args.all and not args.tenant:
        raise CliError("requeue needs a tenant id or --all")
    total = await poison.count()
    with out.progress() as progress:
        task = progress.add_task("re-queueing poison messages", total=total or None)

        def advance(seen: int, requeued: int) -> None:
            progress.update(task, completed=seen, total=max(total, seen))

        result = await poison.requeue(tenant_id=None if args.all else args.tenant, caller=_caller(),
                                      on_progress=advance)
    if out.as_json:
        out.json(result)
        return
    out.kv("re-queued", result)


COMMANDS: dict[str, Callable[[Container, argparse.Namespace, Out], Coroutine[Any, Any, None]]] = {
    "tenants": cmd_tenants, "show": cmd_show, "plan": cmd_plan, "poll": cmd_poll, "approve": cmd_approve,
    "poison": cmd_poison, "requeue": cmd_requeue,
}


def _guid(value: str) -> str:
    from shared_code.domain.ids import is_guid

    if not is_guid(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a tenant id (GUID)")
    return value.lower()


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m shared_code.cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--env-file", help=f"settings file (default: the environment, else {DEFAULT_ENV_FILE})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tenants", help="every tenant with its state")
    sub.add_parser("show", help="one tenant's document").add_argument("tenant", type=_guid)
    approve = sub.add_parser("approve", help="approve the staged deactivations of one plan")
    approve.add_argument("tenant", type=_guid)
    approve.add_argument("--plan-id", "--plan", dest="plan_id", required=True,
                         help="the staged plan's id (stagedDeactivations.planId in show, planId in tenants)")
    plan = sub.add_parser("plan", help="the dry-run plan of the next poll (nothing written)")
    plan.add_argument("tenant", type=_guid)
    plan.add_argument("--full", action="store_true", help="plan a full reconcile")
    poll = sub.add_parser("poll", help="enqueue a poll now")
    poll.add_argument("tenant", type=_guid, nargs="?")
    poll.add_argument("--all", action="store_true", help="every active tenant")
    poll.add_argument("--full", action="store_true", help="a full reconcile")
    poll.add_argument("--wait", action="store_true", help="wait until the poll has run")
    poll.add_argument("--timeout", type=float, default=WAIT_SECONDS, help="--wait at most this long (s)")
    poison = sub.add_parser("poison", help="messages in the poison queue")
    poison.add_argument("tenant", type=_guid, nargs="?")
    requeue = sub.add_parser("requeue", help="move poison messages back to the poll queue")
    requeue.add_argument("tenant", type=_guid, nargs="?")
    requeue.add_argument("--all", action="store_true", help="every tenant's messages")
    return p


async def run(args: argparse.Namespace, out: Out) -> None:
    """Build the container from the settings and run one command."""
    from shared_code.settings import Settings

    container = Container(Settings.from_env())
    try:
        await COMMANDS[args.command](container, args, out)
    finally:
        await container.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parser().parse_args(argv)
    out = Out(args.json)
    try:
        load_settings_env(args.env_file)
    except CliError as exc:
        out.err.print(f"error: {exc}", markup=False)
        return 2
    try:
        asyncio.run(run(args, out))
    except SettingsError as exc:
        out.err.print(f"error: settings: {exc}", markup=False)
        return 2
    except (CliError, ConnectorError) as exc:
        where = f" ({exc.field})" if isinstance(exc, ValidationError) else ""
        out.err.print(f"error: {type(exc).__name__}{where}: {exc}", markup=False)
        details = getattr(exc, "details", None)
        if details:
            out.err.print(json.dumps(details, default=str, indent=2), markup=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
