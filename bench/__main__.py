"""``python -m bench [--snapshot] [--xl] [--xl-azurite] [--tracemalloc] [--fleet] [--steps …] [--profile DIR]
[--only cost|perf|render] [--seed N] [--out FILE]``.

Two kinds of figures, both written to docs/benchmarks.md (rendered from bench/results.json + bench/notes/*.md):

**Speed and memory** (bench/perf.py; each run in its own process, bench/worker.py): the simulator's serving speed,
the real engine's full sync of M and L (``--xl``: XL too) with the in-memory stores and the Table stores on Azurite
(XL on Azurite only with ``--xl-azurite``, 10-minute cap), quiet and one-change polls, the seed baseline, and with
``--fleet`` provisioning + heartbeats for a 50-tenant fleet. Default (M + L) takes a few minutes. ``--snapshot``
measures ``git archive HEAD`` instead of the work tree (others' half-saved edits stay out of the figures).

**Graph cost** (below, in-process; counts only): for each scenario tenant (``--scenarios``, default small,M,L) it
measures Graph requests and resource units (the connector's own meter; cross-checked with the simulator's counters):

* our full reconcile (strategy chosen by cost estimate), the polls that finish the first devices/delta round,
  a quiet incremental poll, and an incremental poll after one membership change;
* the seed's per-user ``ownedDevices`` strategy on the same tenant (bench/baseline.py);
* the page lower bound under Graph's documented limits (see :func:`lower_bound`).

Writes the Markdown report (default docs/benchmarks.md) and prints the cost figures as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import perf as perf_mod  # noqa: E402
from bench import plots, report  # noqa: E402
from bench.baseline import seed_strategy  # noqa: E402
from bench.bound import lower_bound, scope_shape  # noqa: E402
from shared_code.adapters.http_retry import UsageMeter  # noqa: E402
from shared_code.adapters.memory_tenant_store import MemoryTenantRepository  # noqa: E402
from shared_code.bootstrap import Container  # noqa: E402
from shared_code.enrollment.cursors import MemoryCursorStore  # noqa: E402
from shared_code.enrollment.engine import PollEngine  # noqa: E402
from shared_code.enrollment.store import MemoryEnrollmentStore  # noqa: E402
from shared_code.settings import Settings  # noqa: E402
from shared_code.tenants import TenantConfig  # noqa: E402
from simulator import launch  # noqa: E402


class Bench:
    """One simulator, many measurements."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        env = launch.client_env(info, base={})
        env.pop("KEY_VAULT_URL", None)
        env["AzureWebJobsStorage"] = "UseDevelopmentStorage=true"  # unused: the bench keeps state in memory
        env["CONNECTOR_CLIENT_SECRET"] = info["connector"]["client_secret"]
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = info["ca_path"]
        self.container = Container(Settings.from_env(env))
        self.admin = httpx.Client(base_url=info["base_url"], timeout=600,
                                  verify=ssl.create_default_context(cafile=info["ca_path"]))

    def counters(self, tid: str) -> dict[str, Any]:
        """The simulator's own counters for one tenant: {"routes": {label: {...}}, "totals": {...}}."""
        data: dict[str, Any] = self.admin.get("/_sim/counters", params={"tenant": tid}).json().get(tid) or {}
        return data

    async def run(self, scenario: str, seed: int) -> dict[str, Any]:
        summary = self.admin.post("/_sim/tenants", json={"scenario": scenario, "seed": seed}).json()
        tid = summary["tenant_id"]
        groups = summary["enrollment_groups"]
        shape = scope_shape(self.info, tid, groups, ["iOS", "iPadOS", "Android"])
        bound = lower_bound(shape, summary["counts"]["users"], summary["counts"]["devices"])
        repo = MemoryTenantRepository()
        await repo.put_config(TenantConfig(tenant_id=tid, enrollment_groups=tuple(groups)))
        engine = PollEngine(tenants=repo, store=MemoryEnrollmentStore(), cursors=MemoryCursorStore(),
                            graph_factory=self.container.graph)
        self.admin.post("/_sim/counters/reset")
        full = await engine.poll(tid)
        full_counters = self.counters(tid)
        catchup_polls, catchup_requests = 0, 0
        while True:
            outcome = await engine.poll(tid)
            if outcome.usage["requests"] <= 2:
                quiet = outcome
                break
            catchup_polls += 1
            catchup_requests += outcome.usage["requests"]
        # One membership change: a user joins the first enrollment group.
        users = self.admin.get(f"/_sim/tenants/{tid}/truth", params=[("groups", g) for g in groups]).json()
        in_scope = {d["ownerId"] for d in users["devices"]}
        graph = self.container.graph(tid, UsageMeter())
        try:
            outsider = None
            async for page in graph.pages("/users", permission="User.Read.All",
                                          params={"$select": "id", "$expand": "ownedDevices"}):
                for u in page["value"]:
                    if u["id"] not in in_scope and any(d.get("operatingSystem") in ("iOS", "Android")
                                                       for d in u.get("ownedDevices") or ()):
                        outsider = u["id"]
                        break
                if outsider:
                    break
        finally:
            await graph.aclose()
        self.admin.post(f"/_sim/tenants/{tid}/mutations",
                        json={"op": "add_member", "group_name": groups[0], "member_id": outsider})
        change = await engine.poll(tid)
        meter = UsageMeter()
        graph = self.container.graph(tid, meter)
        self.admin.post("/_sim/counters/reset")
        try:
            await seed_strategy(graph, groups)
        finally:
            await graph.aclose()
        base_counters = self.counters(tid)
        routes = full_counters.get("routes") or {}
        groups_pages = sum(v.get("requests", 0) for k, v in routes.items() if "groups/delta" in k)
        lb = bound["requests"]
        return {
            "scenario": scenario,
            "users": summary["counts"]["users"],
            "devices": summary["counts"]["devices"],
            "scope_users": users["users_in_scope"],
            "enrolled": full.plan.counts()["enroll"],
            "strategy": (full.strategy or {}).get("strategy"),
            "estimates": (full.strategy or {}).get("estimates"),
            "full_requests": full.usage["requests"],
            "full_ru": full.usage["resourceUnits"],
            "full_throttled": full.usage["throttled"],
            "sim_full_requests": (full_counters.get("totals") or {}).get("requests"),
            "sim_full_ru": (full_counters.get("totals") or {}).get("ru"),
            "catchup_polls": catchup_polls,
            "catchup_requests": catchup_requests,
            "quiet_requests": quiet.usage["requests"],
            "quiet_ru": quiet.usage["resourceUnits"],
            "change_requests": change.usage["requests"],
            "change_ru": change.usage["resourceUnits"],
            "lower_bound": lb,
            "lower_bound_ru": bound["ru"],
            "lower_bound_plan": bound["plan"],
            "groups_delta_pages": groups_pages,
            "baseline_requests": meter.requests,
            "baseline_ru": meter.resource_units,
            "baseline_throttled": meter.throttled,
            "sim_baseline_requests": (base_counters.get("totals") or {}).get("requests"),
            "sim_baseline_ru": (base_counters.get("totals") or {}).get("ru"),
            "ratio": round(meter.requests / max(1, full.usage["requests"]), 1),
            "vs_lower_bound": round(full.usage["requests"] / max(1, lb), 3),
            "vs_lower_bound_ru": round(full.usage["resourceUnits"] / max(1, bound["ru"]), 3),
        }


