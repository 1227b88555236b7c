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


def test_identity_based_storage_connection() -> None:
    env = {k: v for k, v in BASE.items() if k != "AzureWebJobsStorage"} | {"AzureWebJobsStorage__accountName": "acct"}
    assert Settings.from_env(env).storage_connection == "accountName=acct"


def test_secret_is_not_in_repr() -> None:
    settings = Settings.from_env(BASE | {"CONNECTOR_CLIENT_SECRET": "very-secret-value"})
    assert settings.client_secret == "very-secret-value"
    assert "very-secret-value" not in repr(settings)
