"""Custom checkov checks for rules the deployment relies on that checkov 3.3.30 does not check for Bicep.

checkov loads every ``.py`` file in this directory (``--external-checks-dir infra/checks``); instantiating a check
registers it with the Bicep resource registry. Each check reads the pycep-parser form of a resource (``conf`` is
the resource body; conditional and looped resources arrive wrapped, see ``_body``). A value that is an expression
rather than a literal fails: these rules must hold whatever parameters a deployment passes.
"""

from __future__ import annotations

from typing import Any

from checkov.bicep.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult


def _body(conf: dict[str, Any]) -> dict[str, Any]:
    """Unwrap pycep's ``{"condition"|"loop_type": …, "config": {…}}`` wrappers around a resource body."""
    while isinstance(conf.get("config"), dict) and ("condition" in conf or "loop_type" in conf):
        conf = conf["config"]
    return conf


def _get_ci(obj: Any, *path: str) -> Any:
    """Follow ``path`` through nested dicts, matching keys case-insensitively (ARM property names are)."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        matches = [v for k, v in obj.items() if isinstance(k, str) and k.lower() == key.lower()]
        if not matches:
            return None
        obj = matches[0]
    return obj


class _LiteralValueCheck(BaseResourceCheck):
    """Passes when the property at ``prop_path`` is exactly ``expected`` (a literal, not an expression)."""

    prop_path: tuple[str, ...] = ()
    expected: Any = None

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Compare the literal at ``prop_path`` with ``expected``."""
        self.evaluated_keys = ["/".join(self.prop_path)]
        value = _get_ci(_body(conf), *self.prop_path)
        if isinstance(value, str) and isinstance(self.expected, str):
            return CheckResult.PASSED if value.lower() == self.expected.lower() else CheckResult.FAILED
        return CheckResult.PASSED if value is self.expected or value == self.expected else CheckResult.FAILED


class StorageSharedKeyAccessDisabled(_LiteralValueCheck):
    """Shared-key (account key / SAS) access must be off: every caller uses Entra ID."""

    prop_path = ("properties", "allowSharedKeyAccess")
    expected = False

    def __init__(self) -> None:
        super().__init__(
            name="Storage account disables shared key access (allowSharedKeyAccess: false)",
            id="CKV_MTD_1",
            categories=(CheckCategories.IAM,),
            supported_resources=("Microsoft.Storage/storageAccounts",),
        )


class AppInsightsLocalAuthDisabled(_LiteralValueCheck):
    """Application Insights must accept only Entra ID-authenticated telemetry."""

    prop_path = ("properties", "DisableLocalAuth")
    expected = True

    def __init__(self) -> None:
        super().__init__(
            name="Application Insights disables local (instrumentation key) auth (DisableLocalAuth: true)",
            id="CKV_MTD_2",
            categories=(CheckCategories.IAM,),
            supported_resources=("Microsoft.Insights/components",),
        )


class StorageBlobPublicAccessDisabled(_LiteralValueCheck):
    """No anonymous blob access on the account (checkov's Bicep set checks only containers)."""

    prop_path = ("properties", "allowBlobPublicAccess")
    expected = False

    def __init__(self) -> None:
        super().__init__(
            name="Storage account disallows anonymous blob access (allowBlobPublicAccess: false)",
            id="CKV_MTD_3",
            categories=(CheckCategories.NETWORKING,),
            supported_resources=("Microsoft.Storage/storageAccounts",),
        )


class KeyVaultRbacAuthorization(_LiteralValueCheck):
    """Key Vault in RBAC mode: access is granted by role assignments, never by access policies."""

    prop_path = ("properties", "enableRbacAuthorization")
    expected = True

    def __init__(self) -> None:
        super().__init__(
            name="Key Vault uses Azure RBAC (enableRbacAuthorization: true)",
            id="CKV_MTD_4",
            categories=(CheckCategories.IAM,),
            supported_resources=("Microsoft.KeyVault/vaults",),
        )