def render(results: list[dict[str, Any]], seed: int, when: str | None = None) -> str:
    """Markdown section: Graph cost per scenario (requests and RU)."""
    when = when or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## 6. Graph cost per scenario: ours vs the page lower bound vs the seed",
        "",
        f"`python -m bench --only cost` ({when}, seed {seed}, Python {platform.python_version()}), in-process",
        "against the simulator. Graph requests and resource units (RU) counted by the connector's own meter",
        "(`UsageMeter`, from `x-ms-resource-unit`) — counts are what Graph throttles on.",
        "",
        "| scenario | users | devices | in-scope users | enrolled | strategy | full: requests / RU |"
        " lower bound: requests / RU | full ÷ bound: requests / RU | seed baseline: requests / RU |"
        " baseline ÷ ours | first devices round: polls / requests |"
        " quiet poll: requests / RU | one change: requests / RU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['scenario']} | {r['users']} | {r['devices']} | {r['scope_users']} | {r['enrolled']} | "
            f"`{r['strategy']}` | {r['full_requests']} / {r['full_ru']} | {r['lower_bound']} / "
            f"{r.get('lower_bound_ru', '–')} | {r['vs_lower_bound']} / {r.get('vs_lower_bound_ru', '–')} | "
            f"{r['baseline_requests']} / {r['baseline_ru']} | {r['ratio']}× | "
            f"{r['catchup_polls']} / {r['catchup_requests']} | {r['quiet_requests']} / {r['quiet_ru']} | "
            f"{r['change_requests']} / {r['change_ru']} |"
        )
    lines += [
        "",
        "### How to read it",
        "",
        "* **Full reconcile**: a new `groups/delta?$select=displayName,members` round (membership graph), one",
        "  `$filter` lookup per configured group name, `/users/$count` + `/devices/$count` on the very first",
        "  reconcile (tenant shape for the estimate), the first page of a `devices/delta` round, and the devices +",
        "  owners strategy the cost estimate picked (`shared_code/enrollment/strategies.py`; estimates below).",
        "* **Lower bound**: what a correct full reconcile must read, priced by Graph's documented table",
        "  (`bench/bound.py`): the name lookups, a groups cursor (`$deltatoken=latest`) + member pages of every",
        "  group in the enrollment trees (or the whole `groups/delta` round when that is fewer requests), the",
        "  owners of direct device members, devices + owners by the plan with the fewest requests",
        "  (`/devices?$expand=registeredOwners`, `/users?$expand=ownedDevices` + a `$batch` per 20 users past the",
        "  20-object expand cap, or one `$batch` per 20 in-scope users), and the first devices/delta page. It no",
        "  longer counts the tenant's whole `groups/delta` round: earlier versions did, which hid that cost.",
        "* **Seed baseline** (`bench/baseline.py`): group lookup by name, `/groups/{id}/members` walk, then one",
        "  `GET /users/{id}/ownedDevices` per in-scope user — the seed connector's documented strategy, given",
        "  `$top=999` member pages and no per-device GETs.",
        "* **First devices round**: `devices/delta` has no `$deltatoken=latest` (the simulator refuses it, as Graph",
        "  documents it for users and groups only), so its first round pages through every device. Its data repeats",
        "  what the full reconcile read, so a big tenant walks it in bounded steps (up to 2,000 pages or 60 s each,",
        "  the in-flight nextLink kept apart from the committed deltaLink), chained by continuation messages in the",
        "  function app; short rounds finish inside the full reconcile.",
        "* **Quiet poll**: `groups/delta` + `devices/delta` from the committed deltaLinks, nothing changed:",
        "  ≤ 2 requests; no device, event, graph, cursor or status write (only the poll lease row is taken and",
        "  released, which is what makes duplicate queue messages harmless).",
        "* **One change**: a user with mobile devices joins the first enrollment group: both deltas, then one",
        "  `$batch` of that user's `ownedDevices`.",
        "",
        "### Strategy estimates per tenant",
        "",
    ]
    for r in results:
        est = ", ".join(
            f"`{e['strategy']}` {e['requests']} req / {e['resourceUnits']} RU" for e in r["estimates"] or ()
        )
        lines.append(f"* {r['scenario']}: {est}")
    lines.append("")
    return "\n".join(lines)


