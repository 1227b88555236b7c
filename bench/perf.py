"""Speed and memory measurements (each run in its own process, see bench/worker.py) and their orchestration.

The parent starts one simulator (and Azurite when a Table-store run is asked for), creates the tenants through the
admin API, and runs each measurement as ``python -m bench.worker`` (job JSON on stdin). Results are merged into
``bench/results.json`` (one entry per measurement key, with when and how it was produced), so a later run with fewer
flags (no ``--xl``) refreshes what it measured and keeps the rest; docs/benchmarks.md is rendered from that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results.json")


def now_iso() -> str:
    """UTC timestamp for result entries."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = f"{int(Path('/proc/meminfo').read_text().split()[1]) // 1024} MiB"
    commit = os.environ.get("BENCH_COMMIT", "")
    dirty = ""
    if not commit:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True, check=False).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "shared_code", "functions",
                                    "function_app.py"], cwd=ROOT, capture_output=True, text=True,
                                   check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "memory": mem, "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit,
            "measured_on": "snapshot of the commit" if os.environ.get("BENCH_COMMIT") else (
                "work tree with uncommitted product changes" if dirty else "clean work tree")}


def load_results(path: Path | None = None) -> dict[str, Any]:
    """Stored results (empty when none)."""
    path = path or RESULTS
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"entries": {}}