class LogAnalyticsLocalAuthDisabled(_LiteralValueCheck):
    """Log Analytics accepts only Entra ID-authenticated ingestion and queries."""

    prop_path = ("properties", "features", "disableLocalAuth")
    expected = True

    def __init__(self) -> None:
        super().__init__(
            name="Log Analytics workspace disables local auth (features.disableLocalAuth: true)",
            id="CKV_MTD_5",
            categories=(CheckCategories.IAM,),
            supported_resources=("Microsoft.OperationalInsights/workspaces",),
        )


class FunctionAppUserAssignedIdentityOnly(BaseResourceCheck):
    """The function app runs as a user-assigned identity and reads its package with it (no storage keys)."""

    def __init__(self) -> None:
        super().__init__(
            name="Function app uses a user-assigned identity, also for Flex deployment storage",
            id="CKV_MTD_6",
            categories=(CheckCategories.IAM,),
            supported_resources=("Microsoft.Web/sites",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Require identity type UserAssigned and, on Flex, deployment storage auth UserAssignedIdentity."""
        body = _body(conf)
        self.evaluated_keys = ["identity/type", "properties/functionAppConfig/deployment/storage/authentication/type"]
        identity_type = _get_ci(body, "identity", "type")
        if not isinstance(identity_type, str) or identity_type.lower() != "userassigned":
            return CheckResult.FAILED
        deployment = _get_ci(body, "properties", "functionAppConfig", "deployment", "storage")
        if deployment is None:
            # Not a Flex Consumption app: nothing more to check.
            return CheckResult.PASSED
        auth_type = _get_ci(deployment, "authentication", "type")
        if isinstance(auth_type, str) and auth_type.lower() == "userassignedidentity":
            return CheckResult.PASSED
        return CheckResult.FAILED


class NoConnectionStringAppSettings(BaseResourceCheck):
    """No key-bearing storage connection string in app settings (identity-based ``__accountName`` instead).

    When the settings are a ``for`` expression over a parameter (as in modules/functionapp.bicep) only the literal
    text is visible here; tests/infra/test_structure.py checks the object main.bicep passes in.
    """

    def __init__(self) -> None:
        super().__init__(
            name="Function app settings carry no AzureWebJobsStorage connection string or account key",
            id="CKV_MTD_7",
            categories=(CheckCategories.SECRETS,),
            supported_resources=("Microsoft.Web/sites",),
        )

    def scan_resource_conf(self, conf: dict[str, Any]) -> CheckResult:
        """Fail on ``AzureWebJobsStorage``/``DEPLOYMENT_STORAGE_CONNECTION_STRING`` or any ``AccountKey=`` value."""
        self.evaluated_keys = ["properties/siteConfig/appSettings"]
        settings = _get_ci(_body(conf), "properties", "siteConfig", "appSettings")
        text = repr(settings)
        if "AccountKey=" in text or "listKeys" in text or "list_keys" in text:
            return CheckResult.FAILED
        names: list[str] = []
        if isinstance(settings, list):
            names = [str(_get_ci(item, "name")) for item in settings if isinstance(item, dict)]
        forbidden = {"azurewebjobsstorage", "deployment_storage_connection_string", "website_run_from_package"}
        if any(name.lower() in forbidden for name in names):
            return CheckResult.FAILED
        return CheckResult.PASSED


check_shared_key = StorageSharedKeyAccessDisabled()
check_app_insights_local_auth = AppInsightsLocalAuthDisabled()
check_blob_public_access = StorageBlobPublicAccessDisabled()
check_key_vault_rbac = KeyVaultRbacAuthorization()
check_log_analytics_local_auth = LogAnalyticsLocalAuthDisabled()
check_function_identity = FunctionAppUserAssignedIdentityOnly()
check_no_connection_string = NoConnectionStringAppSettings()
