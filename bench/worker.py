"""One measurement in its own process: ``python -m bench.worker < job.json`` prints one JSON result line.

The job comes on stdin (it holds the simulator's client secret: kept off the command line). A process per run
keeps the figures honest: peak RSS (``VmHWM``) and CPU time (``getrusage``) belong to this run
alone, nothing warmed up by an earlier run. The job says what to run:

* ``serve``   — the simulator's serving speed: a plain httpx walk of ``/devices?$top=999&$select=…`` and a first
  ``/devices/delta`` round, from this process (the client), counting devices per second.
* ``sync``    — the real :class:`PollEngine` against the simulator: full reconcile, the polls that finish the first
  devices/delta round, a quiet poll, then a poll after one membership change; in-memory stores or the Table
  stores on Azurite.
* ``baseline`` — the seed's per-user ``ownedDevices`` strategy (bench/baseline.py).
* ``fleet``   — provisioning + heartbeats for every tenant of a fleet with ``HEARTBEAT_CONCURRENCY``.

Each phase reports requests, resource units and 429s (the connector's ``UsageMeter`` and/or the simulator's own
counters), wall time, CPU time of this process, and where it applies table writes. Memory: ``VmHWM`` (peak
RSS of this process), the RSS before the work started, and an RSS timeline sampled every 20 ms against the number of
Graph requests made so far (shows whether memory grows while pages stream). With ``"tracemalloc": true`` the job
also reports the Python heap peak (tracemalloc slows the run down; use a separate run for timings).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import ssl
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SERVE_SELECT = "id,deviceId,operatingSystem,operatingSystemVersion"


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


def peak_rss_bytes() -> int:
    """Peak RSS of this process image (``VmHWM``).

    Not ``ru_maxrss``: Linux carries the parent's high-water mark over fork + exec into it, so a small child of a
    big parent would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) used so far by another process (the simulator, Azurite), 0 when unknown."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def self_cpu() -> float:
    """CPU seconds (user + system) used so far by this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class RssSampler:
    """Samples RSS every ``interval`` s in a thread, with a progress figure (e.g. Graph requests so far)."""

    def __init__(self, progress: Callable[[], int], interval: float = 0.02) -> None:
        self._progress = progress
        self._interval = interval
        self._stop = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (seconds, progress, rss)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, self._progress(), rss_bytes()))
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.perf_counter() - self._t0, self._progress(), rss_bytes()))

    def quartiles(self) -> dict[str, int]:
        """Highest RSS seen up to 25/50/75/100 % of the run's progress (requests), in bytes."""
        if not self.samples:
            return {}
        total = max(1, self.samples[-1][1])
        out: dict[str, int] = {}
        for q in (25, 50, 75, 100):
            upto = [rss for _, prog, rss in self.samples if prog * 100 <= total * q]
            out[f"p{q}"] = max(upto) if upto else self.samples[0][2]
        return out


