"""The Microsoft clouds the connector runs in: one small typed table, chosen by the ``AZURE_CLOUD`` setting.

Each profile holds the documented defaults for one national cloud. ``shared_code/settings.py`` uses them when an
explicit setting (``AZURE_AUTHORITY_HOST``, ``GRAPH_BASE_URL``, ``INTUNE_RESOURCE``, the storage service URIs) is
absent; an explicit setting always wins. Other modules (e.g. the Intune host allow-list) read
:func:`cloud_profile` rather than keeping their own per-cloud literals. Pure data: no I/O, no SDK imports.

Sources (docs/deploy.md, "Azure clouds", has the table with links):

- Entra authority and Graph roots: learn.microsoft.com/graph/deployments ("Microsoft Graph and Graph Explorer
  service root endpoints"); azure-identity's ``AzureAuthorityHosts``.
- Intune service domains: learn.microsoft.com/intune/intune-service/fundamentals/intune-endpoints
  (``*.manage.microsoft.com``), …/intune-us-government-endpoints (``*.manage.microsoft.us``, GCC High and DoD),
  …/china-endpoints (``*.manage.microsoftonline.cn``). The Intune API resource is the ``api.`` host of that domain
  (public: ``https://api.manage.microsoft.com/``, reference/intune.md); for the national clouds that host is
  inferred from the documented domain — verify it against the Intune service principal's ``servicePrincipalNames``
  in a tenant of that cloud, and set ``INTUNE_RESOURCE`` if it differs.
- Key Vault and Storage DNS suffixes: learn.microsoft.com/azure/azure-government/compare-azure-government-global-azure
  and learn.microsoft.com/azure/china/resources-developer-guide (the same values ARM's ``environment().suffixes``
  reports for each cloud).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CloudProfile:
    """Documented endpoints of one Microsoft cloud.

    Attributes:
        name: the ``AZURE_CLOUD`` value.
        arm_environment: ARM's ``environment().name`` for this cloud (infra/main.bicep maps it back).
        authority_host: Entra ID authority (token endpoint host), no trailing slash.
        graph_base_url: Microsoft Graph service root, no trailing slash (``/v1.0`` is appended by the adapter).
        intune_resource: token audience of the Intune partner services (trailing slash: Fleet's double-slash scope).
        intune_service_domains: DNS suffixes under which discovered Intune partner service URLs must lie.
        key_vault_suffix: Key Vault DNS suffix (``<vault>.<suffix>``).
        storage_suffix: Storage endpoint suffix (``<account>.table.<suffix>``).
    """

    name: str
    arm_environment: str
    authority_host: str
    graph_base_url: str
    intune_resource: str
    intune_service_domains: tuple[str, ...]
    key_vault_suffix: str
    storage_suffix: str


CLOUDS: dict[str, CloudProfile] = {
    "public": CloudProfile(
        name="public",
        arm_environment="AzureCloud",
        authority_host="https://login.microsoftonline.com",
        graph_base_url="https://graph.microsoft.com",
        intune_resource="https://api.manage.microsoft.com/",
        intune_service_domains=("manage.microsoft.com",),
        key_vault_suffix="vault.azure.net",
        storage_suffix="core.windows.net",
    ),
    # Azure Government / Microsoft 365 GCC High (Graph L4).
    "usgov": CloudProfile(
        name="usgov",
        arm_environment="AzureUSGovernment",
        authority_host="https://login.microsoftonline.us",
        graph_base_url="https://graph.microsoft.us",
        intune_resource="https://api.manage.microsoft.us/",
        intune_service_domains=("manage.microsoft.us",),
        key_vault_suffix="vault.usgovcloudapi.net",
        storage_suffix="core.usgovcloudapi.net",
    ),
    # Azure Government / Microsoft 365 DoD (Graph L5): same Entra authority and Azure endpoints, its own Graph host.
    "usgovdod": CloudProfile(
        name="usgovdod",
        arm_environment="AzureUSGovernment",
        authority_host="https://login.microsoftonline.us",
        graph_base_url="https://dod-graph.microsoft.us",
        intune_resource="https://api.manage.microsoft.us/",
        intune_service_domains=("manage.microsoft.us",),
        key_vault_suffix="vault.usgovcloudapi.net",
        storage_suffix="core.usgovcloudapi.net",
    ),
    # Azure and Microsoft 365 operated by 21Vianet.
    "china": CloudProfile(
        name="china",
        arm_environment="AzureChinaCloud",
        authority_host="https://login.chinacloudapi.cn",
        graph_base_url="https://microsoftgraph.chinacloudapi.cn",
        intune_resource="https://api.manage.microsoftonline.cn/",
        intune_service_domains=("manage.microsoftonline.cn",),
        key_vault_suffix="vault.azure.cn",
        storage_suffix="core.chinacloudapi.cn",
    ),
}

DEFAULT_CLOUD = "public"


class UnknownCloudError(ValueError):
    """``AZURE_CLOUD`` names no profile; the message lists the valid names."""


def cloud_profile(name: str | None = None) -> CloudProfile:
    """The profile for ``name`` (case-insensitive; empty or None = public).

    Raises:
        UnknownCloudError: the name is not one of :data:`CLOUDS`.
    """
    key = (name or DEFAULT_CLOUD).strip().lower()
    try:
        return CLOUDS[key]
    except KeyError:
        msg = f"setting AZURE_CLOUD must be one of {', '.join(CLOUDS)}, got {name!r}"
        raise UnknownCloudError(msg) from None
