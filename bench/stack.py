"""One tenant through the function app's own path: devhost running ``function_app.py`` in this (fresh) process.

Job ``stack`` (bench/worker.py): the connector is provisioned through its HTTP API (``PUT /api/tenants/{id}``), then
every poll is the ``dispatch_polls`` timer (fired with ``DevHost.run_timer``) feeding the ``poll_tenant`` queue
trigger on Azurite, drained by devhost's queue poller with host.json's settings (batch size, visibility timeout,
``functionTimeout``, poison queue). Continuation messages, redeliveries after a timeout and retries simply show up as
more invocations. State lives in the Table store on Azurite. Nothing of the product is replaced: the only seams are
the container's clock (moved forward by the poll interval between cycles, so the next tick finds the tenant due)
and a counting hook on the Table clients (azure-core ``raw_request_hook``).

Phases: ``full`` (dispatch → queues drained: the full reconcile, however many invocations it takes, capped by the
job's ``cap_s``), ``catchup`` (the cycles that finish the first devices/delta round), ``quiet`` (the first cycle with
nothing left to do), ``churn`` (1 % of the in-scope devices changed: a third deleted, a third added to in-scope
owners, a third owned by new users joining the first enrollment group). After ``full`` and ``churn`` the enrolled
rows read back through ``GET /api/tenants/{id}/devices`` are compared with the simulator's ground truth.
Peak RSS (``VmHWM``) is read when ``full`` ends, before the bench itself reads anything big.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import time
from pathlib import Path
from typing import Any

import httpx

from bench.worker import Phase, TableCounter, finish, peak_rss_bytes, rss_bytes

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ["iOS", "iPadOS", "Android"]
WRITE_METHODS = ("POST", "PUT", "PATCH", "MERGE", "DELETE")


class BenchClock:
    """The container's clock: real time plus an offset the bench moves by the poll interval between cycles."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Seconds since the epoch, shifted."""
        return time.time() + self.offset


class TableWrites(TableCounter):
    """TableCounter that also counts entity writes per table (leases apart from the poll's own data)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_table: dict[str, int] = {}

    @staticmethod
    def _table(url: str) -> str:
        parts = url.split("?")[0].split("/")
        name = parts[4] if len(parts) > 4 else ""  # http://host:port/<account>/<table>(keys)
        return re.sub(r"\(.*$", "", name)

    def hook(self, request: Any) -> None:
        """Count the call (TableCounter) and its entity writes by table."""
        super().hook(request)
        req = request.http_request
        if self._kind(req) == "batch":
            try:
                (changeset,) = req.multipart_mixed_info[0]
                parts = changeset.multipart_mixed_info[0]
            except (AttributeError, TypeError, ValueError, IndexError):
                parts = []
            for part in parts:
                t = self._table(part.url)
                self.by_table[t] = self.by_table.get(t, 0) + 1
        elif req.method in WRITE_METHODS and self._kind(req) != "create_table":
            t = self._table(req.url)
            self.by_table[t] = self.by_table.get(t, 0) + 1


class InvocationLog(logging.Handler):
    """Collects devhost's ``Executed 'Functions.X' (Succeeded|Failed, Id=…, Duration=…ms)`` lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.done: list[tuple[str, bool, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep (function, succeeded, seconds)."""
        if isinstance(record.msg, str) and record.msg.startswith("Executed 'Functions.") and record.args:
            args = record.args if isinstance(record.args, tuple) else ()
            if len(args) >= 3:
                self.done.append((str(args[0]), "Succeeded" in record.msg, float(str(args[2])) / 1000))

    def since(self, mark: int, name: str) -> dict[str, Any]:
        """Invocations of ``name`` after ``mark``: count, failures, longest and total seconds."""
        runs = [(ok, s) for fn, ok, s in self.done[mark:] if fn == name]
        return {"count": len(runs), "failed": sum(1 for ok, _ in runs if not ok),
                "longest_s": round(max((s for _, s in runs), default=0.0), 2),
                "total_s": round(sum(s for _, s in runs), 2)}


def stack_env(job: dict[str, Any]) -> dict[str, str]:
    """The app settings ``make run`` gives the app (scripts/run_stack.py), on this job's Azurite and prefix."""
    from scripts.run_stack import build_env

    env = build_env(job["info"], job["connection_string"])
    env["TABLE_PREFIX"] = job["table_prefix"]
    env["POLL_QUEUE_NAME"] = f"polls-{job['table_prefix'].lower()}"
    for key, value in (job.get("settings") or {}).items():
        env[key] = str(value)
    return env