async def cost(scenarios: list[str], seed: int) -> list[dict[str, Any]]:
    """The Graph cost table (in-process; counts only)."""
    with tempfile.TemporaryDirectory() as wd:
        info, proc = launch.start(wd, timeout=300)
        bench = Bench(info)
        try:
            return [await bench.run(s, seed) for s in scenarios]
        finally:
            await bench.container.close()
            bench.admin.close()
            launch.stop(proc)


def perf(args: argparse.Namespace, command: str) -> list[str]:
    """Speed and memory runs (each in its own process); returns the names of the ones that failed."""
    from devhost.azurite import start_azurite

    scenarios = [s for s in args.perf_scenarios.split(",") if s] + (["XL"] if args.xl else [])
    with tempfile.TemporaryDirectory() as wd:
        info, proc = launch.start(wd, timeout=300)
        # This simulator's CA (the cost table's simulator, and its CA file, are gone by now).
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = info["ca_path"]
        azurite = None if args.no_azurite else start_azurite(in_memory=args.azurite_in_memory)
        runner = perf_mod.Runner(info, proc.pid, seed=args.seed, azurite=azurite,
                                 log=lambda m: print(m, flush=True))
        def prof(scen: str, store: str) -> str | None:
            if not args.profile:
                return None
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            return str(Path(args.profile).resolve() / f"{scen}_{store}")

        steps: list[tuple[str, Any]] = [("serve", lambda: runner.serve("XL" if args.xl else scenarios[-1], command))]
        for scen in scenarios:
            steps.append((f"sync {scen} memory", lambda scen=scen: runner.sync(scen, "memory", command,
                                                                             profile=prof(scen, "memory"))))
            if args.tracemalloc:
                steps.append((f"sync {scen} tracemalloc",
                              lambda scen=scen: runner.sync(scen, "memory", command, tracemalloc=True)))
            if azurite is not None and (scen != "XL" or args.xl_azurite):
                cap = XL_AZURITE_SECONDS if scen == "XL" else 1800
                steps.append((f"sync {scen} table",
                              lambda scen=scen, cap=cap: runner.sync(scen, "table", command, timeout=cap,
                                                                     profile=prof(scen, "table"))))
        seed_on = [s for s in scenarios if s != "XL"] or ["L"]
        steps.append(("baseline", lambda: runner.baseline(seed_on[-1], command)))
        if "scale" in args.stack.split(","):
            steps.append(("baseline scale", lambda: runner.baseline("scale", command)))
        if args.xl:
            steps.append(("baseline XL", lambda: runner.baseline("XL", command, timeout=3600)))
        if args.fleet:
            steps.append(("fleet", lambda: runner.fleet(args.fleet_tenants, args.heartbeat_concurrency, command)))
        if args.fleet_poll:
            workers = [int(w) for w in args.fleet_workers.split(",") if w]
            steps.append(("fleetpoll", lambda: runner.fleet_poll(args.fleet_poll, workers, command,
                                                                 throttle_scale=args.fleet_scale,
                                                                 scaled_count=args.fleet_scaled_tenants,
                                                                 profile_dir=args.fleet_profile,
                                                                 warm=args.fleet_warm)))
        if args.coldstart:
            steps.append(("coldstart", lambda: runner.coldstart(command)))
        stack = [s for s in args.stack.split(",") if s] + (["XL"] if args.xl and "XL" not in args.stack else [])
        for scen in stack:
            steps.append((f"stack {scen}", lambda scen=scen: runner.stack(scen, command, cap=args.stack_cap)))
        failed: list[str] = []
        if args.steps:
            wanted = [w.strip() for w in args.steps.split(",") if w.strip()]
            steps = [(n, f) for n, f in steps if any(w == n or n.startswith(w + " ") for w in wanted)]
        try:
            for name, step in steps:
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
                    where = "".join(traceback.format_exception(exc)[-3:])
                    print(f"  {name} FAILED: {str(exc)[-1500:]}\n{where}", flush=True)
                    failed.append(name)
        finally:
            runner.close()
            if azurite is not None:
                azurite.stop()
            launch.stop(proc)
    return failed