def save_results(results: dict[str, Any], path: Path | None = None) -> None:
    """Write results (sorted keys for reviewable diffs)."""
    (path or RESULTS).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def run_worker(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one job in a fresh interpreter; returns its result (raises with the worker's stderr on failure)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    info = job["info"]
    env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = info["ca_path"]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.worker"], input=json.dumps(job),
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            result: dict[str, Any] = json.loads(line[len("BENCH-RESULT "):])
            return result
    raise RuntimeError(f"worker {job['job']} failed ({proc.returncode}): {proc.stderr[-3000:]}")


class Admin:
    """The simulator's /_sim API."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.http = httpx.Client(base_url=info["base_url"], timeout=900,
                                 verify=ssl.create_default_context(cafile=info["ca_path"]))

    def post(self, path: str, body: Any) -> Any:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def tenant(self, scenario: str, seed: int) -> dict[str, Any]:
        """A new tenant, plus one extra user (not in any group) owning two mobile devices: the 'one change'."""
        summary: dict[str, Any] = self.post("/_sim/tenants", {"scenario": scenario, "seed": seed})
        tid = summary["tenant_id"]
        user = self.post(f"/_sim/tenants/{tid}/mutations",
                         {"op": "add_user", "displayName": "Bench Newcomer"})["id"]
        for os_name in ("iOS", "Android"):
            self.post(f"/_sim/tenants/{tid}/mutations", {"op": "add_device", "operatingSystem": os_name,
                                                         "owner_id": user})
        truth = self.http.get(f"/_sim/tenants/{tid}/truth").json()
        summary["outsider"] = user
        summary["truth"] = {"users_in_scope": truth["users_in_scope"], "devices": len(truth["devices"])}
        return summary

    def delete(self, tid: str) -> None:
        self.http.delete(f"/_sim/tenants/{tid}")

    def close(self) -> None:
        self.http.close()


class Runner:
    """Runs the requested measurements and records them."""

    def __init__(self, info: dict[str, Any], sim_pid: int, *, seed: int, azurite: Any | None,
                 log: Callable[[str], None] = print) -> None:
        self.info = info
        self.sim_pid = sim_pid
        self.seed = seed
        self.azurite = azurite
        self.admin = Admin(info)
        self.log = log
        self.results = load_results()
        self.results["machine"] = machine()

    def _job(self, kind: str, **extra: Any) -> dict[str, Any]:
        return {"job": kind, "info": self.info, "sim_pid": self.sim_pid, **extra}

    def record(self, key: str, command: str, value: dict[str, Any]) -> None:
        self.results["entries"][key] = {"measured": now_iso(), "command": command,
                                        "commit": self.results["machine"].get("commit"), **value}
        save_results(self.results)

    def serve(self, scenario: str, command: str) -> None:
        """Simulator serving speed on one tenant."""
        t = self.admin.post("/_sim/tenants", {"scenario": scenario, "seed": self.seed})
        self.log(f"serve {scenario}: {t['counts']['devices']} devices")
        res = run_worker(self._job("serve", tenant_id=t["tenant_id"]), timeout=1800)
        self.admin.delete(t["tenant_id"])
        self.record(f"serve:{scenario}", command, {"scenario": scenario, "counts": t["counts"], **res})
        self.log(f"  list {res['list']['devices_per_s']} dev/s, delta {res['delta']['devices_per_s']} dev/s")

    def sync(self, scenario: str, store: str, command: str, *, tracemalloc: bool = False,
             timeout: float = 1800, profile: str | None = None) -> dict[str, Any] | None:
        """Full sync + catch-up + quiet + one change on a fresh tenant with the given store."""
        t = self.admin.tenant(scenario, self.seed)
        job = self._job("sync", tenant_id=t["tenant_id"], groups=t["enrollment_groups"], store=store,
                        outsider=t["outsider"], tracemalloc=tracemalloc, deadline_s=timeout, profile=profile)
        if store == "table":
            assert self.azurite is not None
            job.update(connection_string=self.azurite.connection_string,
                       table_prefix=f"b{uuid.uuid4().hex[:10]}", azurite_pid=self.azurite.process.pid)
        self.log(f"sync {scenario} {store}{' tracemalloc' if tracemalloc else ''}: "
                 f"{t['counts']['users']} users, {t['counts']['devices']} devices, scope {t['truth']}")
        try:
            res = run_worker(job, timeout=timeout + 600)
        except subprocess.TimeoutExpired:
            self.admin.delete(t["tenant_id"])
            self.log(f"  timed out after {timeout}s")
            return None
        self.admin.delete(t["tenant_id"])
        key = f"sync:{scenario}:{store}{':tracemalloc' if tracemalloc else ''}"
        if profile:
            # cProfile distorts timings: profiled runs are evidence for "Open findings", never report figures.
            self.log(f"  cProfile stats: {profile}.full, {profile}.one_change (python -m pstats FILE)")
        else:
            self.record(key, command, {"scenario": scenario, "counts": t["counts"], "truth": t["truth"], **res})
        full = res["phases"]["full"]
        if full.get("timed_out"):
            self.log(f"  full reconcile stopped at the {timeout:.0f} s cap: {full['writes']}, "
                     f"{full['batches_done']} transactions")
        else:
            self.log(f"  full {full['requests']} req {full['wall_s']} s cpu {full['cpu_s']} s, "
                     f"peak RSS {res['process']['peak_rss_mb']} MiB")
        return res

    def stack(self, scenario: str, command: str, *, cap: float = 1800, settings: dict[str, str] | None = None,
              key: str | None = None, churn: float = 0.01) -> dict[str, Any]:
        """One tenant through devhost + function_app.py on the Table store (bench/stack.py), with its lower bound."""
        from bench.bound import lower_bound, scope_shape

        assert self.azurite is not None, "the stack runs keep state in Table Storage (Azurite)"
        t = self.admin.post("/_sim/tenants", {"scenario": scenario, "seed": self.seed})
        tid = t["tenant_id"]
        shape = scope_shape(self.info, tid, t["enrollment_groups"], ["iOS", "iPadOS", "Android"])
        bound = lower_bound(shape, t["counts"]["users"], t["counts"]["devices"])
        self.log(f"stack {scenario}: {t['counts']['users']} users, {t['counts']['devices']} devices, "
                 f"{shape['scope_users']} users in scope, {bound['fixed']['groups_in_scope']} groups in scope; "
                 f"lower bound {bound['requests']} req / {bound['ru']} RU ({bound['plan']})")
        job = self._job("stack", tenant_id=tid, groups=t["enrollment_groups"], cap_s=cap,
                        connection_string=self.azurite.connection_string, table_prefix=f"s{uuid.uuid4().hex[:10]}",
                        azurite_pid=self.azurite.process.pid, settings=settings or {}, churn=churn)
        try:
            res = run_worker(job, timeout=cap + 1800)
        finally:
            self.admin.delete(tid)
        self.record(key or f"stack:{scenario}", command, {"scenario": scenario, "counts": t["counts"],
                                                         "shape": {k: v for k, v in shape.items()
                                                                   if k != "group_members"},
                                                         "bound": bound, **res})
        full = res["phases"]["full"]
        self.log(f"  full: {full['requests']} req / {full['ru']} RU, {full['wall_s']} s wall, "
                 f"{full['invocations']['count']} invocations (longest {full['invocations']['longest_s']} s), "
                 f"drained {full['drained']}, peak RSS {full.get('peak_rss_mb')} MiB, check {res['checks']}")
        return res

    def baseline(self, scenario: str, command: str, timeout: float = 1800) -> None:
        """The seed strategy on a fresh tenant."""
        t = self.admin.post("/_sim/tenants", {"scenario": scenario, "seed": self.seed})
        self.log(f"baseline {scenario}")
        res = run_worker(self._job("baseline", tenant_id=t["tenant_id"], groups=t["enrollment_groups"]),
                         timeout=timeout)
        self.admin.delete(t["tenant_id"])
        self.record(f"baseline:{scenario}", command, {"scenario": scenario, "counts": t["counts"], **res})
        self.log(f"  {res['requests']} req {res['wall_s']} s")

    def fleet(self, count: int, concurrency: int, command: str) -> None:
        """Provisioning, then heartbeats from a fresh process, for a fleet of tenants (Table store on Azurite)."""
        assert self.azurite is not None, "the fleet run keeps tenant state in Table Storage (Azurite)"
        fleet = self.admin.post("/_sim/tenants", {"scenario": "fleet", "count": count, "seed": self.seed})
        tenants = [{"tenant_id": t["tenant_id"], "enrollment_groups": t["enrollment_groups"]}
                   for t in fleet["tenants"]]
        self.log(f"fleet {len(tenants)} tenants, concurrency {concurrency}")
        common = {"tenants": tenants, "heartbeat_concurrency": concurrency,
                  "connection_string": self.azurite.connection_string, "table_prefix": f"f{uuid.uuid4().hex[:10]}",
                  "azurite_pid": self.azurite.process.pid}
        prov = run_worker(self._job("fleet", phase="provision", **common), timeout=1800)
        beat = run_worker(self._job("fleet", phase="heartbeat", **common), timeout=1800)
        self.record(f"fleet:{count}", command, {"concurrency": concurrency, "tenants": len(tenants),
                                                "phases": {**prov["phases"], **beat["phases"]},
                                                "process": beat["process"], "provision_process": prov["process"]})
        for t in tenants:
            self.admin.delete(t["tenant_id"])
        hb = beat["phases"]["heartbeats_cold"]
        self.log(f"  cold heartbeat run {hb['requests']} req {hb['wall_s']} s")

    def fleet_poll(self, count: int, workers: list[int], command: str, *, throttle_scale: float = 0.002,
                   scaled_count: int = 200, limit_s: float = 1800, profile_dir: str = "",
                   warm: bool = False) -> dict[str, Any]:
        """A fleet polled through timer + queue on 1..N devhost nodes (bench/fleet.py).

        ``count`` tenants: provisioning through the HTTP API, the first cycle (full reconciles), then a quiet
        5-minute cycle per worker count. Then, with Graph's quotas scaled by ``throttle_scale`` in the simulator,
        ``scaled_count`` new tenants provisioned and fully reconciled twice over: with the pacer scaled alike, and
        with pacing off (the control). Each cycle records the app's storage calls per poll by table, kind and
        partition (bench/storage_meter.py); with ``warm`` each worker count's nodes run a second quiet cycle
        (``warm quiet xN``: tokens and connections held from the first); with ``profile_dir`` one more quiet cycle
        on 1 node (``profiled quiet x1``) writes cProfile stats there (its wall time is not a figure).
        """
        from bench.fleet import Node, drain_all
        from bench.worker import _totals, proc_cpu, sim_totals

        assert self.azurite is not None, "the fleet keeps its state in Table Storage (Azurite)"
        azurite = self.azurite
        out: dict[str, Any] = {"tenants": count, "cycles": {}, "azurite_in_memory": azurite.in_memory}
        offset = 0.0
        token = self.admin.post("/_sim/tokens/console", {"roles": ["Console.Manage", "Console.Read"]})

        def start(k: int, prefix: str, settings: dict[str, str]) -> list[Node]:
            job = {"info": self.info, "connection_string": azurite.connection_string, "table_prefix": prefix,
                   "clock_offset": offset, "settings": {"GRAPH_PACER_INSTANCES": str(k), **settings}}
            with ThreadPoolExecutor(k) as pool:
                return list(pool.map(lambda _: Node(job), range(k)))

        def graph(ids: list[str]) -> dict[str, Any]:
            t = _totals(sim_totals(self.admin.http, ids))
            return {"requests": t["by_family"].get("graph", 0), "ru": t["ru"], "throttled": t["throttled"],
                    "tokens": t["by_family"].get("token", 0), "intune": t["by_family"].get("intune", 0)}

        def tenants_of(n: int, seed: int) -> list[dict[str, Any]]:
            fleet = self.admin.post("/_sim/tenants", {"scenario": "fleet", "count": n, "seed": seed})
            return [{"tenant_id": t["tenant_id"], "enrollment_groups": t["enrollment_groups"],
                     "scenario": t["scenario"]} for t in fleet["tenants"]]

        def provision(nodes: list[Node], tenants: list[dict[str, Any]]) -> dict[str, Any]:
            ids = [t["tenant_id"] for t in tenants]
            self.admin.http.post("/_sim/counters/reset")
            t0 = time.perf_counter()
            with httpx.Client(base_url=nodes[0].ready["base_url"], timeout=300, trust_env=False,
                              headers={"Authorization": f"Bearer {token['access_token']}"}) as api, \
                    ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(lambda t: api.put(f"/api/tenants/{t['tenant_id']}", json={
                    "enrollmentGroups": t["enrollment_groups"], "platforms": ["iOS", "iPadOS", "Android"]}).status_code,
                    tenants))
            statuses: dict[str, int] = {}
            for c in codes:
                statuses[str(c)] = statuses.get(str(c), 0) + 1
            return {"wall_s": round(time.perf_counter() - t0, 2), "ok": sum(1 for c in codes if c < 300),
                    "statuses": statuses, **graph(ids)}

        def storage_total(stats: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
            total: dict[str, dict[str, float]] = {}
            for s in stats:
                for label, v in s["storage"].items():
                    t = total.setdefault(label, {"calls": 0, "seconds": 0.0})
                    t["calls"] += v["calls"]
                    t["seconds"] += v["seconds"]
            return total

        def cycle(name: str, nodes: list[Node], ids: list[str], *, profile: bool = False,
                  **extra: Any) -> dict[str, Any]:
            self.admin.http.post("/_sim/counters/reset")
            before = [n.command("stats") for n in nodes]
            inv0 = sum(s["invocations"] for s in before)
            if profile:
                for n in nodes:
                    n.command("profile on")
            pids = {"azurite": azurite.process.pid, "simulator": self.sim_pid,
                    **{f"node{i}": n.proc.pid for i, n in enumerate(nodes)}}
            cpu0 = {k: proc_cpu(v) for k, v in pids.items()}
            t0 = time.perf_counter()
            nodes[0].command("dispatch")
            drained = drain_all(nodes, limit_s)
            wall = time.perf_counter() - t0
            cpu = {k: round(proc_cpu(v) - cpu0[k], 1) for k, v in pids.items()}
            if profile:
                for i, n in enumerate(nodes):
                    path = Path(profile_dir).resolve() / f"fleet_{name.replace(' ', '_')}_{i}.prof"
                    n.command(f"profile dump {path}")
                self.log(f"  cProfile stats: {profile_dir}/fleet_{name.replace(' ', '_')}_*.prof")
            stats = [n.command("stats") for n in nodes]
            polls = sum(s["invocations"] for s in stats) - inv0
            s0, s1 = storage_total(before), storage_total(stats)
            storage = {label: {"calls": v["calls"] - s0.get(label, {}).get("calls", 0),
                               "seconds": round(v["seconds"] - s0.get(label, {}).get("seconds", 0.0), 2)}
                       for label, v in s1.items() if v["calls"] - s0.get(label, {}).get("calls", 0)}
            res = {"workers": len(nodes), "tenants": len(ids), "wall_s": round(wall, 2), "drained": drained,
                   "polls": polls, "tenants_per_min": round(len(ids) / wall * 60, 1) if drained else None,
                   **graph(ids), "failures": sum(s["failures"] for s in stats),
                   "poisoned": sum(s["poisoned"] for s in stats), "pacer": [s["pacer"] for s in stats],
                   "peak_rss_mb": max(s["peak_rss_mb"] for s in stats), "loadavg_1m": round(os.getloadavg()[0], 2),
                   "cpu_s": cpu, "storage": storage,
                   "storage_calls_per_poll": round(sum(v["calls"] for v in storage.values()) / max(1, polls), 2),
                   "profiled": profile, **extra}
            out["cycles"][name] = res
            self.log(f"  {name}: {len(nodes)} worker(s) {res['wall_s']} s, {polls} polls, {res['requests']} req, "
                     f"{res['throttled']} × 429, {res['tenants_per_min']} tenants/min, load {res['loadavg_1m']}, "
                     f"{res['storage_calls_per_poll']} storage calls/poll, CPU s {cpu}")
            for label, v in sorted(storage.items(), key=lambda kv: -kv[1]["seconds"]):
                self.log(f"    {label:<32} {v['calls']:>7} calls {v['seconds']:>9.2f} s "
                         f"({v['calls'] / max(1, polls):.2f}/poll, {1000 * v['seconds'] / max(1, v['calls']):.1f} ms)")
            return res

        def stop(nodes: list[Node]) -> None:
            for n in nodes:
                n.stop()

        if profile_dir:
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
        tenants = tenants_of(count, self.seed)
        ids = [t["tenant_id"] for t in tenants]
        out["mix"] = {sc: sum(1 for t in tenants if t["scenario"] == sc) for sc in sorted({t["scenario"] for t in
                                                                                          tenants})}
        prefix = f"p{uuid.uuid4().hex[:10]}"
        self.log(f"fleet poll: {count} tenants {out['mix']}, workers {workers}")
        nodes = start(workers[0], prefix, {})
        try:
            out["provision"] = provision(nodes, tenants)
            self.log(f"  provisioned {out['provision']['ok']}/{count} in {out['provision']['wall_s']} s")
            cycle("first", nodes, ids)
        finally:
            stop(nodes)
        for k in workers:
            offset += 300
            nodes = start(k, prefix, {})
            try:
                cycle(f"quiet x{k}", nodes, ids)
                if warm:
                    # The same processes 5 minutes later: Graph tokens, connections and clients already held, as on
                    # a Functions instance that keeps running between cycles.
                    offset += 300
                    for n in nodes:
                        n.command("advance 300")
                    cycle(f"warm quiet x{k}", nodes, ids)
            finally:
                stop(nodes)
        if profile_dir:
            offset += 300
            nodes = start(1, prefix, {})
            try:
                cycle("profiled quiet x1", nodes, ids, profile=True)
            finally:
                stop(nodes)
        for t in ids:
            self.admin.delete(t)
        if throttle_scale:
            k = workers[-1]
            scaled = {"GRAPH_APP_RU_PER_20S": str(round(150_000 * throttle_scale)),
                      "GRAPH_TENANT_RU_PER_10S": str(max(1, round(3500 * throttle_scale)))}
            out["scaled"] = {"scale": throttle_scale, "tenants": scaled_count, **scaled}
            self.admin.post("/_sim/throttle", {"scale": throttle_scale})
            try:
                for i, (name, settings) in enumerate((("scaled quotas, paced", scaled),
                                                      ("scaled quotas, not paced",
                                                       {**scaled, "GRAPH_PACER_INSTANCES": "0"}))):
                    fresh = tenants_of(scaled_count, self.seed + 100 + i)
                    fresh_ids = [t["tenant_id"] for t in fresh]
                    nodes = start(k, f"q{uuid.uuid4().hex[:10]}", settings)
                    try:
                        prov = provision(nodes, fresh)
                        cycle(name, nodes, fresh_ids, throttle_scale=throttle_scale, provision=prov)
                    finally:
                        stop(nodes)
                        for t in fresh_ids:
                            self.admin.delete(t)
            finally:
                self.admin.post("/_sim/throttle", {"scale": 1.0})
        self.record(f"fleetpoll:{count}", command, out)
        return out

    def coldstart(self, command: str) -> dict[str, Any]:
        """Start → first HTTP response / first Graph response of a poll, idle RSS, imports (bench/coldstart.py)."""
        from bench.coldstart import measure

        assert self.azurite is not None, "the cold-start runs keep state in Table Storage (Azurite)"
        t = self.admin.post("/_sim/tenants", {"scenario": "M", "seed": self.seed})
        self.log("cold start (fresh devhost processes, an M tenant)")
        try:
            res = measure(self.info, self.azurite, t, log=self.log)
        finally:
            self.admin.delete(t["tenant_id"])
        self.record("coldstart", command, res)
        return res

    def close(self) -> None:
        self.admin.close()