async def graph_totals(admin: httpx.AsyncClient, tenant_id: str) -> dict[str, Any]:
    """The simulator's counters for one tenant: Graph requests / RU / 429s (tokens and Intune apart), by route.

    ``requests`` are HTTP requests, as the lower bound counts them: a ``$batch`` is one (its inner requests are
    charged RU and throttled one by one, and counted apart as ``batched``).
    """
    data = (await admin.get("/_sim/counters", params={"tenant": tenant_id})).json().get(tenant_id) or {}
    out: dict[str, Any] = {"requests": 0, "ru": 0, "throttled": 0, "batched": 0, "tokens": 0, "intune": 0,
                           "routes": {}, "routes_ru": {}}
    for label, c in (data.get("routes") or {}).items():
        if "oauth2" in label:
            out["tokens"] += c["requests"]
        elif label.startswith("/v1.0") or label.startswith("batch:"):
            out["requests"] += c["requests"] - c.get("batched", 0)
            out["batched"] += c.get("batched", 0)
            out["ru"] += c["ru"]
            out["throttled"] += c["throttled"]
            out["routes"][label] = c["requests"]
            out["routes_ru"][label] = c["ru"]
        else:
            out["intune"] += c["requests"]
    return out


async def job_stack(job: dict[str, Any]) -> dict[str, Any]:
    """Provision through HTTP, then full / catch-up / quiet / churn cycles through timer + queue (see module)."""
    from bench.worker import counting_storage
    from devhost import DevHost, load_app
    from shared_code.bootstrap import Container, use_container
    from shared_code.settings import Settings

    info = job["info"]
    tid: str = job["tenant_id"]
    groups: list[str] = job["groups"]
    cap = float(job.get("cap_s") or 1800)
    env = stack_env(job)
    os.environ.update(env)
    counter = TableWrites()
    clock = BenchClock()
    container = Container(Settings.from_env(env), clock=clock)
    container._storage = counting_storage(env["AzureWebJobsStorage"], env["TABLE_PREFIX"], counter)
    use_container(container)
    invocations = InvocationLog()
    devlog = logging.getLogger("devhost")
    devlog.setLevel(logging.INFO)
    devlog.addHandler(invocations)
    devlog.propagate = False
    base_rss = rss_bytes()
    memprof = None
    if os.environ.get("BENCH_MEMPROFILE"):  # bench/memprofile.py: RSS by full-reconcile phase (off by default)
        from bench.memprofile import MemProfile

        memprof = MemProfile(os.environ["BENCH_MEMPROFILE"], int(os.environ.get("BENCH_MEMPROFILE_TRACE") or 0))
        memprof.start()
    host = DevHost(load_app("function_app:app"), env, port=0, host_json=ROOT / "host.json", enable_timers=False,
                   max_polling_interval=0.5)
    admin = httpx.AsyncClient(base_url=info["base_url"], timeout=900,
                              verify=ssl.create_default_context(cafile=info["ca_path"]))
    pids = (job.get("sim_pid"), job.get("azurite_pid"))
    phases: dict[str, Any] = {}
    checks: dict[str, Any] = {}
    interval = 60.0 * float(env.get("POLL_INTERVAL_MINUTES") or 5)
    await host.start()
    idle_rss = rss_bytes()
    api = httpx.AsyncClient(base_url=host.base_url, timeout=600)
    try:
        token = (await admin.post("/_sim/tokens/console", json={"roles": ["Console.Manage", "Console.Read"]})).json()
        api.headers["Authorization"] = f"Bearer {token['access_token']}"

        async def cycle(name: str, *, advance: bool = True, limit_s: float = 600) -> dict[str, Any]:
            if advance:
                clock.offset += interval
            await admin.post("/_sim/counters/reset")
            w0, t0, mark = dict(counter.by_table), counter.snapshot(), len(invocations.done)
            converged = True
            with Phase(*pids) as ph:
                await host.run_timer("dispatch_polls")
                try:
                    await host.drain_queues(timeout=limit_s)
                except TimeoutError:
                    converged = False
            writes = {k: v - w0.get(k, 0) for k, v in counter.by_table.items() if v - w0.get(k, 0)}
            lease_tables = {k for k in writes if k.endswith("leases")}
            res = {**ph.result, "drained": converged, **(await graph_totals(admin, tid)),
                   "invocations": invocations.since(mark, "poll_tenant"),
                   "entity_writes": sum(v for k, v in writes.items() if k not in lease_tables),
                   "lease_writes": sum(writes[k] for k in lease_tables),
                   "writes_by_table": {k[len(env['TABLE_PREFIX']):]: v for k, v in writes.items()},
                   "table_calls": {k: v - t0.get(k, 0) for k, v in counter.snapshot().items()
                                   if v - t0.get(k, 0)},
                   "queues": await host.queue_counts(),
                   "loadavg_1m": round(os.getloadavg()[0], 2)}
            phases[name] = res
            return res

        # ---- provisioning through the HTTP API --------------------------------------------------------------
        await admin.post("/_sim/counters/reset")
        with Phase(*pids) as ph:
            r = await api.put(f"/api/tenants/{tid}", json={"enrollmentGroups": groups, "platforms": PLATFORMS})
        phases["provision"] = {**ph.result, "status": r.status_code, **(await graph_totals(admin, tid))}
        if r.status_code >= 300:
            raise RuntimeError(f"provisioning answered {r.status_code}: {r.text[:300]}")
        await host.drain_queues(timeout=120)  # whatever provisioning enqueued (nothing is polled before dispatch)

        # ---- the first full reconcile, however many invocations it takes -----------------------------------
        full = await cycle("full", advance=False, limit_s=cap)
        full["peak_rss_mb"] = round(peak_rss_bytes() / 2**20, 1)
        if memprof is not None:
            memprof.mark("full")
        checks["after_full"] = await compare(api, admin, tid, groups)
        # Converged means stored == truth, not merely "queues drained": a run whose continuation chain stopped is
        # continued by the next scheduled polls, and those cycles count into the figures (``scheduled_cycles``).
        cycles = 0
        while full["drained"] and not checks["after_full"]["equal"] and full["wall_s"] < cap and cycles < 30:
            cycles += 1
            more = await cycle("_more")
            phases.pop("_more")
            for k in ("wall_s", "cpu_s", "simulator_cpu_s", "azurite_cpu_s", "requests", "ru", "throttled",
                      "batched", "entity_writes", "lease_writes"):
                full[k] = round(full.get(k, 0) + more.get(k, 0), 3)
            inv, add = full["invocations"], more["invocations"]
            inv.update(count=inv["count"] + add["count"], failed=inv["failed"] + add["failed"],
                       longest_s=max(inv["longest_s"], add["longest_s"]),
                       total_s=round(inv["total_s"] + add["total_s"], 2))
            for route, n in more["routes"].items():
                full["routes"][route] = full["routes"].get(route, 0) + n
            for route, n in more["routes_ru"].items():
                full["routes_ru"][route] = full["routes_ru"].get(route, 0) + n
            full["drained"] = more["drained"]
            checks["after_full"] = {**await compare(api, admin, tid, groups), "scheduled_cycles": cycles}
        full["scheduled_cycles"] = cycles
        if not full["drained"] or not checks["after_full"]["equal"]:
            return finish({"job": "stack", "tenant_id": tid, "phases": phases, "checks": checks,
                           "idle_rss_mb": round(idle_rss / 2**20, 1)}, base_rss)

        # ---- catch-up: the first devices/delta round after its first page; the first quiet cycle is 'quiet' ----
        # The round's later pages ride the full phase's continuation chain (engine: one step per message until the
        # deltaLink). They are the devices cursor's cost, not the reconcile's: counted here, apart from "full", so
        # "full" compares with the reconcile's lower bound (which owes only the round's first page).
        labels = [k for k in full["routes"] if k.split("?")[0].endswith("/devices/delta")]
        chained = max(0, sum(full["routes"][k] for k in labels) - 1)
        chained_ru = round(sum(full["routes_ru"][k] for k in labels) * chained / max(1, chained + 1))
        full["requests"] -= chained
        full["ru"] -= chained_ru
        catch: dict[str, Any] = {"polls": 0, "requests": chained, "ru": chained_ru, "throttled": 0,
                                 "entity_writes": 0, "wall_s": 0.0, "longest_invocation_s": 0.0,
                                 "in_full_chain": {"requests": chained, "ru": chained_ru}}
        for _ in range(int(job.get("max_catchup") or 60)):
            res = await cycle("_cycle")
            phases.pop("_cycle")
            if res["requests"] <= 2 and not res["entity_writes"]:
                phases["quiet"] = res
                break
            catch["polls"] += 1
            for k in ("requests", "ru", "throttled", "entity_writes"):
                catch[k] += res[k]
            catch["wall_s"] = round(catch["wall_s"] + res["wall_s"], 3)
            catch["longest_invocation_s"] = max(catch["longest_invocation_s"], res["invocations"]["longest_s"])
        phases["catchup"] = catch

        # ---- 1 % churn --------------------------------------------------------------------------------------
        truth = (await admin.get(f"/_sim/tenants/{tid}/truth", params=[
            *(("groups", g) for g in groups), ("platforms", ",".join(PLATFORMS))])).json()
        changed = await churn(admin, tid, groups, truth["devices"], float(job.get("churn") or 0.01))
        del truth
        res = await cycle("churn")
        res["changes"] = changed
        checks["after_churn"] = await compare(api, admin, tid, groups)
        # A poll that leaves stored state short of the truth is followed by up to three more cycles: how many it
        # takes is the figure (0 = the churn poll itself converged).
        for extra in range(1, 4):
            if checks["after_churn"]["equal"]:
                break
            again = await cycle(f"churn_settle_{extra}")
            checks["after_churn"] = {**await compare(api, admin, tid, groups), "extra_cycles": extra,
                                     "extra_requests": again["requests"]}
    finally:
        if memprof is not None:
            memprof.stop()
        await api.aclose()
        await host.stop()
        await admin.aclose()
        await container.close()
        use_container(None)
    return finish({"job": "stack", "tenant_id": tid, "phases": phases, "checks": checks,
                   "idle_rss_mb": round(idle_rss / 2**20, 1)}, base_rss)