XL_AZURITE_SECONDS = 600


def render_all(results: dict[str, Any]) -> str:
    """The whole docs/benchmarks.md."""
    entries = results.get("entries", {})
    cost_rows = [entries[k]["row"] for k in sorted(entries, key=lambda k: report.SCENARIO_ORDER.get(k[5:], 9))
                 if k.startswith("cost:")]
    cost_meta = next((entries[k] for k in entries if k.startswith("cost:")), {})
    lines = ["# Benchmarks", ""]
    lines += report.prose("intro")
    lines += report.targets_section(results)
    lines += report.prose("issue9")
    lines += report.machine_section(results)
    lines += report.serve_section(results)
    lines += report.sync_section(results)
    lines += report.memory_section(results)
    lines += report.prose("memory")
    lines += report.polls_section(results)
    lines += report.baseline_section(results)
    lines += report.fleet_section(results)
    lines += report.stack_section(results)
    lines += report.fleetpoll_section(results)
    lines += report.coldstart_section(results)
    lines += report.plots_section(plots.draw(results))
    if cost_rows:
        lines.append(render(cost_rows, int(cost_meta.get("seed", 7)), cost_meta.get("measured")))
    lines += report.prose("meaning")
    lines += report.prose("findings")
    lines += report.commands_section(results)
    return "\n".join(lines)


