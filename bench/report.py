"""Render docs/benchmarks.md from bench/results.json (every figure in the report comes from that file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NOTES = Path(__file__).resolve().parent / "notes"

SCENARIO_ORDER = {"small": 0, "M": 1, "L": 2, "scale": 3, "XL": 4}


def prose(name: str) -> list[str]:
    """Hand-written text of the report (bench/notes/NAME.md), kept apart from the generated tables."""
    path = NOTES / f"{name}.md"
    return [*path.read_text().rstrip("\n").split("\n"), ""] if path.exists() else []


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _entries(results: dict[str, Any], prefix: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(k, v) for k, v in results.get("entries", {}).items() if k.startswith(prefix)]
    return sorted(found, key=lambda kv: (SCENARIO_ORDER.get(kv[1].get("scenario", ""), 9), kv[0]))


def _table_writes(w: dict[str, int]) -> str:
    ops = w.get("entity_ops", 0)
    http = {k[5:]: v for k, v in w.items() if k.startswith("http_")}
    if not http:
        return _f(ops)
    writes = sum(v for k, v in http.items() if k not in ("get", "query"))
    return f"{_f(ops)} ({_f(http.get('batch', 0))} txn, {_f(writes)} write calls)"


def _table_reads(w: dict[str, int]) -> str:
    http = {k[5:]: v for k, v in w.items() if k.startswith("http_")}
    return f"{_f(http.get('get', 0))} / {_f(http.get('query', 0))}" if http else "–"


def machine_section(results: dict[str, Any]) -> list[str]:
    """Where the figures come from."""
    m = results.get("machine", {})
    return [
        "## Machine",
        "",
        f"* `nproc`: **{m.get('nproc')}** ({m.get('cpu') or 'unknown CPU'}), memory {m.get('memory')}",
        f"* Python {m.get('python')} (`.venv`), {m.get('platform')}",
        "* Code measured: a snapshot of the named commit (`--snapshot`: `git archive HEAD` + this bench/), so",
        "  uncommitted edits by others never leak into the figures; each figure's commit is in \"Reproduce\".",
        "* Everything on one box: the simulator (one aiohttp process), Azurite 3.35 (node) when used, and the",
        "  connector process under test share the 2 cores, so wall times include the other side's CPU.",
        "",
    ]


def serve_section(results: dict[str, Any]) -> list[str]:
    """1. Simulator serving speed."""
    rows = _entries(results, "serve:")
    lines = [
        "## 1. Simulator serving speed",
        "",
        "A bare `httpx.Client` in its own process (token from the simulator's Entra, then pages followed by",
        "`@odata.nextLink`): `GET /v1.0/devices?$top=999&$select=id,deviceId,operatingSystem,operatingSystemVersion`",
        "(999 per page) and the first `GET /v1.0/devices/delta?$select=…` round (200 per page). Client CPU is the",
        "worker's; simulator CPU is read from `/proc/<pid>/stat` before and after.",
        "",
        "| tenant | walk | requests | devices | RU | 429s | wall s | devices/s | client CPU s | simulator CPU s |"
        " MiB on the wire | client peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, e in rows:
        for walk in ("list", "delta"):
            s = e[walk]
            lines.append(
                f"| {e['scenario']} ({_f(e['counts']['devices'])} devices) | `{walk}` | {_f(s['requests'])} | "
                f"{_f(s['devices'])} | {_f(s['ru'])} | {_f(s['throttled'])} | {_f(s['wall_s'])} | "
                f"**{_f(s['devices_per_s'])}** | {_f(s['cpu_s'])} | {_f(s.get('simulator_cpu_s'))} | "
                f"{_f(s['bytes'] / 2**20, 1)} | {_f(e['process']['peak_rss_mb'], 1)} |"
            )
    lines.append("")
    return lines


def sync_section(results: dict[str, Any]) -> list[str]:
    """2. Full sync per tenant and store."""
    rows = [(k, v) for k, v in _entries(results, "sync:") if not k.endswith(":tracemalloc")]
    lines = [
        "## 2. Connector full sync (real engine, simulator over HTTPS)",
        "",
        "`PollEngine.poll()` — the function app's code path — in a fresh process per run: the full reconcile",
        "(groups/delta round, name lookups, counts, devices + owners by the cheapest strategy, reconcile, writes),",
        "then the polls that finish the first `devices/delta` round (one step per poll here: up to 2,000 pages or 60 s;"
        " the function app chains the steps by continuation messages). *memory* = the in-memory",
        "stores (tenants, cursors, device rows + events, graph) inside the connector process; *table* = the",
        "Table stores on Azurite (`TableEnrollmentStore`, `TableCursorStore`, `TableTenantRepository`).",
        "Table writes = entity operations (device row + event per change + the meta row per transaction, cursors,",
        "status); for *table* also the storage HTTP calls (entity-group transactions, single writes).",
        "",
        "| tenant | store | users / devices | in-scope users | enrolled | full: requests / RU / 429s | wall s |"
        " connector CPU s | simulator CPU s | Azurite CPU s | table writes | first devices round: polls / requests /"
        " wall s | RSS before → peak MiB | RSS at 25 / 50 / 75 / 100 % of requests, MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    stopped = []
    for _, e in rows:
        full = e["phases"]["full"]
        cu = e["phases"].get("catchup", {})
        proc = e["process"]
        q = full.get("rss_by_progress_mb", {})
        if full.get("timed_out"):
            stopped.append(e)
            lines.append(
                f"| {e['scenario']} | {e['store']} | {_f(e['counts']['users'])} / {_f(e['counts']['devices'])} | "
                f"{_f(e['truth']['users_in_scope'])} | – | {_f(full['requests'])} / – / – | **stopped at "
                f"{_f(full['deadline_s'], 0)} s** | {_f(full['cpu_s'])} | {_f(full.get('simulator_cpu_s'))} | "
                f"{_f(full.get('azurite_cpu_s'))} | {_table_writes(full['writes'])} | – | "
                f"{_f(proc['base_rss_mb'], 1)} → **{_f(proc['peak_rss_mb'], 1)}** | – |"
            )
            continue
        lines.append(
            f"| {e['scenario']} | {e['store']} | {_f(e['counts']['users'])} / {_f(e['counts']['devices'])} | "
            f"{_f(e['truth']['users_in_scope'])} | {_f(full.get('enrolled'))} | "
            f"{_f(full['requests'])} / {_f(full['ru'])} / {_f(full['throttled'])} | **{_f(full['wall_s'])}** | "
            f"{_f(full['cpu_s'])} | {_f(full.get('simulator_cpu_s'))} | {_f(full.get('azurite_cpu_s'))} | "
            f"{_table_writes(full['writes'])} | {_f(cu.get('polls'))} / {_f(cu.get('requests'))} / "
            f"{_f(cu.get('wall_s'))} | {_f(proc['base_rss_mb'], 1)} → **{_f(proc['peak_rss_mb'], 1)}** | "
            f"{' / '.join(_f(q.get(k), 1) for k in ('p25', 'p50', 'p75', 'p100'))} |"
        )
    for e in stopped:
        full = e["phases"]["full"]
        lines += ["", f"*{e['scenario']} on {e['store']}*: the full reconcile did not complete within the "
                  f"{_f(full['deadline_s'] / 60, 0)}-minute cap; when stopped it had committed "
                  f"{_f(full['batches_done'])} entity-group transactions of ≈ "
                  f"{_f(-(-e['truth']['devices'] // 49))} needed (49 changes each), the last ten taking "
                  f"{_f(full.get('batch_s_last10'))} s each."]
    for key, note in results.get("notes", {}).items():
        if key.startswith("sync:"):
            lines += ["", f"*{key}*: {note}"]
    trend = [(e["scenario"], e["phases"]["full"]) for _, e in rows
             if e["store"] == "table" and e["phases"]["full"].get("batch_s_first_tenth") is not None]
    if trend:
        lines += ["", "Azurite entity-group transaction round trip (49 changes = 99 operations each), first vs last "
                  "tenth of the full reconcile's transactions:", ""]
        for scen, f in trend:
            lines.append(f"* {scen}: {_f(f['batch_s_first_tenth'], 3)} s → {_f(f['batch_s_last_tenth'], 3)} s")
    waits = [(e["scenario"], e["phases"]["full"].get("table_wait_s")) for _, e in rows if e["store"] == "table"]
    if any(w for _, w in waits):
        lines += ["", "Time the *table* full reconciles spent waiting on storage round trips (s, by call kind):", ""]
        for scen, w in waits:
            if w:
                lines.append(f"* {scen}: " + ", ".join(f"{k} {_f(v)}" for k, v in sorted(w.items())))
    lines.append("")
    return lines


def memory_section(results: dict[str, Any]) -> list[str]:
    """Python heap peaks (tracemalloc runs)."""
    rows = _entries(results, "sync:")
    tm = [(k, v) for k, v in rows if k.endswith(":tracemalloc")]
    lines = ["### Memory while streaming pages", ""]
    plain = [(k, v) for k, v in rows if not k.endswith(":tracemalloc")]
    if plain:
        lines += [
            "| tenant | store | tenant devices | in-scope users | enrolled | peak − before (RSS) MiB |"
            " KiB per tenant device | KiB per enrolled device |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, e in plain:
            if e["phases"]["full"].get("timed_out"):
                continue
            d = e["process"]["peak_rss_mb"] - e["process"]["base_rss_mb"]
            enrolled = e["phases"]["full"].get("enrolled") or 1
            lines.append(
                f"| {e['scenario']} | {e['store']} | {_f(e['counts']['devices'])} | "
                f"{_f(e['truth']['users_in_scope'])} | {_f(enrolled)} | {_f(d, 1)} | "
                f"{_f(d * 1024 / e['counts']['devices'], 2)} | {_f(d * 1024 / enrolled, 2)} |"
            )
        lines.append("")
    if tm:
        lines += [
            "Python heap (tracemalloc, separate runs — tracing slows a run 3–4×, so no timings from these). *before*",
            "= after imports and setup; *peak* = highest during the full reconcile; *after* = when it returned (the",
            "in-memory store keeps the rows); the sizes are measured object by object (`deep_size`) when the",
            "devices + owners read returns (`seen` = every device id of the tenant, `records` = devices of in-scope",
            "users) and after the run (membership graph, stored rows and events):",
            "",
            "| tenant | heap before → peak → after MiB | peak − before MiB | `seen` ids: items / MiB |"
            " `records`: items / MiB | scope MiB | membership graph: groups / edges / MiB | stored rows + events MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for _, e in tm:
            full = e["phases"]["full"]
            z = e.get("sizes", {})
            inv, items = z.get("inventory_mb", {}), z.get("inventory_items", {})
            before, peak = full.get("py_heap_before_mb"), full.get("py_heap_peak_mb")
            lines.append(
                f"| {e['scenario']} | {_f(before, 1)} → **{_f(peak, 1)}** → {_f(full.get('py_heap_after_mb'), 1)} | "
                f"**{_f(peak - before, 1) if peak is not None and before is not None else '–'}** | "
                f"{_f(items.get('seen'))} / {_f(inv.get('seen'), 1)} | {_f(items.get('records'))} / "
                f"{_f(inv.get('records'), 1)} | {_f(z.get('scope_mb'), 1)} | {_f(z.get('membership_graph_groups'))} / "
                f"{_f(z.get('membership_graph_edges'))} / {_f(z.get('membership_graph_mb'), 1)} | "
                f"{_f((z.get('memory_store_rows_mb') or 0) + (z.get('memory_store_events_mb') or 0), 1)} |"
            )
        lines.append("")
    return lines


def polls_section(results: dict[str, Any]) -> list[str]:
    """3. Quiet and one-change polls."""
    rows = [(k, v) for k, v in _entries(results, "sync:") if not k.endswith(":tracemalloc")]
    lines = [
        "## 3. No-change poll and one-change poll",
        "",
        "After the full sync: a poll with nothing changed, then a poll after one membership change (a user not in",
        "scope who owns an iOS and an Android device is added to the first enrollment group via the admin API).",
        "",
        "| tenant | store | poll | mode | requests | RU | 429s | wall s | CPU s | entity writes | table reads:"
        " point gets / queries |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, e in rows:
        for name, label in (("quiet", "no change"), ("one_change", "one change")):
            p = e["phases"].get(name)
            if not p or p.get("timed_out"):
                continue
            lines.append(
                f"| {e['scenario']} | {e['store']} | {label} | {p['mode']} | **{_f(p['requests'])}** | {_f(p['ru'])} |"
                f" {_f(p['throttled'])} | {_f(p['wall_s'])} | {_f(p['cpu_s'])} | "
                f"**{_f(p['writes'].get('entity_ops', 0))}** | {_table_reads(p['writes'])} |"
            )
    lines.append("")
    return lines


def baseline_section(results: dict[str, Any]) -> list[str]:
    """4. Seed baseline vs ours."""
    lines = [
        "## 4. Seed baseline vs ours",
        "",
        "Seed = `bench/baseline.py` (group by name, `/groups/{id}/members` walk with `$top=999`, then one",
        "`GET /users/{id}/ownedDevices` per in-scope user), run in its own process with the same Graph client and",
        "retry layer. Ours = the full reconcile from table 2 (in-memory store; it also reconciles and writes,",
        "the baseline only reads).",
        "",
        "| tenant | who | requests | RU | 429s | wall s | CPU s | simulator CPU s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    entries = results.get("entries", {})
    for _, b in _entries(results, "baseline:"):
        scen = b["scenario"]
        ours = entries.get(f"sync:{scen}:memory")
        if ours:
            f = ours["phases"]["full"]
            lines.append(
                f"| {scen} | ours (`{f.get('strategy')}`) | {_f(f['requests'])} | {_f(f['ru'])} | "
                f"{_f(f['throttled'])} | {_f(f['wall_s'])} | {_f(f['cpu_s'])} | {_f(f.get('simulator_cpu_s'))} | "
                f"{_f(ours['process']['peak_rss_mb'], 1)} |"
            )
        extrap = " *(extrapolated)*" if b.get("extrapolated") else ""
        lines.append(
            f"| {scen} | seed baseline{extrap} | {_f(b['requests'])} | {_f(b['ru'])} | {_f(b['throttled'])} | "
            f"{_f(b['wall_s'])} | {_f(b['cpu_s'])} | {_f(b.get('simulator_cpu_s'))} | "
            f"{_f(b.get('process', {}).get('peak_rss_mb'), 1)} |"
        )
        if ours:
            f = ours["phases"]["full"]
            lines.append(
                f"| {scen} | **seed ÷ ours** | **{b['requests'] / max(1, f['requests']):.1f}×** | "
                f"{b['ru'] / max(1, f['ru']):.1f}× | | **{b['wall_s'] / max(1e-9, f['wall_s']):.1f}×** | "
                f"{b['cpu_s'] / max(1e-9, f['cpu_s']):.1f}× | | |"
            )
    for key, note in results.get("notes", {}).items():
        if key.startswith("baseline:"):
            lines += ["", f"*{key}*: {note}"]
    lines.append("")
    return lines


def fleet_section(results: dict[str, Any]) -> list[str]:
    """5. Fleet heartbeats."""
    rows = _entries(results, "fleet:")
    if not rows:
        return ["## 5. Fleet heartbeats", "", "Not measured yet: `python -m bench --fleet`.", ""]
    lines = [
        "## 5. Fleet heartbeats",
        "",
        "The fleet scenario (mostly `small` tenants, every fifth `M`) with the function app's own wiring",
        "(`shared_code/intune/wiring.build_intune`, Table tenant repository on Azurite) and",
        "`HEARTBEAT_CONCURRENCY` as shown. *provision*: `ProvisioningService.provision` per tenant, 8 at a time",
        "(consent check, Intune endpoint discovery, `PartnerTenants` PUT). *cold heartbeat run*: a **fresh",
        "process** runs `HeartbeatService.run()` — what the timer does on a new instance (no token cached; the",
        "Intune endpoints discovered at provisioning come from the tenant's status, so no Graph call). *warm run*:",
        "`run(force=True)` again in that process (tokens cached). Requests are the simulator's counters summed",
        "over the fleet's tenants; table calls are the connector's storage HTTP calls (tenant rows).",
        "",
        "| tenants | concurrency | phase | requests | token / Graph / Intune | Graph RU | 429s | wall s | CPU s |"
        " simulator CPU s | table calls: reads / writes | sent / failed | peak in flight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, e in rows:
        for name, label in (("provision", "provision"), ("heartbeats_cold", "cold heartbeat run"),
                            ("heartbeats_warm", "warm run (forced)")):
            p = e["phases"].get(name)
            if not p:
                continue
            fam = p.get("by_family", {})
            tc = p.get("table_calls", {})
            reads = tc.get("get", 0) + tc.get("query", 0)
            writes = sum(v for k, v in tc.items() if k in ("POST", "PUT", "PATCH", "MERGE", "DELETE", "batch"))
            sent = f"{p['heartbeats_sent']} / {p['heartbeats_failed']}" if "heartbeats_sent" in p else "–"
            lines.append(
                f"| {e['tenants']} | {e['concurrency']} | {label} | **{_f(p['requests'])}** | "
                f"{_f(fam.get('token', 0))} / {_f(fam.get('graph', 0))} / {_f(fam.get('intune', 0))} | "
                f"{_f(p.get('ru'))} | {_f(p['throttled'])} | **{_f(p['wall_s'])}** | {_f(p['cpu_s'])} | "
                f"{_f(p.get('simulator_cpu_s'))} |"
                f" {_f(reads)} / {_f(writes)} | {sent} | {_f(p.get('peak_in_flight'))} |"
            )
        warm = e["phases"].get("heartbeats_warm", {})
        lines.append(f"\nHeartbeat process peak RSS {_f(e['process']['peak_rss_mb'], 1)} MiB; Intune's own "
                     f"heartbeat count per tenant after both runs: {warm.get('sim_heartbeat_counts')}.")
    lines.append("")
    return lines


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}×" if isinstance(a, int | float) and isinstance(b, int | float) and b else "–"


def stack_section(results: dict[str, Any]) -> list[str]:
    """The function app's own path: devhost + function_app.py, timer + queue, Table store on Azurite."""
    rows = _entries(results, "stack:")
    if not rows:
        return []
    lines = [
        "## Through the function app: timer + queue on devhost, Table store on Azurite",
        "",
        "`python -m bench --stack SCENARIOS` (bench/stack.py): a fresh process runs devhost with `function_app.py`",
        "(host.json as deployed: `functionTimeout` 10 min, 4 + 2 concurrent queue messages, 30 s visibility timeout,",
        "poison after 5 dequeues). The tenant is provisioned with `PUT /api/tenants/{id}`; every poll is the",
        "`dispatch_polls` timer feeding `poll_tenant` on the queue, so continuation messages, timeouts and",
        "redeliveries count as invocations. *Converge* = dispatch until every queue is drained, then the enrolled",
        "rows read back through `GET /api/tenants/{id}/devices` are compared with the simulator's ground truth.",
        "Graph figures are the simulator's counters for the tenant (tokens apart; *requests* are HTTP requests, as",
        "the bound counts them: a `$batch` is one, its inner requests count in RU); the first `devices/delta` round's",
        "pages after its first are the devices cursor's cost, counted under *catch-up* below, not in *full*; entity",
        "writes are counted on the",
        "connector's Table clients (the poll lease's take + release is shown apart). The lower bound is what a",
        "correct full reconcile must read (bench/bound.py: the groups in scope and their members, the scope users'",
        "devices + owners, cursors) — not the tenant's whole `groups/delta` round.",
        "",
        "| tenant | users / devices | users in scope / groups in scope | lower bound: requests / RU (plan) |"
        " full: requests / RU / 429s | ÷ bound: requests / RU | converge: wall s | invocations (longest s) |"
        " entity writes | peak RSS MiB (idle) | connector / Azurite CPU s | load avg | truth == stored |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, e in rows:
        f = e["phases"].get("full", {})
        b = e["bound"]
        inv = f.get("invocations", {})
        chk = e.get("checks", {}).get("after_full", {})
        conv = f"**{_f(f.get('wall_s'))}**" + ("" if f.get("drained") else " (not drained at the cap)") + (
            f" (incl. {f['scheduled_cycles']} scheduled cycle(s))" if f.get("scheduled_cycles") else "")
        truth = "yes" if chk.get("equal") else f"no: {chk.get('missing')} missing, {chk.get('extra')} extra"
        lines.append(
            f"| {e['scenario']} | {_f(e['counts']['users'])} / {_f(e['counts']['devices'])} | "
            f"{_f(e['shape']['scope_users'])} / {_f(b['fixed']['groups_in_scope'])} | "
            f"{_f(b['requests'])} / {_f(b['ru'])} (`{b['plan']}`) | "
            f"{_f(f.get('requests'))} / {_f(f.get('ru'))} / {_f(f.get('throttled'))} | "
            f"**{_ratio(f.get('requests'), b['requests'])}** / **{_ratio(f.get('ru'), b['ru'])}** | {conv} | "
            f"{_f(inv.get('count'))} ({_f(inv.get('longest_s'))}) | {_f(f.get('entity_writes'))} | "
            f"{_f(f.get('peak_rss_mb'), 1)} ({_f(e.get('idle_rss_mb'), 1)}) | "
            f"{_f(f.get('cpu_s'))} / {_f(f.get('azurite_cpu_s'))} | {_f(f.get('loadavg_1m'))} | {truth} |"
        )
    lines += [
        "",
        "Full reconcile requests by route:",
        "",
    ]
    for _, e in rows:
        routes = e["phases"].get("full", {}).get("routes", {})
        lines.append(f"* {e['scenario']}: " + ", ".join(f"`{k}` {v}" for k, v in sorted(routes.items())))
    lines += [
        "",
        "After the full reconcile: the first `devices/delta` round after its first page (*catch-up*: its pages are",
        "read by continuation steps in the full phase's own chain, so they are counted here and not in *full*;",
        "*cycles* = scheduled cycles it still needed), the first cycle with nothing to do (*quiet*), and a cycle",
        "after 1 % of the in-scope devices changed (*churn*: a third deleted, a third added to in-scope owners, a",
        "third owned by new users joining the first enrollment group).",
        "",
        "| tenant | catch-up: cycles / requests / writes | quiet: requests / RU / entity writes (lease) / wall s |"
        " churn: changes / requests / RU / entity writes / wall s | truth == stored after churn |",
        "|---|---|---|---|---|",
    ]
    for _, e in rows:
        c, q, ch = (e["phases"].get(k) or {} for k in ("catchup", "quiet", "churn"))
        chk = e.get("checks", {}).get("after_churn")
        if chk is None:
            truth = "–"
        elif chk.get("equal"):
            truth = "yes" + (f" after {chk['extra_cycles']} more cycle(s)" if chk.get("extra_cycles") else "")
        else:
            truth = f"no: {chk.get('missing')} missing, {chk.get('extra')} extra after 3 more cycles"
        lines.append(
            f"| {e['scenario']} | {_f(c.get('polls'))} / {_f(c.get('requests'))} / {_f(c.get('entity_writes'))} | "
            f"**{_f(q.get('requests'))}** / {_f(q.get('ru'))} / **{_f(q.get('entity_writes'))}** "
            f"({_f(q.get('lease_writes'))}) / {_f(q.get('wall_s'))} | "
            f"{_f(ch.get('changes'))} / {_f(ch.get('requests'))} / {_f(ch.get('ru'))} / "
            f"{_f(ch.get('entity_writes'))} / {_f(ch.get('wall_s'))} | {truth} |"
        )
    lines.append("")
    return lines


def fleetpoll_section(results: dict[str, Any]) -> list[str]:
    """Fleet polling through timer + queue on 1..N devhost nodes, and the pacer under scaled Graph quotas."""
    rows = sorted(_entries(results, "fleetpoll:"), key=lambda kv: kv[1]["tenants"])
    if not rows:
        return []
    lines = [
        "## Fleet: tenants per 5-minute cycle, scaling with queue workers, paced",
        "",
        "`python -m bench --fleet-poll N` (bench/fleet.py): the simulator's fleet mix (mostly `small`, every fifth",
        "`M`), provisioned through `PUT /api/tenants/{id}` (16 at a time), then polled by the app's own",
        "`dispatch_polls` timer and `poll_tenant` queue trigger on 1, 2, … devhost processes sharing one Azurite",
        "queue and one set of tables (like Functions instances). A cycle is dispatch → every queue drained;",
        "*tenants/min* = tenants ÷ cycle wall time. Each process paces Graph to `1 / workers` of the app budget.",
        "Requests / RU / 429s are the simulator's counters over the fleet's tenants (tokens apart). *Storage calls*",
        "are the app's own Table and Queue requests per poll (bench/storage_meter.py; devhost's queue polling",
        "apart); *CPU s* is what Azurite, the simulator and the worker processes used during the cycle. A *warm*",
        "cycle runs on the same processes 5 minutes after the one before it (tokens and connections held).",
        "",
    ]
    for _, e in rows:
        lines += [
            "| tenants | cycle | workers | polls | wall s | tenants/min | Graph requests / RU | 429s |"
            " pacer waits (total s) | storage calls / poll | CPU s Azurite / simulator / workers |"
            " peak RSS MiB per worker | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, c in e["cycles"].items():
            if c.get("profiled"):
                continue  # cProfile's overhead: evidence for the notes, not a figure
            cpu = c.get("cpu_s") or {}
            workers_cpu = sum(v for k, v in cpu.items() if k.startswith("node"))
            cpu_cell = (f"{_f(cpu.get('azurite'), 1)} / {_f(cpu.get('simulator'), 1)} / {_f(workers_cpu, 1)}"
                        if cpu else "–")
            pacers = [p for p in c.get("pacer") or [] if p]
            waits = (f"{sum(p['waited'] for p in pacers):,} ({sum(p['wait_s'] for p in pacers):,.1f})"
                     if pacers else "off" if "pacer" in c else "–")
            tenants = c.get("tenants", e["tenants"])
            lines.append(
                f"| {_f(tenants)} | {name} | {c['workers']} | {_f(c['polls'])} | {_f(c['wall_s'])} | "
                f"**{_f(c.get('tenants_per_min'), 1)}** | {_f(c['requests'])} / {_f(c['ru'])} | "
                f"**{_f(c['throttled'])}** | {waits} | {_f(c.get('storage_calls_per_poll'))} | {cpu_cell} | "
                f"{_f(c.get('peak_rss_mb'), 1)} | {_f(c.get('loadavg_1m'))} |"
            )
        if e.get("azurite_in_memory"):
            lines.append("\n*Azurite* ran with `--inMemoryPersistence` (no 5-second snapshot of its database to disk).")
        if e.get("source"):
            lines.append(f"\n*Source*: {e['source']}.")
        prov = e.get("provision") or {}
        lines.append(f"\nProvisioning {e['tenants']:,} tenants ({e.get('mix')}) through the HTTP API: "
                     f"{_f(prov.get('wall_s'))} s, {_f(prov.get('requests'))} Graph requests, "
                     f"{_f(prov.get('throttled'))} × 429.")
        sc = e.get("scaled")
        if sc:
            lines.append(
                f"\n*Scaled quotas*: the simulator's Graph quotas multiplied by {sc['scale']} (app "
                f"{sc['GRAPH_APP_RU_PER_20S']} RU per 20 s, tenant S {sc['GRAPH_TENANT_RU_PER_10S']} RU per 10 s) "
                f"so the app budget binds at a rate this box can reach; {sc['tenants']} new tenants provisioned "
                "and fully reconciled with the pacer set to the same quotas (*paced*) and with "
                "`GRAPH_PACER_INSTANCES=0` (*not paced*: the retry layer honours `Retry-After`). The 429 column "
                "is what pacing is for.")
    lines.append("")
    return lines


def coldstart_section(results: dict[str, Any]) -> list[str]:
    """Cold start: process start → first responses, idle RSS, imports."""
    e = results.get("entries", {}).get("coldstart")
    if not e:
        return []
    http, poll = e.get("http", []), e.get("poll", [])
    lines = [
        "## Cold start",
        "",
        "`bench/coldstart.py`: a fresh `python -m devhost` process with `function_app.py` per run (three runs each).",
        "*First HTTP response*: `Popen` → first answer of `GET /api/health`; *first console call*: the following",
        "authenticated `GET /api/tenants/{id}` (JWT + JWKS + a table read) on that cold process; *first Graph",
        "response of a poll*: a poll message is waiting on the queue when the process starts, time from `Popen` to",
        "the simulator's first Graph request for the tenant (±5 ms); idle RSS 2 s after the first console call.",
        "",
        "| run | first HTTP response s | first console call s | RSS after it MiB | idle RSS MiB |"
        " first Graph response of a poll s |",
        "|---|---|---|---|---|---|",
    ]
    for i in range(max(len(http), len(poll))):
        h = http[i] if i < len(http) else {}
        p = poll[i] if i < len(poll) else {}
        lines.append(f"| {i + 1} | **{_f(h.get('first_http_s'), 3)}** | {_f(h.get('first_console_call_s'), 3)} | "
                     f"{_f(h.get('rss_after_first_response_mb'), 1)} | {_f(h.get('idle_rss_mb'), 1)} | "
                     f"**{_f(p.get('first_graph_response_s'), 3)}** |")
    bare = e.get("app_import") or []
    if bare:
        lines += ["", "Apart from devhost (in Azure the Functions host is not Python): a bare interpreter starts in "
                  + ", ".join(f"{b['interpreter_start_s']:.2f}" for b in bare) + " s; `import function_app` (the app "
                  "and everything it imports at module level) takes "
                  + ", ".join(f"{b['import_function_app_s']:.2f}" for b in bare) + " s."]
    imp = (e.get("imports") or {}).get("stages") or {}
    lines += ["", "What each stage imports (`python -X importtime` in a separate run — slower than a plain start, so",
              "only the ranking counts): the slowest top-level imports, and the heavy packages at any depth.", ""]
    for stage, info in imp.items():
        top = ", ".join(f"`{m}` {t:.2f}" for m, t in info["top"][:8]) or "nothing"
        heavy = ", ".join(f"`{m}` {t:.2f}" for m, t in sorted(info["heavy"].items(), key=lambda kv: -kv[1]))
        lines.append(f"* **{stage}** (top-level imports {info['total_s']:.2f} s): {top}"
                     + (f"; heavy packages: {heavy}" if heavy else ""))
    lines.append("")
    return lines


def _max(xs: list[Any]) -> Any:
    xs = [x for x in xs if isinstance(x, int | float)]
    return max(xs) if xs else None


def targets_section(results: dict[str, Any]) -> list[str]:
    """Issue 9's targets against the latest figures: met / not met / not measured."""
    entries = results.get("entries", {})
    stack = {e["scenario"]: e for k, e in entries.items() if k.startswith("stack:")}
    rows: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("**met**" if ok else "**not met**")

    for scen, cap in (("scale", 180), ("XL", 600)):
        f = (stack.get(scen) or {}).get("phases", {}).get("full")
        equal = (stack.get(scen) or {}).get("checks", {}).get("after_full", {}).get("equal")
        if f is None:
            rows.append((f"{scen} converges ≤ {cap // 60} min wall", "–", verdict(None)))
        else:
            fig = f"{f['wall_s']:,.0f} s" + ("" if f.get("drained") and equal else " (not converged)") + (
                f" incl. {f['scheduled_cycles']} scheduled cycle(s) after the queue drained"
                if f.get("scheduled_cycles") else "")
            rows.append((f"{scen} converges ≤ {cap // 60} min wall", fig,
                         verdict(bool(f.get("drained") and equal and f["wall_s"] <= cap))))
    big = [e for s, e in stack.items() if s in ("scale", "XL")]
    longest = _max([e["phases"]["full"]["invocations"]["longest_s"] for e in big])
    rows.append(("no invocation > 2 min (scale, XL)", "–" if longest is None else f"longest {longest:,.0f} s",
                 verdict(None if longest is None else longest <= 120)))
    truth = [(s, e.get("checks", {}).get("after_full", {}).get("equal")) for s, e in stack.items()]
    rows.append(("ground truth == stored state", ", ".join(f"{s}: {'yes' if ok else 'no'}" for s, ok in truth) or "–",
                 verdict(None if not truth else all(ok for _, ok in truth))))
    for key, label, limit in (("requests", "requests", 1.15), ("ru", "RU", 1.10)):
        figs = [(s, e["phases"]["full"].get(key, 0) / max(1, e["bound"][key])) for s, e in stack.items()
                if e["phases"]["full"].get("drained")]
        rows.append((f"full reconcile {label} ≤ {limit:.2f} × lower bound",
                     ", ".join(f"{s}: {r:.2f}×" for s, r in figs) or "–",
                     verdict(None if not [s for s, _ in figs if s != "M"] else
                             all(r <= limit for s, r in figs if s != "M"))))
    quiet = [(s, e["phases"].get("quiet")) for s, e in stack.items() if e["phases"].get("quiet")]
    rows.append(("quiet poll ≤ 2 requests and 0 writes",
                 ", ".join(f"{s}: {q['requests']} req / {q['entity_writes']} writes" for s, q in quiet) or "–",
                 verdict(None if not quiet else all(q["requests"] <= 2 and not q["entity_writes"] for _, q in quiet))))
    xl = (stack.get("XL") or {}).get("phases", {}).get("full")
    rows.append(("peak RSS ≤ 256 MB on XL (Table store)",
                 "–" if xl is None else f"{xl.get('peak_rss_mb')} MiB", verdict(None if xl is None else
                                                                                xl.get("peak_rss_mb", 1e9) <= 256)))
    fleet = entries.get("fleetpoll:1000")
    if fleet:
        quiet_cycles = sorted((c["workers"], c["wall_s"]) for n, c in fleet["cycles"].items()
                              if n.startswith("quiet x"))
        throttled = sum(c["throttled"] for n, c in fleet["cycles"].items() if "not paced" not in n)
        paced = fleet["cycles"].get("scaled quotas, paced", {})
        fits = [wall <= 300 for _, wall in quiet_cycles]
        figure = ("quiet cycle " + ", ".join(f"{w} worker(s) {wall:,.0f} s" for w, wall in quiet_cycles)
                  + f"; 429s {throttled} (paced under scaled quotas: {paced.get('throttled', 'not run')})")
        ok = bool(fits) and throttled == 0 and not paced.get("throttled")
        rows.append(("fleet: 1,000 tenants per 5-minute cycle, 0 × 429", figure,
                     verdict(ok and all(fits)) if not (ok and any(fits) and not all(fits)) else
                     "**partly met** (see the fleet section)"))
    else:
        rows.append(("fleet: 1,000 tenants per 5-minute cycle, 0 × 429", "–", verdict(None)))
    cold = entries.get("coldstart")
    if cold:
        http = _max([r["first_http_s"] for r in cold.get("http", [])])
        graph = _max([r["first_graph_response_s"] for r in cold.get("poll", [])])
        rows.append(("first HTTP response ≤ 1.0 s after process start", f"worst of 3: {http} s",
                     verdict(None if http is None else http <= 1.0)))
        rows.append(("first Graph response of a poll ≤ 1.5 s", f"worst of 3: {graph} s",
                     verdict(None if graph is None else graph <= 1.5)))
    lines = ["## Targets (issue 9)", "", "| target | figure | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "(M is left out of the ratio verdicts: a tenant that small is dominated by fixed costs — its 12",
              "requests are the bound's 10 plus the `users/$count` and `devices/$count` reads the first reconcile",
              "uses to choose its read plan, which the bound, knowing the tenant, does not need.)", ""]
    return lines


def plots_section(paths: list[str]) -> list[str]:
    """The PNGs bench/plots.py drew."""
    if not paths:
        return []
    titles = {"cost_vs_size.png": "Graph requests and RU vs tenant size: ours, the lower bound, the seed strategy",
              "converge_vs_size.png": "Time to converge vs tenant size (timer + queue, Table store on Azurite)",
              "rss_vs_size.png": "Peak RSS vs tenant size (the devhost process)",
              "fleet_workers.png": "Fleet: tenants per minute vs queue workers"}
    lines = ["## Plots", ""]
    for p in paths:
        name = p.rsplit("/", 1)[-1]
        lines += [f"![{titles.get(name, name)}]({p})", "", f"*{titles.get(name, name)}*", ""]
    return lines


def commands_section(results: dict[str, Any]) -> list[str]:
    """How each entry was produced."""
    lines = ["## Reproduce", "", "| figures | command | commit | measured |", "|---|---|---|---|"]
    for key, e in sorted(results.get("entries", {}).items()):
        lines.append(f"| `{key}` | `{e.get('command')}` | `{e.get('commit') or '?'}` | {e.get('measured')} |")
    lines += [
        "",
        "* `make bench` runs `python -m bench $(BENCH_ARGS)`. Default: the Graph cost table (small, M, L), the",
        "  speed/memory runs on M and L (serving speed, sync with both stores, quiet/one-change polls, seed",
        "  baseline on L and scale), the function-app path (`--stack M,L,scale`, each first full reconcile capped",
        "  at `--stack-cap` s), the 1,000-tenant fleet on 1, 2 and 4 workers with the paced / not paced comparison",
        "  (`--fleet-poll`, `--fleet-workers`, `--fleet-scale`, `--fleet-scaled-tenants`) and cold start",
        "  (`--no-coldstart` skips it) — an hour or more on 2 shared cores with today's engine.",
        "* `make bench BENCH=quick` (`--quick`): cost table small + M, speed/memory and seed baseline on M, the",
        "  stack run on M, cold start, a 50-tenant fleet on 1 and 2 workers and the paced / not paced comparison",
        "  on 20 tenants — under 5 minutes on an idle box.",
        "* `--xl` adds XL (serving speed, in-memory sync, seed baseline, the stack run); `--xl-azurite` the XL",
        "  sync with the Table store called directly (no devhost)",
        "  (stopped after 10 minutes); `--tracemalloc` the heap runs; `--fleet` the 50-tenant fleet",
        "  (`--fleet-tenants`, `--heartbeat-concurrency`); `--steps 'sync L table,fleet'` runs only those;",
        "  `--only cost|perf|render`.",
        "* `--snapshot` measures the committed code (`git archive HEAD` + the current bench/) — use it while others",
        "  edit the tree. `--profile DIR` writes cProfile stats of the sync runs' full and one-change polls (those",
        "  runs are not recorded). Raw figures: `bench/results.json`, merged per key (a run refreshes what it",
        "  measured and keeps the rest).",
        "",
    ]
    return lines
