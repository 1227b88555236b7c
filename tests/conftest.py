"""Session fixtures: the local Microsoft cloud (simulator), Azurite, the connector wired to both, and devhost.

Everything here is real: the simulator is a separate HTTPS process the unmodified SDK clients talk to, Azurite is
the storage emulator, and devhost runs function_app.py from its own decorators. Each test module gets its own
table prefix and queue name so modules never see each other's state.
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from devhost.azurite import Azurite, start_azurite
from simulator import launch

REPO = Path(__file__).resolve().parents[1]


class SimAdmin:
    """A thin client for the simulator's `/_sim` admin API (tests drive the world through it, like `make run`)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.base_url: str = info["base_url"]
        self.http = httpx.Client(
            base_url=self.base_url, verify=ssl.create_default_context(cafile=info["ca_path"]), timeout=120.0
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the admin API; raise with the body on any error."""
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text[:500]}")
        return response.json() if response.content else None

    def create_tenant(self, scenario: str = "small", seed: int = 1, **extra: Any) -> dict[str, Any]:
        """A new simulated customer tenant; returns its summary (id, enrollment group names, counts)."""
        result: dict[str, Any] = self.call("POST", "/_sim/tenants", json={"scenario": scenario, "seed": seed, **extra})
        return result

    def truth(self, tenant_id: str, groups: list[str], platforms: str = "iOS,iPadOS,Android") -> dict[str, Any]:
        """Ground truth: which devices should be enrolled now."""
        params: list[tuple[str, str]] = [("groups", g) for g in groups] + [("platforms", platforms)]
        result: dict[str, Any] = self.call("GET", f"/_sim/tenants/{tenant_id}/truth", params=params)
        return result

    def mutate(self, tenant_id: str, op: str, **args: Any) -> Any:
        """Change the directory between polls."""
        return self.call("POST", f"/_sim/tenants/{tenant_id}/mutations", json={"op": op, **args})

    def fault(self, kind: str, **spec: Any) -> Any:
        """Inject a fault (latency, throttle, status, reset, truncate, token_outage, delta_expiry)."""
        return self.call("POST", "/_sim/faults", json={"kind": kind, **spec})

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.call("DELETE", "/_sim/faults")

    def counters(self, tenant_id: str | None = None) -> dict[str, Any]:
        """Requests, RU and 429s per tenant and route."""
        result: dict[str, Any] = self.call("GET", "/_sim/counters", params={"tenant": tenant_id} if tenant_id else None)
        return result

    def console_token(self, roles: list[str], **overrides: Any) -> str:
        """A console access token with the given app roles (overrides for negative tests)."""
        body = {"roles": roles, **overrides}
        return str(self.call("POST", "/_sim/tokens/console", json=body)["access_token"])

    def intune(self, tenant_id: str) -> dict[str, Any]:
        """Intune's view of a tenant: connector state, heartbeats, accepted threat levels."""
        result: dict[str, Any] = self.call("GET", f"/_sim/intune/{tenant_id}")
        return result


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimAdmin]:
    """The local Microsoft cloud, one process for the session."""
    workdir = tmp_path_factory.mktemp("simulator")
    info, process = launch.start(workdir)
    admin = SimAdmin(info)
    try:
        yield admin
    finally:
        admin.http.close()
        launch.stop(process)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite (tables + queues + blobs) on free ports, data in a temp folder."""
    handle = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def connector_env(sim: SimAdmin, azurite: Azurite) -> dict[str, str]:
    """App settings that point the connector at the simulator and Azurite (also exported to os.environ, because
    the SDKs read REQUESTS_CA_BUNDLE / SSL_CERT_FILE from the process environment)."""
    env = launch.client_env(sim.info, base={})
    # Local runs use the secret directly; Key Vault is exercised by its own tests.
    env.pop("KEY_VAULT_URL", None)
    env.update(
        {
            "AzureWebJobsStorage": azurite.connection_string,
            "CONNECTOR_CLIENT_SECRET": sim.info["connector"]["client_secret"],
            "POLL_SCHEDULE": "0 */5 * * * *",
            "HEARTBEAT_SCHEDULE": "0 */15 * * * *",
            "UPLOAD_RESULTS_SCHEDULE": "30 */2 * * * *",
            "POLL_QUEUE_NAME": "tenant-polls",
            # Tests must not wait on real backoff: the retry layer still honours Retry-After.
            "GRAPH_MAX_RETRIES": "5",
        }
    )
    os.environ.update({k: env[k] for k in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")})
    return env


@pytest.fixture(scope="module")
def module_env(connector_env: dict[str, str]) -> dict[str, str]:
    """connector_env with a table prefix and poll queue of this test module's own."""
    suffix = uuid.uuid4().hex[:10]
    return connector_env | {"TABLE_PREFIX": f"t{suffix}", "POLL_QUEUE_NAME": f"polls-{suffix}"}


@pytest.fixture(scope="module")
async def app_container(module_env: dict[str, str]) -> AsyncIterator[Any]:
    """A Container wired to the simulator and Azurite, installed as the process's container."""
    from shared_code.bootstrap import Container, use_container
    from shared_code.settings import Settings

    container = Container(Settings.from_env(module_env))
    use_container(container)
    try:
        yield container
    finally:
        use_container(None)
        await container.close()


@asynccontextmanager
async def running_devhost(env: dict[str, str]) -> AsyncIterator[Any]:
    """function_app.py running under devhost with ``env`` (HTTP on a free port; timers fired by tests with
    run_timer). A module that needs a host with other settings (a body limit, another queue) starts its own."""
    import function_app
    from devhost.host import DevHost

    host = DevHost(function_app.app, env=env, port=0, enable_timers=False, host_json=REPO / "host.json")
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@pytest.fixture(scope="module")
async def devhost(module_env: dict[str, str], app_container: Any) -> AsyncIterator[Any]:
    """function_app.py running under devhost on the module's settings."""
    async with running_devhost(module_env) as host:
        yield host


@pytest.fixture(scope="session")
def console_token(sim: SimAdmin) -> Callable[..., str]:
    """console_token(["Console.Read"]) → a valid bearer token for the connector's API."""
    return sim.console_token