def snapshot_run(argv: list[str]) -> int:
    """Re-run this command on the committed code: ``git archive HEAD`` into a temp dir + this bench/ folder.

    Several people edit the tree while benchmarks run; a half-saved product file must not end up in the figures.
    Results and the report still land in this checkout (BENCH_RESULTS, --out); BENCH_COMMIT records the commit.
    """
    import shutil
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as snap:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", snap], input=archive, check=True)
        shutil.rmtree(Path(snap) / "bench", ignore_errors=True)
        shutil.copytree(ROOT / "bench", Path(snap) / "bench", ignore=shutil.ignore_patterns("__pycache__"))
        env = dict(os.environ)
        env.update({"BENCH_RESULTS": str(perf_mod.RESULTS), "BENCH_COMMIT": commit, "BENCH_SNAPSHOT": "1",
                    "AZURITE_BIN": env.get("AZURITE_BIN") or str(ROOT / "node_modules" / ".bin" / "azurite"),
                    "PYTHONPATH": snap})
        rest = [a for a in argv if a != "--snapshot"]
        # Paths are relative to where the user is, not to the snapshot.
        for flag in ("--profile", "--fleet-profile", "--out"):
            if flag in rest[:-1]:
                i = rest.index(flag)
                rest[i + 1] = str(Path(rest[i + 1]).resolve())
        if not any(a == "--out" or a.startswith("--out=") for a in rest):
            rest += ["--out", str(ROOT / "docs" / "benchmarks.md")]
        print(f"bench: measuring commit {commit} (snapshot in {snap})", flush=True)
        return subprocess.run([sys.executable, "-m", "bench", *rest], cwd=snap, env=env, check=False).returncode


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--scenarios", default="small,M,L", help="tenants of the Graph cost table")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--only", choices=("cost", "perf", "render"), default=None,
                        help="only the Graph cost table, only the speed/memory runs, or only re-render the report")
    parser.add_argument("--perf-scenarios", default="M,L", help="tenants of the speed/memory runs")
    parser.add_argument("--xl", action="store_true", help="also XL: serving speed, full sync, seed baseline")
    parser.add_argument("--xl-azurite", action="store_true",
                        help=f"also the XL full sync on Azurite (given up after {XL_AZURITE_SECONDS // 60} min)")
    parser.add_argument("--no-azurite", action="store_true", help="skip the Table-store runs")
    parser.add_argument("--azurite-in-memory", action="store_true",
                        help="Azurite with --inMemoryPersistence: no 5-second snapshot of its whole database to disk "
                             "(which grows with the data set and dominates Azurite's CPU in big runs)")
    parser.add_argument("--tracemalloc", action="store_true", help="extra runs with the Python heap traced")
    parser.add_argument("--steps", default="",
                        help="only these perf steps (names or word prefixes), e.g. 'sync L table,fleet' "
                             "(names: serve, sync SCEN memory|tracemalloc|table, baseline, baseline XL, fleet)")
    parser.add_argument("--profile", default="", metavar="DIR",
                        help="cProfile the sync runs' full and one-change polls into DIR (figures not recorded)")
    parser.add_argument("--fleet", action="store_true", help="provisioning + heartbeats for a fleet")
    parser.add_argument("--fleet-tenants", type=int, default=50)
    parser.add_argument("--heartbeat-concurrency", type=int, default=8)
    parser.add_argument("--stack", default="M,L,scale",
                        help="tenants run through devhost + function_app.py (timer + queue, Table store on Azurite); "
                             "'' for none; --xl adds XL")
    parser.add_argument("--stack-cap", type=float, default=1800.0,
                        help="seconds a stack run's first full reconcile may take before it is recorded as not "
                             "converged")
    parser.add_argument("--fleet-poll", type=int, default=1000, metavar="N",
                        help="N tenants polled through timer + queue on devhost nodes (0: skip)")
    parser.add_argument("--fleet-workers", default="1,2,4", help="queue-worker (devhost process) counts to measure")
    parser.add_argument("--fleet-scale", type=float, default=0.002,
                        help="Graph quota scale of the paced / not paced comparison (0: skip it)")
    parser.add_argument("--fleet-scaled-tenants", type=int, default=200)
    parser.add_argument("--fleet-warm", action="store_true",
                        help="a second quiet cycle on the same nodes per worker count (tokens, connections held)")
    parser.add_argument("--fleet-profile", default="", metavar="DIR",
                        help="cProfile every node of the fleet's quiet cycles into DIR (their wall times are then "
                             "not figures)")
    parser.add_argument("--no-coldstart", dest="coldstart", action="store_false",
                        help="skip the cold-start measurements")
    parser.add_argument("--quick", action="store_true",
                        help="the < 5-minute subset: cost table small+M, speed/memory and seed baseline on M, the "
                             "stack run on M, cold start, a 50-tenant fleet on 1 and 2 workers and the paced / "
                             "not paced comparison on 20 tenants (make bench BENCH=quick)")
    parser.add_argument("--snapshot", action="store_true",
                        help="measure the committed code (git archive HEAD + this bench/) instead of the work tree")
    args = parser.parse_args(argv)
    if args.quick:
        args.scenarios, args.perf_scenarios, args.stack, args.xl, args.xl_azurite = "small,M", "M", "M", False, False
        args.fleet_poll, args.fleet_workers, args.fleet_scaled_tenants = 50, "1,2", 20
    raw = list(argv if argv is not None else sys.argv[1:])
    if args.snapshot:
        return snapshot_run(raw)
    # Recorded with each figure; a snapshot child reports the command the user typed (with --snapshot).
    shown = [a for a in raw if not (os.environ.get("BENCH_SNAPSHOT") and a.startswith("--out"))]
    if os.environ.get("BENCH_SNAPSHOT") and "--out" in raw:
        i = raw.index("--out")
        shown = raw[:i] + raw[i + 2:]
    command = "python -m bench " + ("--snapshot " if os.environ.get("BENCH_SNAPSHOT") else "") + " ".join(shown)
    if args.only in (None, "cost"):
        rows = await cost([s for s in args.scenarios.split(",") if s], args.seed)
        results = perf_mod.load_results()
        for row in rows:
            results["entries"][f"cost:{row['scenario']}"] = {"measured": perf_mod.now_iso(), "command": command,
                                                            "seed": args.seed, "row": row}
        perf_mod.save_results(results)
        print(json.dumps(rows, indent=1))
    failed: list[str] = []
    if args.only in (None, "perf"):
        failed = perf(args, command.strip())
    results = perf_mod.load_results()
    Path(args.out).write_text(render_all(results))  # noqa: ASYNC240 - once, after the work
    if failed:
        print(f"failed measurements: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
