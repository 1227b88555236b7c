"""Fuzz the console API with schemathesis: ``python -m tests.fuzz.run [--full]`` (``make fuzz`` runs ``--full``).

Starts the whole local stack in this process tree — the simulator (HTTPS, its own process), Azurite, and devhost
running ``function_app.py`` — provisions one customer tenant through the API, then runs the schemathesis CLI against
``openapi.yaml`` with a valid ``Console.Manage`` token. Path parameters are drawn from a dictionary of real ids
(the provisioned tenant, its enrolled devices and their owners) most of the time and generated otherwise, so the
positive cases reach real data and the negative ones probe validation. Every check runs except ``use_after_free``:
DELETE /tenants/{id} deprovisions but keeps the tenant's history readable (GET answers ``state: deprovisioned``), by
design (ARCHITECTURE §1, issue 4).

Exit code: schemathesis's (0 = no server error, no schema violation, no failed check). The summary is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
EXCLUDED_CHECKS = ("use_after_free",)


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
                "[[operations]]",
                'include-path = "/sso/roles"',
                "[operations.checks.positive_data_acceptance]",
                'expected-statuses = ["2xx", "400", "401", "403", "404", "409", "424", "429", "5xx"]',
                "",
            ]
        )
    )


async def run(*, full: bool, max_examples: int | None, seed: int, workdir: Path) -> int:
    """Start the stack, provision a tenant, run schemathesis, stop everything. Returns schemathesis's exit code."""
    sys.path.insert(0, str(REPO))
    from devhost.azurite import start_azurite
    from devhost.host import DevHost
    from shared_code.bootstrap import Container, use_container
    from shared_code.settings import SETTING_DEFAULTS, Settings
    from simulator import launch

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
        async with httpx.AsyncClient(base_url=host.base_url, timeout=60) as api:
            response = await api.put(f"/api/tenants/{tenant['tenant_id']}",
                                     headers={"Authorization": f"Bearer {token}"},
                                     json={"enrollmentGroups": tenant["enrollment_groups"]})
            if response.status_code not in (200, 201):
                print(f"provisioning the fuzz tenant failed: {response.status_code} {response.text[:300]}")
                return 2
        if "dispatch_polls" in host.timer_names:
            await host.run_timer("dispatch_polls")
            await host.drain_queues(120)
        config = workdir / "schemathesis.toml"
        fallback = [tenant["tenant_id"]]
        write_config(config, tenants=fallback,
                     devices=sorted({d["deviceId"] for d in truth["devices"]}) or fallback,
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
            "--report", "junit", "--report-junit-path", str(workdir / "fuzz-junit.xml"),
        ]
        if not full:
            cmd += ["--phases", "examples,coverage,fuzzing"]
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(REPO), stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT, limit=2**24)
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            # The token is in the command line only; schemathesis sanitizes Authorization in its output.
            sys.stdout.write(line.decode(errors="replace").replace(token, "<token>"))
        code = await proc.wait()
        print(f"fuzz: schemathesis exit code {code} (max-examples {examples}, seed {seed}, "
              f"{'full' if full else 'ci'} run, junit report {workdir / 'fuzz-junit.xml'})")
        return code
    finally:
        if host is not None:
            await host.stop()
        use_container(None)
        if container is not None:
            await container.close()
        azurite.stop()
        launch.stop(sim_proc)


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
        return asyncio.run(run(full=args.full, max_examples=args.max_examples, seed=args.seed, workdir=Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
