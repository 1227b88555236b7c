"""One typed settings object, read once at bootstrap.

Precedence (one rule, everywhere): explicit argument > app setting / environment variable > documented default.
Every name the connector reads is listed in ``SETTING_NAMES``; ``SETTING_DEFAULTS`` holds the documented defaults.
The infra tests parse these two literals (without importing the app) to prove every setting is either set in
``infra/main.bicep`` or has a default here, so keep them plain literals.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared_code.cloud import CloudProfile, UnknownCloudError, cloud_profile

# Names of every setting the connector reads (ARCHITECTURE §5 plus the operational knobs).
SETTING_NAMES: tuple[str, ...] = (
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AZURE_CLOUD",
    "CONNECTOR_CLIENT_ID",
    "CONNECTOR_CLIENT_SECRET",
    "KEY_VAULT_URL",
    "CONNECTOR_SECRET_NAME",
    "CONNECTOR_CREDENTIAL_TYPE",
    "AZURE_AUTHORITY_HOST",
    "GRAPH_BASE_URL",
    "INTUNE_RESOURCE",
    "INTUNE_SERVICE_DOMAINS",
    "CONSOLE_API_AUDIENCE",
    "CONSOLE_API_TENANT_ID",
    "CONSOLE_ALLOWED_CLIENT_IDS",
    "CONSOLE_TOKEN_KIND",
    "INTUNE_TENANT_SYNC_PROVIDER",
    "INTUNE_DEVICE_SYNC_PROVIDER",
    "INTUNE_TENANT_API_VERSION",
    "INTUNE_DEVICE_API_VERSION",
    "INTUNE_DISCOVERY_TTL_SECONDS",
    "POLL_SCHEDULE",
    "HEARTBEAT_SCHEDULE",
    "UPLOAD_RESULTS_SCHEDULE",
    "POLL_INTERVAL_MINUTES",
    "FULL_RECONCILE_HOURS",
    "PENDING_GIVE_UP_HOURS",
    "POLL_QUEUE_NAME",
    "TABLE_PREFIX",
    "QUARANTINE_AFTER_FAILURES",
    "HEARTBEAT_CONCURRENCY",
    "SECRET_CACHE_SECONDS",
    "GRAPH_MAX_RETRIES",
    "GRAPH_APP_RU_PER_20S",
    "GRAPH_TENANT_RU_PER_10S",
    "GRAPH_PACER_INSTANCES",
)

# Documented defaults. Settings absent here are required (or, for the credential, one of two forms is).
SETTING_DEFAULTS: dict[str, str] = {
    # public | usgov | usgovdod | china (shared_code/cloud.py). The next three defaults are the public cloud's; with
    # another AZURE_CLOUD the defaults are that cloud's profile, and an explicit setting still wins.
    "AZURE_CLOUD": "public",
    "AZURE_AUTHORITY_HOST": "https://login.microsoftonline.com",
    "GRAPH_BASE_URL": "https://graph.microsoft.com",
    "INTUNE_RESOURCE": "https://api.manage.microsoft.com/",
    # Hosts discovered Intune service URLs may live under (comma-separated DNS suffixes; the Intune token is never
    # sent elsewhere). The public cloud's; another AZURE_CLOUD uses its profile's (shared_code/cloud.py).
    "INTUNE_SERVICE_DOMAINS": "manage.microsoft.com",
    "CONNECTOR_SECRET_NAME": "connector-client-secret",
    # "app": the console's backend calls with an app-only token (roles, no scp); "delegated": operators sign in and
    # call with their own token (scp + their app-role assignments). One kind per deployment (docs/deploy.md).
    "CONSOLE_TOKEN_KIND": "app",
    # "secret", or "certificate": CONNECTOR_SECRET_NAME then names a Key Vault certificate (PEM or PKCS#12).
    "CONNECTOR_CREDENTIAL_TYPE": "secret",
    # Intune partner service names and api-versions are not public (reference/intune.md §2). Provider names: the MTD
    # services the seed's API paths name; Fleet's compliance-partner names (PartnerTenantDataSyncService,
    # PartnerDeviceDataSyncService) are the documented alternative. api-versions: Fleet's.
    "INTUNE_TENANT_SYNC_PROVIDER": "StatelessPartnerTenantDataSyncService",
    "INTUNE_DEVICE_SYNC_PROVIDER": "StatelessPartnerDeviceDataSyncService",
    "INTUNE_TENANT_API_VERSION": "1.6",
    "INTUNE_DEVICE_API_VERSION": "1.2",
    # Fleet caches discovered URLs for 24 h (reference/intune.md §2).
    "INTUNE_DISCOVERY_TTL_SECONDS": "86400",
    "POLL_SCHEDULE": "0 */5 * * * *",
    "HEARTBEAT_SCHEDULE": "0 */15 * * * *",
    "UPLOAD_RESULTS_SCHEDULE": "30 */2 * * * *",
    "POLL_INTERVAL_MINUTES": "5",
    # Delta tokens for directory objects live 7 days; a daily full reconcile stays well inside that (graph.md §4).
    "FULL_RECONCILE_HOURS": "24",
    # Objects Graph cannot read yet (replication lag) are retried for this long, then given up and reported.
    "PENDING_GIVE_UP_HOURS": "24",
    "POLL_QUEUE_NAME": "tenant-polls",
    "TABLE_PREFIX": "",
    "QUARANTINE_AFTER_FAILURES": "5",
    "HEARTBEAT_CONCURRENCY": "8",
    "SECRET_CACHE_SECONDS": "3600",
    "GRAPH_MAX_RETRIES": "5",
    # Graph pacing (shared_code/adapters/pacer.py): the documented app quota (reference/graph.md §1), the smallest
    # per-tenant quota (S), and how many processes share the app quota (0 turns pacing off).
    "GRAPH_APP_RU_PER_20S": "150000",
    "GRAPH_TENANT_RU_PER_10S": "3500",
    "GRAPH_PACER_INSTANCES": "10",
}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def _int(env: Mapping[str, str], name: str) -> int:
    raw = env.get(name) or SETTING_DEFAULTS[name]
    try:
        return int(raw)
    except ValueError:
        msg = f"setting {name} must be an integer, got {raw!r}"
        raise SettingsError(msg) from None


def _str(env: Mapping[str, str], name: str) -> str:
    return env.get(name) or SETTING_DEFAULTS.get(name, "")


def _storage_uri(env: Mapping[str, str], service: str, cloud: CloudProfile) -> str:
    explicit = env.get(f"AzureWebJobsStorage__{service}ServiceUri", "")
    if explicit:
        return explicit.rstrip("/")
    account = env.get("AzureWebJobsStorage__accountName", "")
    return f"https://{account}.{service}.{cloud.storage_suffix}" if account else ""


@dataclass(frozen=True)
class Settings:
    """Every knob of the connector. Build with :meth:`from_env`; tests build it directly."""

    storage_connection: str
    client_id: str
    # Identity-based storage (Azure): service URIs, from the Bicep's AzureWebJobsStorage__*ServiceUri or built from
    # the account name and the cloud's storage suffix. Empty when storage_connection is a connection string.
    table_service_uri: str = ""
    queue_service_uri: str = ""
    cloud: str = SETTING_DEFAULTS["AZURE_CLOUD"]
    client_secret: str = field(default="", repr=False)
    key_vault_url: str = ""
    secret_name: str = SETTING_DEFAULTS["CONNECTOR_SECRET_NAME"]
    credential_type: str = SETTING_DEFAULTS["CONNECTOR_CREDENTIAL_TYPE"]
    authority_host: str = SETTING_DEFAULTS["AZURE_AUTHORITY_HOST"]
    graph_base_url: str = SETTING_DEFAULTS["GRAPH_BASE_URL"]
    intune_resource: str = SETTING_DEFAULTS["INTUNE_RESOURCE"]
    intune_service_domains: tuple[str, ...] = (SETTING_DEFAULTS["INTUNE_SERVICE_DOMAINS"],)
    console_audience: str = ""
    console_tenant_id: str = ""
    # Client ids (lower-case GUIDs) whose tokens the console API accepts (azp / appid); empty = nobody.
    console_allowed_client_ids: tuple[str, ...] = ()
    console_token_kind: str = SETTING_DEFAULTS["CONSOLE_TOKEN_KIND"]
    intune_tenant_provider: str = SETTING_DEFAULTS["INTUNE_TENANT_SYNC_PROVIDER"]
    intune_device_provider: str = SETTING_DEFAULTS["INTUNE_DEVICE_SYNC_PROVIDER"]
    intune_tenant_api_version: str = SETTING_DEFAULTS["INTUNE_TENANT_API_VERSION"]
    intune_device_api_version: str = SETTING_DEFAULTS["INTUNE_DEVICE_API_VERSION"]
    intune_discovery_ttl_seconds: int = 86400
    poll_interval_minutes: int = 5
    full_reconcile_hours: int = 24
    pending_give_up_hours: int = 24
    poll_queue_name: str = SETTING_DEFAULTS["POLL_QUEUE_NAME"]
    table_prefix: str = ""
    quarantine_after_failures: int = 5
    heartbeat_concurrency: int = 8
    secret_cache_seconds: int = 3600
    graph_max_retries: int = 5
    graph_app_ru_per_20s: int = 150_000
    graph_tenant_ru_per_10s: int = 3500
    graph_pacer_instances: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from app settings / environment.

        Raises:
            SettingsError: a required setting is missing or a number is malformed.
        """
        env = os.environ if env is None else env
        try:
            cloud = cloud_profile(env.get("AZURE_CLOUD"))
        except UnknownCloudError as exc:
            raise SettingsError(str(exc)) from None
        storage = env.get("AzureWebJobsStorage", "")
        table_uri = queue_uri = ""
        if not storage:
            # Identity-based connection (Azure): the service URIs the Bicep sets, else the account in this cloud.
            table_uri = _storage_uri(env, "table", cloud)
            queue_uri = _storage_uri(env, "queue", cloud)
        if not storage and not (table_uri and queue_uri):
            msg = (
                "setting AzureWebJobsStorage (or AzureWebJobsStorage__accountName / "
                "AzureWebJobsStorage__tableServiceUri + __queueServiceUri) is required"
            )
            raise SettingsError(msg)
        client_id = env.get("CONNECTOR_CLIENT_ID", "")
        if not client_id:
            msg = "setting CONNECTOR_CLIENT_ID is required"
            raise SettingsError(msg)
        secret = env.get("CONNECTOR_CLIENT_SECRET", "")
        vault = env.get("KEY_VAULT_URL", "")
        if not secret and not vault:
            msg = "one of CONNECTOR_CLIENT_SECRET or KEY_VAULT_URL (+ CONNECTOR_SECRET_NAME) is required"
            raise SettingsError(msg)
        credential_type = _str(env, "CONNECTOR_CREDENTIAL_TYPE")
        if credential_type not in ("secret", "certificate"):
            msg = f"setting CONNECTOR_CREDENTIAL_TYPE must be 'secret' or 'certificate', got {credential_type!r}"
            raise SettingsError(msg)
        if credential_type == "certificate" and not vault:
            msg = "setting CONNECTOR_CREDENTIAL_TYPE=certificate needs KEY_VAULT_URL (the certificate lives there)"
            raise SettingsError(msg)
        return cls(
            storage_connection=storage,
            table_service_uri=table_uri,
            queue_service_uri=queue_uri,
            cloud=cloud.name,
            credential_type=credential_type,
            client_id=client_id,
            client_secret=secret,
            key_vault_url=vault,
            secret_name=_str(env, "CONNECTOR_SECRET_NAME"),
            authority_host=(env.get("AZURE_AUTHORITY_HOST") or cloud.authority_host).rstrip("/"),
            graph_base_url=(env.get("GRAPH_BASE_URL") or cloud.graph_base_url).rstrip("/"),
            intune_resource=env.get("INTUNE_RESOURCE") or cloud.intune_resource,
            intune_service_domains=_intune_domains(env, cloud),
            console_audience=_str(env, "CONSOLE_API_AUDIENCE"),
            console_tenant_id=_console_tenant(env),
            console_allowed_client_ids=_guid_list(env, "CONSOLE_ALLOWED_CLIENT_IDS"),
            console_token_kind=_token_kind(env),
            intune_tenant_provider=_str(env, "INTUNE_TENANT_SYNC_PROVIDER"),
            intune_device_provider=_str(env, "INTUNE_DEVICE_SYNC_PROVIDER"),
            intune_tenant_api_version=_str(env, "INTUNE_TENANT_API_VERSION"),
            intune_device_api_version=_str(env, "INTUNE_DEVICE_API_VERSION"),
            intune_discovery_ttl_seconds=_int(env, "INTUNE_DISCOVERY_TTL_SECONDS"),
            poll_interval_minutes=_int(env, "POLL_INTERVAL_MINUTES"),
            full_reconcile_hours=_int(env, "FULL_RECONCILE_HOURS"),
            pending_give_up_hours=_int(env, "PENDING_GIVE_UP_HOURS"),
            poll_queue_name=_str(env, "POLL_QUEUE_NAME"),
            table_prefix=_str(env, "TABLE_PREFIX"),
            quarantine_after_failures=_int(env, "QUARANTINE_AFTER_FAILURES"),
            heartbeat_concurrency=_int(env, "HEARTBEAT_CONCURRENCY"),
            secret_cache_seconds=_int(env, "SECRET_CACHE_SECONDS"),
            graph_max_retries=_int(env, "GRAPH_MAX_RETRIES"),
            graph_app_ru_per_20s=_int(env, "GRAPH_APP_RU_PER_20S"),
            graph_tenant_ru_per_10s=_int(env, "GRAPH_TENANT_RU_PER_10S"),
            graph_pacer_instances=_int(env, "GRAPH_PACER_INSTANCES"),
        )


