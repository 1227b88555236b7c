"""Settings: required names, defaults, precedence, clear errors."""

from __future__ import annotations

import pytest

from shared_code.settings import SETTING_DEFAULTS, SETTING_NAMES, Settings, SettingsError

BASE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CONNECTOR_CLIENT_ID": "c", "CONNECTOR_CLIENT_SECRET": "s"}


def test_defaults_apply_when_unset() -> None:
    settings = Settings.from_env(BASE)
    assert settings.graph_base_url == "https://graph.microsoft.com"
    assert settings.poll_queue_name == "tenant-polls"
    assert settings.full_reconcile_hours == 24


def test_every_default_names_a_known_setting() -> None:
    assert set(SETTING_DEFAULTS) <= set(SETTING_NAMES)


@pytest.mark.parametrize("missing", ["AzureWebJobsStorage", "CONNECTOR_CLIENT_ID", "CONNECTOR_CLIENT_SECRET"])
def test_missing_required_setting_is_named(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(env)


def test_key_vault_replaces_local_secret() -> None:
    env = {k: v for k, v in BASE.items() if k != "CONNECTOR_CLIENT_SECRET"} | {"KEY_VAULT_URL": "https://kv.test"}
    assert Settings.from_env(env).key_vault_url == "https://kv.test"


def test_malformed_number_is_named() -> None:
    with pytest.raises(SettingsError, match="FULL_RECONCILE_HOURS"):
        Settings.from_env(BASE | {"FULL_RECONCILE_HOURS": "daily"})


IDENTITY = {k: v for k, v in BASE.items() if k != "AzureWebJobsStorage"}


def test_identity_based_storage_uses_the_service_uris_the_bicep_sets() -> None:
    env = IDENTITY | {
        "AzureWebJobsStorage__accountName": "acct",
        "AzureWebJobsStorage__tableServiceUri": "https://acct.table.storage.example/",
        "AzureWebJobsStorage__queueServiceUri": "https://acct.queue.storage.example/",
    }
    settings = Settings.from_env(env)
    assert settings.storage_connection == ""
    assert settings.table_service_uri == "https://acct.table.storage.example"
    assert settings.queue_service_uri == "https://acct.queue.storage.example"


@pytest.mark.parametrize(
    ("cloud", "suffix"),
    [("public", "core.windows.net"), ("usgov", "core.usgovcloudapi.net"), ("usgovdod", "core.usgovcloudapi.net"),
     ("china", "core.chinacloudapi.cn")],
)
def test_account_name_alone_uses_the_clouds_storage_suffix(cloud: str, suffix: str) -> None:
    settings = Settings.from_env(IDENTITY | {"AzureWebJobsStorage__accountName": "acct", "AZURE_CLOUD": cloud})
    assert settings.table_service_uri == f"https://acct.table.{suffix}"
    assert settings.queue_service_uri == f"https://acct.queue.{suffix}"


def test_cloud_profile_supplies_defaults_and_explicit_settings_win() -> None:
    gov = Settings.from_env(BASE | {"AZURE_CLOUD": "usgov"})
    assert (gov.cloud, gov.authority_host, gov.graph_base_url, gov.intune_resource) == (
        "usgov", "https://login.microsoftonline.us", "https://graph.microsoft.us", "https://api.manage.microsoft.us/"
    )
    assert Settings.from_env(BASE | {"AZURE_CLOUD": "usgovdod"}).graph_base_url == "https://dod-graph.microsoft.us"
    china = Settings.from_env(BASE | {"AZURE_CLOUD": "China"})
    assert china.authority_host == "https://login.chinacloudapi.cn"
    assert china.graph_base_url == "https://microsoftgraph.chinacloudapi.cn"
    explicit = Settings.from_env(
        BASE | {"AZURE_CLOUD": "usgov", "GRAPH_BASE_URL": "https://graph.local:8443/", "AZURE_AUTHORITY_HOST": "https://a/"}
    )
    assert explicit.graph_base_url == "https://graph.local:8443"
    assert explicit.authority_host == "https://a"
    assert explicit.intune_resource == "https://api.manage.microsoft.us/"
    public = Settings.from_env(BASE)
    assert (public.cloud, public.authority_host) == ("public", SETTING_DEFAULTS["AZURE_AUTHORITY_HOST"])


def test_unknown_cloud_is_named() -> None:
    with pytest.raises(SettingsError, match="AZURE_CLOUD must be one of public, usgov, usgovdod, china"):
        Settings.from_env(BASE | {"AZURE_CLOUD": "germany"})


def test_storage_clients_use_the_service_uris() -> None:
    from shared_code.adapters.storage import StorageClients

    clients = StorageClients(
        "", table_service_uri="https://acct.table.core.usgovcloudapi.net",
        queue_service_uri="https://acct.queue.core.usgovcloudapi.net",
    )
    assert clients.queue("tenant-polls").url == "https://acct.queue.core.usgovcloudapi.net/tenant-polls"
    assert clients._table_service().url.startswith("https://acct.table.core.usgovcloudapi.net")
    with pytest.raises(ValueError, match="service URIs"):
        StorageClients("", table_service_uri="https://acct.table.core.windows.net")


def test_secret_is_not_in_repr() -> None:
    settings = Settings.from_env(BASE | {"CONNECTOR_CLIENT_SECRET": "very-secret-value"})
    assert settings.client_secret == "very-secret-value"
    assert "very-secret-value" not in repr(settings)


def test_intune_service_domains_default_per_cloud_and_refuse_junk() -> None:
    assert Settings.from_env(BASE).intune_service_domains == ("manage.microsoft.com",)
    gov = Settings.from_env(BASE | {"AZURE_CLOUD": "usgov"})
    assert gov.intune_service_domains == ("manage.microsoft.us",)
    china = Settings.from_env(BASE | {"AZURE_CLOUD": "china"})
    assert china.intune_service_domains == ("manage.microsoftonline.cn",)
    local = Settings.from_env(BASE | {"INTUNE_SERVICE_DOMAINS": " LocalHost , .example.test"})
    assert local.intune_service_domains == ("localhost", "example.test")
    with pytest.raises(SettingsError, match="INTUNE_SERVICE_DOMAINS"):
        Settings.from_env(BASE | {"INTUNE_SERVICE_DOMAINS": "https://evil/"})


def test_console_settings_are_validated_and_normalised() -> None:
    tid = "AAAAAAAA-BBBB-4CCC-8DDD-EEEEEEEEEEEE"
    other = "11111111-2222-4333-8444-555555555555"
    settings = Settings.from_env(BASE | {"CONSOLE_API_TENANT_ID": f" {tid} ",
                                         "CONSOLE_ALLOWED_CLIENT_IDS": f"{tid.lower()}, {other}"})
    assert settings.console_tenant_id == tid.lower()
    assert settings.console_allowed_client_ids == (tid.lower(), "11111111-2222-4333-8444-555555555555")
    assert settings.console_token_kind == "app"
    for name, value in (("CONSOLE_API_TENANT_ID", "contoso.onmicrosoft.com"), ("CONSOLE_API_TENANT_ID", "common"),
                        ("CONSOLE_ALLOWED_CLIENT_IDS", "console-app"), ("CONSOLE_TOKEN_KIND", "both")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env(BASE | {name: value})

