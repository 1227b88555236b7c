"""Fuzz the console API with schemathesis: ``python -m tests.fuzz.run [--full]`` (``make fuzz`` runs ``--full``).

Starts the whole local stack in this process tree — the simulator (HTTPS, its own process), Azurite, and devhost
running ``function_app.py`` — provisions one customer tenant through the API, then runs the schemathesis CLI against
``openapi.yaml`` with a valid ``Console.Manage`` token. Path parameters are drawn from a dictionary of real ids
(the provisioned tenant, its enrolled devices and their owners) most of the time and generated otherwise, so the
positive cases reach real data and the negative ones probe validation. Every check runs except ``use_after_free``:
DELETE /tenants/{id} deprovisions but keeps the tenant's history readable (GET answers ``state: deprovisioned``), by
design (ARCHITECTURE §1, issue 4).

``--full`` (``make fuzz``) runs every phase, including the stateful one: schemathesis chains operations along the
``links`` openapi.yaml declares (PUT tenant → GET tenant / devices / events, PUT threat → GET threat, POST inventory →
GET inventory) and those it infers, with ``max-steps`` per scenario. The CI subset (tests/fuzz/test_fuzz_ci.py) skips
the stateful phase.

After schemathesis, a summary is printed from its NDJSON event log: cases and responses per operation and phase,
stateful scenarios / steps / link transitions, failed checks, 5xx responses and schema violations (also written to
``fuzz-summary.json`` in the work dir). The app's own log goes to ``app.log`` there, not to the console.

Exit code: 0 only when schemathesis passed (no failed check) and the summary counts 0 server errors and 0 schema
violations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
EXCLUDED_CHECKS = ("use_after_free",)
# Steps per stateful scenario (schemathesis's default is 6): room for PUT tenant → GET … → PUT threat → GET threat.
STATEFUL_MAX_STEPS = 10


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(path: Path, *, tenants: list[str], devices: list[str], users: list[str]) -> None:
    """schemathesis.toml: dictionaries of real ids bound to the path parameters."""
    path.write_text(
        "\n".join(
            [
                "[dictionaries.tenants]",
                f"values = {_toml_list(tenants)}",
                "[dictionaries.devices]",
                f"values = {_toml_list(devices)}",
                "[dictionaries.users]",
                f"values = {_toml_list(users)}",
                "[parameters]",
                '"path.tenantId" = { dictionary = "tenants", probability = 0.8 }',
                '"path.deviceId" = { dictionary = "devices", probability = 0.8 }',
                '"path.userId" = { dictionary = "users", probability = 0.8 }',
                "[phases.stateful]",
                f"max-steps = {STATEFUL_MAX_STEPS}",
                # Only the links openapi.yaml declares: inferred ones spend the budget on random chains (most often
                # POST sync → DELETE tenant) instead of the workflows the document describes.
                "[phases.stateful.inference]",
                "algorithms = []",
                # Valid input may still meet a world that says no: a generated tenant id that never consented
                # (424 consent-required), a device not enrolled (404), a connector not ready (409).
                "[checks.positive_data_acceptance]",
                'expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "424", "429", "5xx"]',
                # An oversized invalid body is refused by the size cap before its content is read (413).
                "[checks.negative_data_rejection]",
                'expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",'
                ' "429", "5xx"]',
                # Opaque values the schema cannot describe: only cursors the API issued and real user tokens are
                # valid, so a well-formed invented one is refused with 400 naming the field (documented).
                "[[operations]]",
                'include-path = "/tenants/{tenantId}/events"',
                "[operations.checks.positive_data_acceptance]",
                'expected-statuses = ["2xx", "400", "401", "403", "404", "409", "424", "429", "5xx"]',
                # detectedAt more than 5 minutes in the future is refused (it would pin the device's level at Intune):
                # a rule of the clock the schema can only describe in words (documented, 400 field detectedAt).
                "[[operations]]",
                'include-path = "/tenants/{tenantId}/devices/{deviceId}/threat"',
                'include-method = "PUT"',
                "[operations.checks.positive_data_acceptance]",
                'expected-statuses = ["2xx", "400", "401", "403", "404", "409", "424", "429", "5xx"]',
                "[[operations]]",
                'include-path = "/sso/roles"',
                "[operations.checks.positive_data_acceptance]",
                'expected-statuses = ["2xx", "400", "401", "403", "404", "409", "424", "429", "5xx"]',
                "",
            ]
        )
    )


async def run(*, full: bool, max_examples: int | None, seed: int, workdir: Path, keep: bool = True) -> int:
    """Start the stack, provision a tenant, run schemathesis, stop everything. Returns schemathesis's exit code."""
    sys.path.insert(0, str(REPO))
    from devhost.azurite import start_azurite
    from devhost.host import DevHost
    from shared_code.bootstrap import Container, use_container
    from shared_code.settings import SETTING_DEFAULTS, Settings
    from simulator import launch

    started = time.monotonic()
    _log_to_file(workdir / "app.log")
    info, sim_proc = launch.start(workdir / "simulator")
    azurite = start_azurite(workdir / "azurite")
    host: Any = None
    container: Any = None
    try:
        env = launch.client_env(info, base={})
        env.pop("KEY_VAULT_URL", None)
        # Schedules and the queue name are %SETTING% references in the bindings: devhost needs them set.
        env.update({k: v for k, v in SETTING_DEFAULTS.items() if k.endswith("_SCHEDULE") or k == "POLL_QUEUE_NAME"})
        env.update({"AzureWebJobsStorage": azurite.connection_string,
                    "CONNECTOR_CLIENT_SECRET": info["connector"]["client_secret"], "TABLE_PREFIX": "fuzz"})
        os.environ.update({k: env[k] for k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")})
        admin = httpx.Client(base_url=info["base_url"], verify=info["ca_path"], timeout=120)

        def sim(method: str, path: str, **kw: Any) -> Any:
            response = admin.request(method, path, **kw)
            response.raise_for_status()
            return response.json()

        tenant = sim("POST", "/_sim/tenants", json={"scenario": "small", "seed": 3})
        truth = sim("GET", f"/_sim/tenants/{tenant['tenant_id']}/truth",
                    params=[("groups", g) for g in tenant["enrollment_groups"]])
        container = Container(Settings.from_env(env))
        use_container(container)
        import function_app

        host = DevHost(function_app.app, env=env, port=0, enable_timers=False, host_json=REPO / "host.json")
        await host.start()
        if "dispatch_polls" not in host.timer_names:
            # Until the enrollment feature lands, enroll the ground truth directly in the Intune flows' lookup.
            from shared_code.intune.devices import EnrolledDevice, StaticEnrolledDevices
            from shared_code.intune.wiring import use_enrolled_devices

            static = StaticEnrolledDevices()
            for d in truth["devices"]:
                static.add(tenant["tenant_id"], EnrolledDevice(device_id=d["deviceId"], user_id=d["ownerId"],
                                                               operating_system=d["operatingSystem"]))
            use_enrolled_devices(container, static)
        token = sim("POST", "/_sim/tokens/console", json={"roles": ["Console.Manage"], "exp_in": 7200})["access_token"]
        # A console user of the fuzz tenant (a device owner), for the success path of POST /sso/roles (hooks.py).
        owner = next((d["ownerId"] for d in truth["devices"] if d.get("ownerId")), None)
        # Its sign-in token for the connector's API (scope Console.SignIn), as the console SPA would get it.
        user_token = sim("POST", "/_sim/tokens/user", json={"tenant_id": tenant["tenant_id"], "user_id": owner,
                                                            "scopes": ["Console.SignIn"], "exp_in": 7200,
                                                            "audience": "api://mtd-connector"}
                          )["access_token"] if owner else ""
        tenant_body = {"enrollmentGroups": tenant["enrollment_groups"]}
        async with httpx.AsyncClient(base_url=host.base_url, timeout=60) as api:
            response = await api.put(f"/api/tenants/{tenant['tenant_id']}",
                                     headers={"Authorization": f"Bearer {token}"}, json=tenant_body)
            if response.status_code not in (200, 201):
                print(f"provisioning the fuzz tenant failed: {response.status_code} {response.text[:300]}")
                return 2
        if "dispatch_polls" in host.timer_names:
            await host.run_timer("dispatch_polls")
            await host.drain_queues(120)
        config = workdir / "schemathesis.toml"
        fallback = [tenant["tenant_id"]]
        write_config(config, tenants=fallback,
                     # {deviceId} takes the Entra deviceId or the object id: both kinds are in the dictionary.
                     devices=sorted({d["deviceId"] for d in truth["devices"]} | {d["id"] for d in truth["devices"]})
                     or fallback,
                     users=sorted({d["ownerId"] for d in truth["devices"] if d.get("ownerId")}) or fallback)
        examples = max_examples or (100 if full else 8)
        cmd = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
            str(REPO / "openapi.yaml"), "--url", f"{host.base_url}/api",
            "-H", f"Authorization: Bearer {token}",
            "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
            "--max-examples", str(examples), "--seed", str(seed), "--workers", "1",
            "--generation-database", "none", "--suppress-health-check", "all",
            "--request-timeout", "60",
            "--report", "junit,ndjson", "--report-junit-path", str(workdir / "fuzz-junit.xml"),
            "--report-ndjson-path", str(workdir / "fuzz-events.ndjson"),
        ]
        if not full:
            cmd += ["--phases", "examples,coverage,fuzzing"]
        restore_log = workdir / "fuzz-restored.txt"
        restore_log.write_text("")
        child_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks",
            "FUZZ_API": f"{host.base_url}/api",
            "FUZZ_TOKEN": token,
            "FUZZ_USER_TOKEN": user_token,
            "FUZZ_TENANT": tenant["tenant_id"].lower(),
            "FUZZ_RESTORE": json.dumps({tenant["tenant_id"].lower(): tenant_body}),
            "FUZZ_RESTORE_LOG": str(restore_log),
        }
        # cwd = the work dir: schemathesis keeps a crash cache under ./.schemathesis; each run starts clean.
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(workdir), env=child_env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                    limit=2**24)
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            # The token is in the command line only; schemathesis sanitizes Authorization in its output.
            text = line.decode(errors="replace").replace(token, "<token>")
            sys.stdout.write(text.replace(user_token, "<user-token>") if user_token else text)
        code = await proc.wait()
        summary = summarize(workdir / "fuzz-events.ndjson")
        summary["restored_after_delete"] = len(restore_log.read_text().split())  // 2
        summary.update(exit_code=code, max_examples=examples, seed=seed, mode="full" if full else "ci",
                       seconds=round(time.monotonic() - started, 1))
        (workdir / "fuzz-summary.json").write_text(json.dumps(summary, indent=2))
        print(render(summary))
        if keep:
            print(f"fuzz: artefacts in {workdir} (fuzz-junit.xml, fuzz-events.ndjson, fuzz-summary.json, app.log)")
        else:
            print("fuzz: artefacts (JUnit, NDJSON events, summary JSON, app log) are removed; --workdir DIR keeps them")
        if code == 0 and (summary["server_errors"] or summary["schema_violations"]):
            return 1
        return code
    finally:
        if host is not None:
            await host.stop()
        use_container(None)
        if container is not None:
            await container.close()
        azurite.stop()
        launch.stop(sim_proc)


