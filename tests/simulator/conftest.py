"""Session fixtures: one simulator subprocess (real HTTPS) shared by the simulator tests.

Fixtures:
    sim_info: the info JSON of the shared simulator (2 `small` tenants, seed 7).
    sim: a `SimHandle` for it (admin calls, app tokens, tenant ids).
    private_sim: a factory `private_sim(scenario="small", tenants=1)` that starts an extra simulator owned by the
        calling module, for tests that change global state (clock advance, signing-key removal); stopped at the end.
Tests that change shared settings (throttle scale, faults, consent) restore them before returning.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from simulator.launch import start, stop


class SimHandle:
    """Small client for one running simulator."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.base_url: str = info["base_url"]
        self.ca_path: str = info["ca_path"]
        self.http = requests.Session()
        self.http.verify = self.ca_path
        self.http.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify
        self._tokens: dict[tuple[str, str, str], str] = {}

    @property
    def tenant_ids(self) -> list[str]:
        return [t["tenant_id"] for t in self.info["tenants"]]

    @property
    def connector_id(self) -> str:
        return str(self.info["connector"]["client_id"])

    def admin(self, method: str, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.http.request(method, self.base_url + path, json=json, timeout=30, **kw)

    def token_response(self, tenant: str, scope: str, client: str = "connector", **form: str) -> requests.Response:
        c = self.info[client]
        data = {"grant_type": "client_credentials", "client_id": c["client_id"], "client_secret": c["client_secret"],
                "scope": scope, **form}
        return self.http.post(f"{self.base_url}/{tenant}/oauth2/v2.0/token", data=data, timeout=30)

    def app_token(self, tenant: str, scope: str = "https://graph.microsoft.com/.default",
                  client: str = "connector", cache: bool = True) -> str:
        key = (tenant, scope, client)
        if cache and key in self._tokens:
            return self._tokens[key]
        r = self.token_response(tenant, scope, client)
        assert r.status_code == 200, r.text
        tok = str(r.json()["access_token"])
        if cache:
            self._tokens[key] = tok
        return tok

    def get(self, path: str, token: str, **kw: Any) -> requests.Response:
        return self.http.get(self.base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=30, **kw)

    def put(self, path: str, token: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.http.put(self.base_url + path, headers={"Authorization": f"Bearer {token}"}, json=json,
                             timeout=30, **kw)


@pytest.fixture(scope="session")
def sim_info(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    info, proc = start(tmp_path_factory.mktemp("sim"), scenario="small", tenants=2, seed=7)
    try:
        yield info
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def sim(sim_info: dict[str, Any]) -> SimHandle:
    return SimHandle(sim_info)


@pytest.fixture(scope="module")
def private_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., SimHandle]]:
    procs: list[subprocess.Popen[str]] = []

    def factory(scenario: str = "small", tenants: int = 1, seed: int = 3) -> SimHandle:
        workdir: Path = tmp_path_factory.mktemp("private-sim")
        info, proc = start(workdir, scenario=scenario, tenants=tenants, seed=seed)
        procs.append(proc)
        return SimHandle(info)

    try:
        yield factory
    finally:
        for p in procs:
            stop(p)