def _intune_domains(env: Mapping[str, str], cloud: CloudProfile) -> tuple[str, ...]:
    """INTUNE_SERVICE_DOMAINS (lower-case DNS suffixes), else the cloud profile's Intune service domains.

    Raises:
        SettingsError: a value that is not a list of bare host names.
    """
    raw = env.get("INTUNE_SERVICE_DOMAINS")
    if not raw:
        return cloud.intune_service_domains
    domains = tuple(d.strip().lower().lstrip(".") for d in raw.split(",") if d.strip())
    if not domains or not all(re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", d) for d in domains):
        msg = f"setting INTUNE_SERVICE_DOMAINS must list DNS names separated by commas, got {raw!r}"
        raise SettingsError(msg)
    return domains


_GUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _console_tenant(env: Mapping[str, str]) -> str:
    """CONSOLE_API_TENANT_ID as a lower-case GUID ("" when unset: the console API then accepts nobody).

    Raises:
        SettingsError: set but not a GUID (a domain name or "common" would never match a token's ``tid``).
    """
    raw = _str(env, "CONSOLE_API_TENANT_ID").strip().lower()
    if raw and not _GUID_RE.fullmatch(raw):
        msg = f"setting CONSOLE_API_TENANT_ID must be the vendor tenant's id (a GUID), got {raw!r}"
        raise SettingsError(msg)
    return raw


def _guid_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list of GUIDs, lower-cased.

    Raises:
        SettingsError: an entry is not a GUID.
    """
    items = tuple(item.strip().lower() for item in _str(env, name).split(",") if item.strip())
    bad = [item for item in items if not _GUID_RE.fullmatch(item)]
    if bad:
        msg = f"setting {name} must list client ids (GUIDs) separated by commas, got {bad[0]!r}"
        raise SettingsError(msg)
    return items


def _token_kind(env: Mapping[str, str]) -> str:
    kind = _str(env, "CONSOLE_TOKEN_KIND").strip().lower()
    if kind not in ("app", "delegated"):
        msg = f"setting CONSOLE_TOKEN_KIND must be 'app' or 'delegated', got {kind!r}"
        raise SettingsError(msg)
    return kind