def _log_to_file(path: Path) -> None:
    """The app's records (the simulated tenants' consent errors, staged guards …) go to a file, not the console."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def summarize(events_path: Path) -> dict[str, Any]:
    """Figures from schemathesis's NDJSON event log (one ``ScenarioFinished`` per scenario, with its cases).

    Returns:
        ``operations`` (label → phase → cases, and status classes), ``stateful`` (scenarios, steps, link
        transitions), ``failures`` (check name → count), ``server_errors``, ``schema_violations``, ``cases``.
    """
    per_op: dict[str, dict[str, Any]] = defaultdict(lambda: {"cases": Counter(), "statuses": Counter()})
    stateful = {"scenarios": 0, "steps": 0, "link_transitions": 0, "operations": Counter()}
    failures: Counter[str] = Counter()
    server_errors = 0
    if not events_path.exists():
        return {"operations": {}, "stateful": stateful, "failures": {}, "server_errors": 0, "schema_violations": 0,
                "cases": 0, "missing_events": True}
    with events_path.open(encoding="utf-8") as stream:
        for line in stream:
            event = json.loads(line).get("ScenarioFinished")
            if not event or event.get("status") == "skip":
                continue
            phase = str(event.get("phase"))
            recorder = event.get("recorder") or {}
            cases = recorder.get("cases") or {}
            interactions = recorder.get("interactions") or {}
            if phase == "stateful":
                stateful["scenarios"] += 1
            for case_id, node in cases.items():
                value = node.get("value") or {}
                # Outside the stateful phase a scenario belongs to one operation (its label), even for the coverage
                # phase's unsupported-method probes (TRACE, PATCH … on the operation's path, answered 405).
                label = str(recorder.get("label")) if phase != "stateful" and recorder.get("label") else (
                    f"{value.get('method', '?').upper()} {value.get('path', '?')}")
                if phase == "stateful":
                    stateful["steps"] += 1
                    stateful["operations"][label] += 1
                    stateful["link_transitions"] += 1 if node.get("is_transition_applied") else 0
                op = per_op[label]
                op["cases"][phase] += 1
                response = (interactions.get(case_id) or {}).get("response") or {}
                status = response.get("status_code")
                if isinstance(status, int):
                    op["statuses"][f"{status // 100}xx"] += 1
                    server_errors += 1 if status >= 500 else 0
            for checks in (recorder.get("checks") or {}).values():
                for check in checks:
                    if check.get("status") == "failure":
                        failures[str(check.get("name"))] += 1
    operations = {
        label: {"cases": dict(op["cases"]), "total": sum(op["cases"].values()), "statuses": dict(op["statuses"])}
        for label, op in sorted(per_op.items(), key=lambda kv: kv[0].split(" ", 1)[::-1])
    }
    stateful["operations"] = dict(stateful["operations"])
    return {
        "operations": operations,
        "stateful": stateful,
        "failures": dict(failures),
        "server_errors": server_errors,
        "schema_violations": failures.get("response_schema_conformance", 0),
        "cases": sum(op["total"] for op in operations.values()),
    }


def render(summary: dict[str, Any]) -> str:
    """The summary as a console table."""
    phases = ("examples", "coverage", "fuzzing", "stateful")
    head = f"{'operation':<58}" + "".join(f"{p:>10}" for p in phases) + f"{'total':>8}  responses"
    lines = ["", "fuzz summary", head, "-" * len(head)]
    for label, op in summary["operations"].items():
        counts = "".join(f"{op['cases'].get(p, 0):>10}" for p in phases)
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(op["statuses"].items()))
        lines.append(f"{label:<58}{counts}{op['total']:>8}  {statuses}")
    st = summary["stateful"]
    lines += [
        "-" * len(head),
        f"cases: {summary['cases']}; stateful: {st['scenarios']} scenarios, {st['steps']} steps, "
        f"{st['link_transitions']} steps reached through a link; fuzz tenant re-provisioned after DELETE "
        f"{summary.get('restored_after_delete', 0)}x",
        f"server errors (5xx): {summary['server_errors']}; schema violations: {summary['schema_violations']}; "
        f"failed checks: {sum(summary['failures'].values())} {summary['failures'] or ''}".rstrip(),
    ]
    if "exit_code" in summary:
        lines.append(f"schemathesis exit code {summary['exit_code']}; {summary['mode']} run, max-examples "
                     f"{summary['max_examples']}, seed {summary['seed']}, {summary['seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--full", action="store_true", help="the long run (make fuzz): all phases incl. stateful")
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=20261130)
    parser.add_argument("--workdir", default=None, help="keep artefacts here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.workdir:
        wd = Path(args.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        return asyncio.run(run(full=args.full, max_examples=args.max_examples, seed=args.seed, workdir=wd))
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        return asyncio.run(run(full=args.full, max_examples=args.max_examples, seed=args.seed, workdir=Path(tmp),
                               keep=False))


if __name__ == "__main__":
    sys.exit(main())