class Phase:
    """Wall, CPU and (optionally) other processes' CPU for one phase."""

    def __init__(self, sim_pid: int | None = None, azurite_pid: int | None = None) -> None:
        self._pids = {"simulator": sim_pid, "azurite": azurite_pid}
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Phase:
        self._t0 = time.perf_counter()
        self._c0 = self_cpu()
        self._o0 = {k: proc_cpu(v) for k, v in self._pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        self.result["wall_s"] = round(time.perf_counter() - self._t0, 3)
        self.result["cpu_s"] = round(self_cpu() - self._c0, 3)
        for k, pid in self._pids.items():
            if pid:
                self.result[f"{k}_cpu_s"] = round(proc_cpu(pid) - self._o0[k], 3)


def finish(result: dict[str, Any], base_rss: int) -> dict[str, Any]:
    """Add process-wide memory and CPU figures."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result["process"] = {
        "base_rss_mb": round(base_rss / 2**20, 1),
        "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
        "ru_maxrss_mb": round(ru.ru_maxrss / 1024, 1),  # includes the parent's peak at fork (see peak_rss_bytes)
        "end_rss_mb": round(rss_bytes() / 2**20, 1),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        # The box is shared (other jobs may run): the 1-minute load average at the end of the run.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if tracemalloc.is_tracing():
        cur, peak = tracemalloc.get_traced_memory()
        result["process"]["py_heap_end_mb"] = round(cur / 2**20, 1)
        result["process"]["py_heap_peak_mb_total"] = round(peak / 2**20, 1)
    return result


def deep_size(obj: Any) -> int:
    """Bytes held by an object graph (containers, dataclasses, strings; each object counted once)."""
    seen: set[int] = set()
    stack = [obj]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.append(vars(o))
        elif hasattr(o, "__slots__"):
            stack.extend(getattr(o, a) for a in o.__slots__ if hasattr(o, a))
    return total


def _mib(n: int) -> float:
    return round(n / 2**20, 2)


# ---- admin helpers -------------------------------------------------------------------------------------------


def admin_client(info: dict[str, Any]) -> httpx.Client:
    """The simulator's /_sim API (not the connector's traffic: never counted as connector requests)."""
    return httpx.Client(base_url=info["base_url"], timeout=900,
                        verify=ssl.create_default_context(cafile=info["ca_path"]))


def sim_totals(admin: httpx.Client, tenants: list[str] | None = None) -> dict[str, Any]:
    """Summed simulator counters (requests, RU, 429s) over the given tenants (all when None), with routes."""
    data: dict[str, Any] = admin.get("/_sim/counters").json()
    out: dict[str, Any] = {"requests": 0, "ru": 0, "throttled": 0, "routes": {}}
    for tid, entry in data.items():
        if tenants is not None and tid not in tenants:
            continue
        for route, c in (entry.get("routes") or {}).items():
            out["requests"] += c.get("requests", 0)
            out["ru"] += c.get("ru", 0)
            out["throttled"] += c.get("throttled", 0)
            r = out["routes"].setdefault(route, {"requests": 0, "ru": 0, "throttled": 0})
            for k in ("requests", "ru", "throttled"):
                r[k] += c.get(k, 0)
    return out


# ---- serve ---------------------------------------------------------------------------------------------------


def job_serve(job: dict[str, Any]) -> dict[str, Any]:
    """Walk the device list and a first devices/delta round with a bare httpx client."""
    info = job["info"]
    tid = job["tenant_id"]
    verify = ssl.create_default_context(cafile=info["ca_path"])
    base_rss = rss_bytes()
    out: dict[str, Any] = {"job": "serve", "tenant_id": tid}
    with httpx.Client(timeout=120, verify=verify) as http:
        token = http.post(
            f"{info['authority']}/{tid}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "client_id": info["connector"]["client_id"],
                  "client_secret": info["connector"]["client_secret"],
                  "scope": "https://graph.microsoft.com/.default"},
        ).json()["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"
        walks = {
            "list": f"{info['graph_base_url']}/v1.0/devices?$top=999&$select={SERVE_SELECT}",
            "delta": f"{info['graph_base_url']}/v1.0/devices/delta?$select={SERVE_SELECT}",
        }
        for name, url in walks.items():
            stats = {"requests": 0, "ru": 0, "throttled": 0, "devices": 0, "bytes": 0}
            with Phase(job.get("sim_pid")) as ph:
                next_url: str | None = url
                while next_url:
                    r = http.get(next_url)
                    stats["requests"] += 1
                    if r.status_code == 429:
                        stats["throttled"] += 1
                        time.sleep(float(r.headers.get("Retry-After") or 1))
                        continue
                    r.raise_for_status()
                    stats["ru"] += int(r.headers.get("x-ms-resource-unit") or 0)
                    stats["bytes"] += len(r.content)
                    body = r.json()
                    stats["devices"] += len(body.get("value", ()))
                    next_url = body.get("@odata.nextLink")
            stats.update(ph.result)
            stats["devices_per_s"] = round(stats["devices"] / max(ph.result["wall_s"], 1e-9))
            out[name] = stats
    return finish(out, base_rss)


# ---- sync ----------------------------------------------------------------------------------------------------


def _env(job: dict[str, Any]) -> dict[str, str]:
    from simulator import launch

    info = job["info"]
    env = launch.client_env(info, base={})
    env.pop("KEY_VAULT_URL", None)
    env["AzureWebJobsStorage"] = job.get("connection_string") or "UseDevelopmentStorage=true"
    env["CONNECTOR_CLIENT_SECRET"] = info["connector"]["client_secret"]
    env["TABLE_PREFIX"] = job.get("table_prefix", "")
    env["HEARTBEAT_CONCURRENCY"] = str(job.get("heartbeat_concurrency", 8))
    return env


class TableCounter:
    """Counts the storage HTTP calls the connector makes, and the time spent waiting on each kind.

    Wired as azure-core ``raw_request_hook`` / ``raw_response_hook`` (CustomHookPolicy): the Tables clients take no
    ``per_call_policies``.
    """

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.batch_seconds: list[float] = []  # each entity-group transaction's round trip, in order

    @staticmethod
    def _kind(req: Any) -> str:
        path = req.url.split("?")[0]
        if path.endswith("/Tables"):
            return "create_table"
        if path.endswith("$batch"):
            return "batch"
        if req.method == "GET":
            return "get" if path.endswith("')") else "query"  # a point read names its keys
        return str(req.method)

    @staticmethod
    def _batch_ops(req: Any) -> int:
        """Operations in an entity-group transaction: the requests of its changeset (azure-core multipart)."""
        try:
            (changeset,) = req.multipart_mixed_info[0]
            return len(changeset.multipart_mixed_info[0])
        except (AttributeError, TypeError, ValueError, IndexError):
            return 0

    def hook(self, request: Any) -> None:
        """Before a request: count it and remember when it left."""
        kind = self._kind(request.http_request)
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if kind == "batch":
            self.calls["batch_ops"] = self.calls.get("batch_ops", 0) + self._batch_ops(request.http_request)
        request.context["bench_t0"] = time.perf_counter()

    def response_hook(self, response: Any) -> None:
        """After the response: add the round trip to its kind."""
        t0 = response.context.get("bench_t0")
        if t0 is not None:
            kind = self._kind(response.http_request)
            dt = time.perf_counter() - t0
            self.seconds[kind] = self.seconds.get(kind, 0.0) + dt
            if kind == "batch":
                self.batch_seconds.append(dt)

    def snapshot(self) -> dict[str, int]:
        return dict(self.calls)


def counting_storage(connection: str, prefix: str, counter: TableCounter) -> Any:
    """StorageClients whose Table clients carry the counting policy."""
    from azure.data.tables.aio import TableServiceClient

    from shared_code.adapters.storage import StorageClients

    class CountingStorage(StorageClients):
        def _table_service(self) -> TableServiceClient:
            if self._service is None:
                self._service = TableServiceClient.from_connection_string(
                    self._connection, raw_request_hook=counter.hook,
                    raw_response_hook=counter.response_hook,
                )
            return self._service

    return CountingStorage(connection, table_prefix=prefix)


class _Deadline(Exception):
    """A phase ran past the job's ``deadline_s`` (partial figures are recorded)."""


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 3) if xs else None


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


