"""Which Microsoft cloud the simulator impersonates: the resource identifiers its Entra issues tokens for and its
Graph, Intune and Key Vault accept. Chosen once per process by the ``SIMULATOR_CLOUD`` environment variable
(``public`` by default; ``usgov``, ``usgovdod``, ``china``); ``simulator.launch.start(cloud=…)`` sets it.

Written from Microsoft's documents, independently of the connector's shared_code/cloud.py (the simulator never
imports shared_code), so that a misreading on one side shows up as a failed token or call on the other:

- Graph roots per cloud: learn.microsoft.com/graph/deployments ("Microsoft Graph and Graph Explorer service root
  endpoints": graph.microsoft.com, graph.microsoft.us (L4, GCC High), dod-graph.microsoft.us (L5, DoD),
  microsoftgraph.chinacloudapi.cn (21Vianet)); the token audience is that root.
- Key Vault resource per cloud (the ``resource`` of the 401 challenge): learn.microsoft.com/azure/azure-government/
  compare-azure-government-global-azure (vault.usgovcloudapi.net) and learn.microsoft.com/azure/china/
  resources-developer-guide (vault.azure.cn).
- Intune: learn.microsoft.com/intune/intune-service/fundamentals/intune-us-government-endpoints (*.manage.microsoft.us)
  and …/china-endpoints (*.manage.microsoftonline.cn). The Intune API resource is
  the ``api.`` host of that domain; the public one (https://api.manage.microsoft.com/) is intune.md §1, the national
  ones are inferred from the domain (docs/deploy.md §9 says so too).

Strict on purpose: a simulator serving ``usgov`` refuses a token whose audience is the public Graph, so a connector
that forgot to switch its scopes fails here as it would in Azure Government.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class SimCloud:
    name: str
    graph_resource: str  # aud of Graph tokens; also the host the OIDC metadata reports as msgraph_host
    intune_resource: str  # aud of Intune partner-service tokens (with the trailing slash)
    vault_resource: str  # the Key Vault challenge's resource and the aud of vault tokens


SIM_CLOUDS: dict[str, SimCloud] = {
    "public": SimCloud("public", "https://graph.microsoft.com", "https://api.manage.microsoft.com/",
                       "https://vault.azure.net"),
    "usgov": SimCloud("usgov", "https://graph.microsoft.us", "https://api.manage.microsoft.us/",
                      "https://vault.usgovcloudapi.net"),
    "usgovdod": SimCloud("usgovdod", "https://dod-graph.microsoft.us", "https://api.manage.microsoft.us/",
                         "https://vault.usgovcloudapi.net"),
    "china": SimCloud("china", "https://microsoftgraph.chinacloudapi.cn", "https://api.manage.microsoftonline.cn/",
                      "https://vault.azure.cn"),
}


def active_cloud() -> SimCloud:
    """The cloud named by ``SIMULATOR_CLOUD`` (read once at import of the modules that use it)."""
    name = (os.environ.get("SIMULATOR_CLOUD") or "public").strip().lower()
    if name not in SIM_CLOUDS:
        msg = f"SIMULATOR_CLOUD must be one of {', '.join(SIM_CLOUDS)}, got {name!r}"
        raise SystemExit(msg)
    return SIM_CLOUDS[name]


ACTIVE = active_cloud()