async def churn(admin: httpx.AsyncClient, tid: str, groups: list[str], in_scope: list[dict[str, Any]],
                share: float) -> int:
    """Change ``share`` of the in-scope devices: delete a third, add a third to in-scope owners, and a third owned
    by new users who join the first enrollment group. Returns the number of changes."""
    n = max(3, round(len(in_scope) * share))
    third = n // 3
    picks = sorted(in_scope, key=lambda d: d["id"])
    ops: list[dict[str, Any]] = [{"op": "delete_device", "device_id": d["id"]} for d in picks[:third]]
    owners = [d["ownerId"] for d in picks[third:]][:third]
    ops += [{"op": "add_device", "operatingSystem": "iOS", "owner_id": o} for o in owners]
    (await admin.post(f"/_sim/tenants/{tid}/mutations", json=ops)).raise_for_status()
    added = n - 2 * third
    users = (await admin.post(f"/_sim/tenants/{tid}/mutations", json=[
        {"op": "add_user", "displayName": f"Bench Joiner {i}"} for i in range(added)])).json()
    ids = [r["id"] for r in users["results"]]
    ops = [{"op": "add_device", "operatingSystem": "Android", "owner_id": u} for u in ids]
    ops += [{"op": "add_member", "group_name": groups[0], "member_id": u} for u in ids]
    (await admin.post(f"/_sim/tenants/{tid}/mutations", json=ops)).raise_for_status()
    return n


async def compare(api: httpx.AsyncClient, admin: httpx.AsyncClient, tid: str, groups: list[str]) -> dict[str, Any]:
    """Enrolled rows (``GET /api/tenants/{id}/devices``, all pages) against the simulator's ground truth."""
    enrolled: set[str] = set()
    after: str | None = None
    while True:
        params = {"limit": "1000", **({"after": after} if after else {})}
        r = await api.get(f"/api/tenants/{tid}/devices", params=params)
        r.raise_for_status()
        page = r.json()
        enrolled.update(d["id"] for d in page["devices"] if d.get("state") == "enrolled")
        after = page.get("next")
        if not after:
            break
    answer = await admin.get(f"/_sim/tenants/{tid}/truth",
                             params=[*(("groups", g) for g in groups), ("platforms", ",".join(PLATFORMS))])
    truth = {d["id"] for d in answer.json()["devices"]}
    return {"truth": len(truth), "enrolled": len(enrolled), "missing": len(truth - enrolled),
            "extra": len(enrolled - truth), "equal": truth == enrolled}