async def job_sync(job: dict[str, Any]) -> dict[str, Any]:
    """Full sync, catch-up, quiet poll and one-change poll with the real engine."""
    from shared_code.adapters.http_retry import UsageMeter
    from shared_code.adapters.memory_tenant_store import MemoryTenantRepository
    from shared_code.bootstrap import Container
    from shared_code.enrollment.cursors import MemoryCursorStore, TableCursorStore
    from shared_code.enrollment.engine import PollEngine
    from shared_code.enrollment.store import MemoryEnrollmentStore, TableEnrollmentStore
    from shared_code.settings import Settings
    from shared_code.tenants import TenantConfig

    info = job["info"]
    tid: str = job["tenant_id"]
    groups: list[str] = job["groups"]
    env = _env(job)
    container = Container(Settings.from_env(env))
    counter = TableCounter()
    storage = None
    tenant_writes = {"n": 0}
    if job["store"] == "table":
        from shared_code.adapters.tenant_store import TableTenantRepository

        storage = counting_storage(env["AzureWebJobsStorage"], env["TABLE_PREFIX"], counter)
        tenants: Any = TableTenantRepository(storage)
        store: Any = TableEnrollmentStore(storage)
        cursors: Any = TableCursorStore(storage)
    else:
        class CountingTenants(MemoryTenantRepository):
            async def update_status(self, tenant_id: str, section: str, patch: dict[str, Any]) -> None:
                tenant_writes["n"] += 1
                await super().update_status(tenant_id, section, patch)

        tenants = CountingTenants()
        store = MemoryEnrollmentStore()
        cursors = MemoryCursorStore()
    await tenants.put_config(TenantConfig(tenant_id=tid, enrollment_groups=tuple(groups)))
    live: dict[str, UsageMeter] = {}

    def graph_factory(tenant_id: str, meter: UsageMeter) -> Any:
        live["meter"] = meter
        return container.graph(tenant_id, meter)

    engine = PollEngine(tenants=tenants, store=store, cursors=cursors, graph_factory=graph_factory)
    sizes: dict[str, Any] = {}
    if job.get("tracemalloc"):
        # What the devices + owners read holds when it is complete (pages are gone by then): the read's last step
        # is wrapped (the engine calls it per run) and the plan input and the scope measured object by object.
        from shared_code.enrollment.full_reconcile import FullReconcile

        finish_read = FullReconcile._finish_read

        async def wrapped(run: Any) -> None:
            await finish_read(run)
            held = vars(run.plan_input)
            sizes["inventory_mb"] = {k: _mib(deep_size(v)) for k, v in held.items()
                                     if isinstance(v, (dict, set, list))}
            sizes["inventory_items"] = {k: len(v) for k, v in held.items() if isinstance(v, (dict, set, list))}
            sizes["scope_mb"] = _mib(deep_size(run.scope))
            sizes["heap_at_read_end_mb"] = _mib(tracemalloc.get_traced_memory()[0])

        FullReconcile._finish_read = wrapped  # type: ignore[method-assign]
    admin = admin_client(info)
    pids = {"sim_pid": job.get("sim_pid"), "azurite_pid": job.get("azurite_pid")}

    def writes() -> dict[str, int]:
        if job["store"] == "table":
            calls = counter.snapshot()
            single = sum(v for k, v in calls.items() if k in ("POST", "PUT", "PATCH", "MERGE", "DELETE"))
            return {"entity_ops": calls.get("batch_ops", 0) + single,
                    **{f"http_{k}": v for k, v in calls.items() if k != "batch_ops"}}
        return {"entity_ops": int(store.writes) + int(cursors.writes) + tenant_writes["n"],
                "store": int(store.writes), "cursors": int(cursors.writes), "tenant_status": tenant_writes["n"]}

    async def measured(name: str, *, sample: bool = False, **kw: Any) -> Any:
        w0 = writes()
        t_wait0 = dict(counter.seconds)
        sampler = RssSampler(lambda: live["meter"].requests if "meter" in live else 0) if sample else None
        heap0 = 0
        if job.get("tracemalloc"):
            heap0 = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        b0 = len(counter.batch_seconds)
        profiler = None
        if profile_path and name in job.get("profile_phases", ["full", "one_change"]):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        with Phase(pids["sim_pid"], pids["azurite_pid"]) as ph:
            try:
                if sampler is not None:
                    with sampler:
                        outcome = await asyncio.wait_for(engine.poll(tid, **kw), deadline)
                else:
                    outcome = await asyncio.wait_for(engine.poll(tid, **kw), deadline)
            except TimeoutError:
                outcome = None
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_path}.{name}")
        if outcome is None:
            meter = live.get("meter")
            phases[name] = {"timed_out": True, "deadline_s": deadline, **ph.result,
                            "requests": meter.requests if meter else 0, "writes": _diff(writes(), w0),
                            "batches_done": len(counter.batch_seconds) - b0,
                            "batch_s_last10": _mean(counter.batch_seconds[-10:])}
            raise _Deadline
        res = {"mode": outcome.mode, **ph.result,
               "requests": outcome.usage.get("requests", 0), "ru": outcome.usage.get("resourceUnits", 0),
               "throttled": outcome.usage.get("throttled", 0), "retries": outcome.usage.get("retries", 0),
               "writes": _diff(writes(), w0), "applied": outcome.applied, "events": outcome.events_written,
               "strategy": (outcome.strategy or {}).get("strategy")}
        if sampler is not None:
            res["rss_by_progress_mb"] = {k: round(v / 2**20, 1) for k, v in sampler.quartiles().items()}
            res["rss_samples"] = len(sampler.samples)
        if job.get("tracemalloc"):
            cur, peak = tracemalloc.get_traced_memory()
            res["py_heap_before_mb"] = round(heap0 / 2**20, 1)
            res["py_heap_peak_mb"] = round(peak / 2**20, 1)
            res["py_heap_after_mb"] = round(cur / 2**20, 1)
        batches = counter.batch_seconds[b0:]
        if len(batches) >= 20:
            tenth = max(1, len(batches) // 10)
            res["batch_s_first_tenth"] = _mean(batches[:tenth])
            res["batch_s_last_tenth"] = _mean(batches[-tenth:])
        if job["store"] == "table":
            res["table_wait_s"] = {k: round(v - t_wait0.get(k, 0.0), 3) for k, v in counter.seconds.items()
                                   if v - t_wait0.get(k, 0.0) > 0.0005}
        phases[name] = res
        return outcome

    phases: dict[str, Any] = {}
    deadline = float(job.get("deadline_s") or 3600)
    profile_path = job.get("profile")
    base_rss = rss_bytes()
    try:
        full = await measured("full", sample=True)
        phases["full"]["enrolled"] = full.plan.counts().get("enroll", 0)
        phases["full"]["desired"] = full.desired
        # The first devices/delta round of a big tenant continues over the following polls.
        catch = {"polls": 0, "requests": 0, "ru": 0, "throttled": 0, "wall_s": 0.0, "cpu_s": 0.0, "writes": {}}
        while True:
            outcome = await measured("_poll")
            p = phases.pop("_poll")
            if outcome.mode == "noop" and p["requests"] <= 2 and not p["writes"].get("entity_ops"):
                break
            catch["polls"] += 1
            for k in ("requests", "ru", "throttled", "wall_s", "cpu_s"):
                catch[k] = round(catch[k] + p[k], 3)
            for k, v in p["writes"].items():
                catch["writes"][k] = catch["writes"].get(k, 0) + v
            if catch["polls"] > 200:
                raise RuntimeError("devices round never committed")
        phases["catchup"] = catch
        if job.get("quiet", True):
            await measured("quiet")
            # One change: a user who owns mobile devices and is not in scope joins the first enrollment group.
            outsider = job.get("outsider")
            if outsider:
                admin.post(f"/_sim/tenants/{tid}/mutations",
                           json={"op": "add_member", "group_name": groups[0], "member_id": outsider}).raise_for_status()
                await measured("one_change")
    except _Deadline:
        pass
    finally:
        admin.close()
        await container.close()
        if storage is not None:
            await storage.close()
    if job.get("tracemalloc") and job["store"] == "memory":
        loaded = await store.load_graph(tid)
        if loaded is not None:
            graph = loaded[0]
            sizes["membership_graph_mb"] = _mib(deep_size(graph))
            sizes["membership_graph_groups"] = len(graph.groups)
            sizes["membership_graph_edges"] = sum(len(g.members) for g in graph.groups.values())
        # The memory store keeps the Table layout: every partition of the tenant starts with its id.
        parts = [rows for pk, rows in store.device_rows.data.items() if pk.startswith(tid)]
        sizes["memory_store_rows_mb"] = _mib(deep_size([v for p in parts for k, v in p.items() if k[:2] != "e|"]))
        sizes["memory_store_events_mb"] = _mib(deep_size([v for p in parts for k, v in p.items() if k[:2] == "e|"]))
    return finish({"job": "sync", "store": job["store"], "tenant_id": tid, "phases": phases, "sizes": sizes},
                  base_rss)


# ---- baseline ------------------------------------------------------------------------------------------------


async def job_baseline(job: dict[str, Any]) -> dict[str, Any]:
    """The seed's per-user strategy on one tenant."""
    from bench.baseline import seed_strategy
    from shared_code.adapters.http_retry import UsageMeter
    from shared_code.bootstrap import Container
    from shared_code.settings import Settings

    container = Container(Settings.from_env(_env(job)))
    meter = UsageMeter()
    graph = container.graph(job["tenant_id"], meter)
    base_rss = rss_bytes()
    try:
        with Phase(job.get("sim_pid")) as ph:
            found = await seed_strategy(graph, job["groups"])
    finally:
        await graph.aclose()
        await container.close()
    res = {"job": "baseline", "tenant_id": job["tenant_id"], **ph.result, "requests": meter.requests,
           "ru": meter.resource_units, "throttled": meter.throttled, "retries": meter.retries,
           "users": found.get("users"),
           "devices": sum(len(v) for v in found.get("devices", {}).values())}
    return finish(res, base_rss)


# ---- fleet ---------------------------------------------------------------------------------------------------


async def job_fleet(job: dict[str, Any]) -> dict[str, Any]:
    """Fleet runs with the function app's own wiring (Table tenant repository on Azurite).

    ``phase: "provision"`` provisions every tenant (bounded like the heartbeat run). ``phase: "heartbeat"`` is a
    fresh process (nothing cached: tokens, Intune endpoint discovery) running ``HeartbeatService.run()`` — the
    timer's work on a cold instance — then ``run(force=True)`` again on the now warm one.
    """
    from shared_code.bootstrap import Container
    from shared_code.intune.wiring import build_intune
    from shared_code.settings import Settings
    from shared_code.tenants import TenantConfig

    info = job["info"]
    env = _env(job)
    container = Container(Settings.from_env(env))
    counter = TableCounter()
    container._storage = counting_storage(env["AzureWebJobsStorage"], env["TABLE_PREFIX"], counter)
    services = build_intune(container)
    admin = admin_client(info)
    ids = [t["tenant_id"] for t in job["tenants"]]
    base_rss = rss_bytes()
    phases: dict[str, Any] = {}

    def table_calls(before: dict[str, int]) -> dict[str, int]:
        return {k: v for k, v in _diff(counter.snapshot(), before).items()}

    try:
        if job["phase"] == "provision":
            admin.post("/_sim/counters/reset")
            t0 = counter.snapshot()
            with Phase(job.get("sim_pid"), job.get("azurite_pid")) as ph:
                sem = asyncio.Semaphore(int(job.get("heartbeat_concurrency", 8)))

                async def prov(t: dict[str, Any]) -> None:
                    async with sem:
                        await services.provisioning.provision(
                            TenantConfig(tenant_id=t["tenant_id"], enrollment_groups=tuple(t["enrollment_groups"])))

                await asyncio.gather(*(prov(t) for t in job["tenants"]))
            phases["provision"] = {**ph.result, **_totals(sim_totals(admin, ids)), "table_calls": table_calls(t0)}
        else:
            for name, force in (("heartbeats_cold", False), ("heartbeats_warm", True)):
                admin.post("/_sim/counters/reset")
                t0 = counter.snapshot()
                with Phase(job.get("sim_pid"), job.get("azurite_pid")) as ph:
                    run = await services.heartbeat.run(force=force)
                phases[name] = {**ph.result, **_totals(sim_totals(admin, ids)), **run.summary(),
                                "peak_in_flight": services.heartbeat.peak_in_flight,
                                "table_calls": table_calls(t0)}
            beats = [admin.get(f"/_sim/intune/{t}").json().get("heartbeat_count", 0) for t in ids]
            phases["heartbeats_warm"]["sim_heartbeat_counts"] = {"min": min(beats), "max": max(beats)}
    finally:
        admin.close()
        await services.intune.aclose()
        await container.close()
    return finish({"job": "fleet", "phase": job["phase"], "tenants": len(ids), "phases": phases}, base_rss)


def _totals(t: dict[str, Any]) -> dict[str, Any]:
    routes: dict[str, int] = {}
    for label, c in t["routes"].items():
        fam = ("token" if "oauth2" in label else "intune" if "intune" in label.lower()
               else "graph" if label.startswith("/v1.0") or label.startswith("batch:") else label)
        routes[fam] = routes.get(fam, 0) + c["requests"]
    return {"requests": t["requests"], "ru": t["ru"], "throttled": t["throttled"], "by_family": routes}


async def job_stack(job: dict[str, Any]) -> dict[str, Any]:
    """One tenant through devhost + function_app.py (bench/stack.py)."""
    from bench.stack import job_stack as run

    return await run(job)


JOBS: dict[str, Any] = {"serve": job_serve, "sync": job_sync, "baseline": job_baseline, "fleet": job_fleet,
                        "stack": job_stack}


def main() -> int:
    job = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    if job.get("tracemalloc"):
        tracemalloc.start()
    fn = JOBS[job["job"]]
    result = asyncio.run(fn(job)) if asyncio.iscoroutinefunction(fn) else fn(job)
    print("BENCH-RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
