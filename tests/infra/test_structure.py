"""Structural tests on the parsed Bicep: the security and Flex properties issue 6 requires, asserted on the templates.

pycep-parser renders a parameter or variable reference as its bare name (``"principalId"``) and a string literal as
its text, so comparisons below are against names where the template passes a parameter through.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("pycep", reason="infra tests run in .venv-infra: make infra-check (bash infra/check.sh)")

from .conftest import INFRA, ROOT, accessor, body, module_literal, resources_of_type

ROLE_IDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
# role name -> (module file, symbolic name of the scope resource, whether it is one assignment per loop item)
ROLE_SCOPES = {
    "Storage Blob Data Owner": ("modules/storage.bicep", "storage", False),
    "Storage Queue Data Contributor": ("modules/storage.bicep", "queues", True),
    # Account scope: the app creates its tables on first use (create_table_if_not_exists), a table-service right.
    "Storage Table Data Contributor": ("modules/storage.bicep", "storage", False),
    "Key Vault Secrets User": ("modules/keyvault.bicep", "vault", False),
    "Monitoring Metrics Publisher": ("modules/monitoring.bicep", "applicationInsights", False),
}
# The app's own list (read with ast): infra creates exactly the tables the app uses.
EXPECTED_TABLES = list(module_literal(ROOT / "shared_code" / "adapters" / "storage.py", "TABLES"))


def _one(parsed: dict[str, dict[str, Any]], rtype: str) -> tuple[str, str, dict[str, Any]]:
    found = resources_of_type(parsed, rtype)
    assert len(found) == 1, f"expected exactly one {rtype}, found {[(f, n) for f, n, _ in found]}"
    return found[0]


def _param_default(tree: dict[str, Any], name: str) -> Any:
    return tree["parameters"][name].get("default")


def _decorator(param: dict[str, Any], kind: str) -> Any:
    for dec in param.get("decorators", []):
        if dec["type"] == kind:
            return dec.get("argument", True)
    return None


# --- files -----------------------------------------------------------------------------------------------------


def test_every_bicep_file_parses(parsed: dict[str, dict[str, Any]]) -> None:
    expected = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*.bicep")}
    assert set(parsed) == expected
    assert "main.bicep" in parsed


def test_modules_are_local_files_not_registry_modules(parsed: dict[str, dict[str, Any]]) -> None:
    # checkov cannot see inside br:/ts: modules, and there is no registry access offline.
    for file, tree in parsed.items():
        for name, module in tree.get("modules", {}).items():
            assert module["type"] == "local", f"{file}:{name} is a {module['type']} module"
            target = (INFRA / file).parent / module["detail"]["path"]
            assert target.is_file(), f"{file}:{name} points at missing {target}"


def test_no_list_functions_anywhere() -> None:
    # listKeys()/listSecrets()/list*() would put keys or secrets into the deployment.
    pattern = re.compile(r"\blist[A-Z]?\w*\s*\(")
    for path in INFRA.rglob("*.bicep"):
        code = "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())
        assert not pattern.search(code), f"{path.name} calls a list* function"


def test_outputs_carry_no_secret(parsed: dict[str, dict[str, Any]]) -> None:
    for file, tree in parsed.items():
        secure = {n for n, p in tree["parameters"].items() if _decorator(p, "secure")}
        for name, output in tree.get("outputs", {}).items():
            assert not any(d["type"] == "secure" for d in output.get("decorators", [])), f"{file}:{name}"
            text = repr(output["value"])
            for param in secure:
                assert param not in text, f"{file}: output {name} exposes secure param {param}"
            # `<secret>.properties.value` would return a secret's content.
            assert "'value'" not in text, f"{file}: output {name} reads a .value property"
            # pycep names list*() calls list_keys, list_secrets, ... (and the regex test above covers the source).
            assert "AccountKey" not in text and "'list" not in text.lower(), f"{file}: output {name} may carry a key"


def test_secure_params_have_no_literal_default(parsed: dict[str, dict[str, Any]]) -> None:
    for file, tree in parsed.items():
        for name, param in tree["parameters"].items():
            if _decorator(param, "secure"):
                assert param.get("default") in (None, ""), f"{file}:{name} has a default value"


def test_connector_secret_is_only_a_secure_param_in_main(main: dict[str, Any]) -> None:
    param = main["parameters"]["connectorClientSecret"]
    assert _decorator(param, "secure")
    # ...and it never reaches app settings or outputs.
    assert "connectorClientSecret" not in repr(main["variables"]["appSettings"])
    assert "connectorClientSecret" not in repr(main["outputs"])


# --- storage ---------------------------------------------------------------------------------------------------


def test_storage_account_hardening(parsed: dict[str, dict[str, Any]]) -> None:
    _, _, res = _one(parsed, "Microsoft.Storage/storageAccounts")
    props = body(res)["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["defaultToOAuthAuthentication"] is True


def test_tables_queues_and_deployment_container(parsed: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    storage = parsed["modules/storage.bicep"]
    tables = storage["resources"]["tables"]["config"]
    assert tables["loop_type"]["detail"]["array_name"] == "tableNames"
    queues = storage["resources"]["queues"]["config"]
    assert queues["loop_type"]["detail"]["array_name"] == "queueNames"
    # main.bicep: the seven tables, each with TABLE_PREFIX, and the poll queue plus its poison queue.
    assert main["variables"]["tableBaseNames"]["value"] == EXPECTED_TABLES
    table_names = main["variables"]["tableNames"]["value"]
    assert table_names["loop_type"]["detail"]["array_name"] == "tableBaseNames"
    assert table_names["config"] == "${tablePrefix}${t}"
    assert main["variables"]["queueNames"]["value"] == ["pollQueueName", "${pollQueueName}-poison"]
    assert _param_default(main, "pollQueueName") == "tenant-polls"
    storage_params = body(main["modules"]["storage"])["params"]
    assert storage_params["tableNames"] == "tableNames"
    assert storage_params["queueNames"] == "queueNames"
    container = body(storage["resources"]["deploymentContainer"])
    assert container["properties"]["publicAccess"] == "None"
    assert container["name"] == "deploymentContainerName"


# --- key vault -------------------------------------------------------------------------------------------------


def test_key_vault_rbac_soft_delete_purge_protection(parsed: dict[str, dict[str, Any]]) -> None:
    file, _, res = _one(parsed, "Microsoft.KeyVault/vaults")
    props = body(res)["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props
    retention = parsed[file]["parameters"][props["softDeleteRetentionInDays"]]
    assert _decorator(retention, "min_value") >= 7 and _decorator(retention, "max_value") <= 90


def test_secret_resource_has_expiry_and_no_literal_value(parsed: dict[str, dict[str, Any]]) -> None:
    for file, _, res in resources_of_type(parsed, "Microsoft.KeyVault/vaults/secrets"):
        props = body(res)["properties"]
        value = props["value"]
        assert isinstance(value, str) and value in parsed[file]["parameters"], f"{file}: secret value is not a param"
        assert _decorator(parsed[file]["parameters"][value], "secure"), f"{file}: secret value param is not @secure()"
        assert props["attributes"]["exp"], f"{file}: secret without expiry"
    # keyvault.bicep creates it only when a value was passed.
    module = parsed["modules/keyvault.bicep"]["modules"]["connectorSecret"]["config"]
    assert "condition" in module


# --- monitoring ------------------------------------------------------------------------------------------------


def test_monitoring_local_auth_disabled(parsed: dict[str, dict[str, Any]]) -> None:
    _, _, appi = _one(parsed, "Microsoft.Insights/components")
    assert body(appi)["properties"]["DisableLocalAuth"] is True
    assert body(appi)["properties"]["WorkspaceResourceId"] == {
        "operator": {"type": "property_accessor", "operands": {"operand_1": "logAnalytics", "operand_2": "id"}}
    }
    _, _, law = _one(parsed, "Microsoft.OperationalInsights/workspaces")
    assert body(law)["properties"]["features"]["disableLocalAuth"] is True


# --- function app (Flex Consumption) ---------------------------------------------------------------------------


def test_flex_consumption_plan_and_site(parsed: dict[str, dict[str, Any]]) -> None:
    file, _, plan = _one(parsed, "Microsoft.Web/serverfarms")
    assert body(plan)["sku"] == {"tier": "FlexConsumption", "name": "FC1"}
    assert body(plan)["properties"]["reserved"] is True
    _, _, site = _one(parsed, "Microsoft.Web/sites")
    site_body = body(site)
    assert site_body["kind"] == "functionapp,linux"
    assert site_body["identity"]["type"] == "UserAssigned"
    props = site_body["properties"]
    assert props["httpsOnly"] is True
    # ARM rejects ftpsState on Flex Consumption sites (error 51021): FTP is off via basicPublishingCredentialsPolicies.
    assert not any(k.lower() == "ftpsstate" for k in props["siteConfig"]), "ftpsState breaks `azd up` on Flex"
    config = props["functionAppConfig"]
    tree = parsed[file]
    assert config["runtime"]["name"] == "python"
    assert _param_default(tree, config["runtime"]["version"]) == "3.11"
    memory = tree["parameters"][config["scaleAndConcurrency"]["instanceMemoryMB"]]
    assert _decorator(memory, "allowed") == [512, 2048, 4096]
    assert tree["parameters"][config["scaleAndConcurrency"]["maximumInstanceCount"]]["type"] == "int"
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    # The settings come from main.bicep's object, unrolled with a for-loop.
    settings = props["siteConfig"]["appSettings"]
    assert settings["loop_type"]["detail"]["object_name"] == "appSettings"


def test_main_exposes_memory_and_instance_parameters(main: dict[str, Any]) -> None:
    params = body(main["modules"]["functionApp"])["params"]
    assert params["instanceMemoryMB"] == "instanceMemoryMB"
    # maximumInstanceCount is derived from the documented cap on concurrent polls, not a free knob.
    assert params["maximumInstanceCount"] == "maximumInstanceCount"
    assert "maximumInstanceCount" in main["variables"] and "maximumInstanceCount" not in main["parameters"]
    assert _decorator(main["parameters"]["instanceMemoryMB"], "allowed") == [512, 2048, 4096]
    assert params["appSettings"] == "appSettings"


def test_basic_auth_publishing_disabled(parsed: dict[str, dict[str, Any]]) -> None:
    policies = resources_of_type(parsed, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(r)["name"]: body(r)["properties"]["allow"] for _, _, r in policies} == {"ftp": False, "scm": False}


def test_identity_based_host_storage_settings(app_settings: dict[str, Any]) -> None:
    assert "AzureWebJobsStorage" not in app_settings, "no connection string: identity-based storage only"
    assert app_settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert accessor(app_settings["AzureWebJobsStorage__accountName"]) == ["storage", "outputs", "name"]
    assert accessor(app_settings["AzureWebJobsStorage__clientId"]) == ["identity", "outputs", "clientId"]
    for service in ("blob", "queue", "table"):
        value = app_settings[f"AzureWebJobsStorage__{service}ServiceUri"]
        assert accessor(value) == ["storage", "outputs", f"{service}Endpoint"]
    assert app_settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identity.outputs.clientId};Authorization=AAD"
    )
    assert accessor(app_settings["KEY_VAULT_URL"]) == ["keyVault", "outputs", "uri"]


def test_no_settings_flex_rejects_or_secrets(app_settings: dict[str, Any]) -> None:
    # Flex Consumption rejects these (runtime/version live in functionAppConfig; the package in a blob container).
    for name in ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION", "WEBSITE_RUN_FROM_PACKAGE",
                 "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE", "WEBSITE_TIME_ZONE"):
        assert name not in app_settings
    # The credential is read from Key Vault at run time, never put in settings.
    assert "CONNECTOR_CLIENT_SECRET" not in app_settings
    assert "AccountKey" not in repr(app_settings)


def test_host_refuses_large_bodies_and_shows_no_homepage(app_settings: dict[str, Any]) -> None:
    # Issue 11 §5: anonymous large bodies are refused by the host before they are buffered; no landing page.
    assert 64 * 1024 < int(app_settings["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"]) <= 256 * 1024
    assert app_settings["AzureWebJobsDisableHomepage"] == "true"


def test_flex_site_sets_no_property_flex_refuses(parsed: dict[str, dict[str, Any]]) -> None:
    # Properties ARM refuses on Flex Consumption sites (functionAppConfig replaces them): any of them fails `azd up`.
    _, _, site = _one(parsed, "Microsoft.Web/sites")
    site_config = {k.lower() for k in body(site)["properties"]["siteConfig"]}
    refused = {"ftpsstate", "linuxfxversion", "alwayson", "use32bitworkerprocess", "javaversion", "numberofworkers"}
    assert not site_config & refused


def test_location_is_a_flex_region_with_azd_prompt(main: dict[str, Any]) -> None:
    location = main["parameters"]["location"]
    allowed = _decorator(location, "allowed")
    assert allowed and "westeurope" in allowed and "eastus" in allowed
    assert all(re.fullmatch(r"[a-z0-9]+", r) for r in allowed), allowed
    assert len(set(allowed)) == len(allowed)
    assert _decorator(location, "metadata") == {"azd": {"type": "location"}}


def test_zone_redundancy_refused_outside_its_regions(parsed: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    flex = set(_decorator(main["parameters"]["location"], "allowed"))
    zr = main["parameters"]["flexZoneRedundantRegions"]["default"]
    assert zr and set(zr) <= flex, set(zr) - flex
    assert main["parameters"]["zoneRedundant"]["default"] is False
    # Regions without availability zones are never zone redundant (learn.microsoft.com/azure/reliability/regions-list).
    assert not set(zr) & {"australiasoutheast", "northcentralus", "southindia", "ukwest", "westcentralus", "westus"}
    # The guard: a module whose only parameter allows 'ok', fed 'ok' or the refusal sentence; the resource group
    # (and so everything) waits for it.
    guard = parsed["modules/preflight.bicep"]["parameters"]["zoneRedundancy"]
    assert _decorator(guard, "allowed") == ["ok"]
    value = body(main["modules"]["preflight"])["params"]["zoneRedundancy"]["operator"]
    assert value["type"] == "conditional" and value["operands"]["false_value"] == "ok"
    condition = repr(value["operands"]["condition"])
    assert "zoneRedundant" in condition and "flexZoneRedundantRegions" in condition and "location" in condition
    assert "refused" in value["operands"]["true_value"]
    assert "preflight" in repr(body(main["resources"]["rg"]).get("dependsOn", main["resources"]["rg"]))
    assert body(parsed["modules/functionapp.bicep"]["resources"]["plan"])["properties"]["zoneRedundant"] == (
        "zoneRedundant"
    )


def test_poll_concurrency_cap_matches_host_json(main: dict[str, Any]) -> None:
    import json

    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    per_instance = queues["batchSize"] + queues["newBatchThreshold"]
    assert main["variables"]["pollsPerInstance"]["value"] == per_instance
    cap = main["parameters"]["maxConcurrentPolls"]
    assert _decorator(cap, "min_value") >= per_instance
    derived = repr(main["variables"]["maximumInstanceCount"]["value"])
    assert "maxConcurrentPolls" in derived and "pollsPerInstance" in derived
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert f"{per_instance} polls per instance" in doc
    assert f"`maxConcurrentPolls` (default {cap['default']})" in doc


# --- role assignments ------------------------------------------------------------------------------------------


def _role_assignments(tree: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    out = []
    for name, res in tree.get("resources", {}).items():
        if res["type"] == "Microsoft.Authorization/roleAssignments":
            looped = "loop_type" in res["config"]
            out.append((name, body(res), looped))
    return out


@pytest.mark.parametrize("role", sorted(ROLE_IDS))
def test_role_assignment_present_with_principal_and_scope(parsed: dict[str, dict[str, Any]], role: str) -> None:
    file, scope_symbol, looped = ROLE_SCOPES[role]
    tree = parsed[file]
    roles_var = tree["variables"]["roles"]["value"]
    keys = [k for k, v in roles_var.items() if v == ROLE_IDS[role]]
    assert len(keys) == 1, f"{file}: role id of {role} not in var roles"
    role_key = keys[0]
    # The role's name is in a comment next to its id (readers should not have to look GUIDs up).
    text = (INFRA / file).read_text()
    comment = re.search(rf"//\s*{re.escape(role)}\b[^\n]*\n\s*{role_key}:", text)
    assert comment, f"{file}: no '// {role}' comment above roles.{role_key}"
    matching = [
        (name, conf, is_loop)
        for name, conf, is_loop in _role_assignments(tree)
        if accessor(conf["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"])
        == ["roles", role_key]
    ]
    assert len(matching) == 1, f"{file}: expected one assignment of {role}, found {[m[0] for m in matching]}"
    name, conf, is_loop = matching[0]
    assert is_loop is looped
    props = conf["properties"]
    assert props["principalId"] == "principalId"
    assert props["principalType"] == "ServicePrincipal"
    assert conf["properties"]["roleDefinitionId"]["function"]["type"] == "subscription_resource_id"
    # Narrowest scope: the resource itself (each queue/table for the looped ones).
    scope = accessor(conf["scope"])
    assert scope[0] == scope_symbol, f"{name}: scope {scope}"
    if looped:
        assert scope == [scope_symbol, "i"]
    # Deterministic name: guid(scope.id, principalId, roleId).
    guid = conf["name"]["function"]
    assert guid["type"] == "guid"
    args = guid["parameters"]
    assert accessor(args["base_string"]) == [*scope, "id"]
    assert args["extra_string_1"] == "principalId"
    assert accessor(args["extra_string_2"]) == ["roles", role_key]


def test_modules_get_the_function_identity_principal(main: dict[str, Any]) -> None:
    for module in ("storage", "keyVault", "monitoring"):
        params = body(main["modules"][module])["params"]
        assert accessor(params["principalId"]) == ["identity", "outputs", "principalId"], module


def test_no_role_assignment_at_subscription_or_group_scope(parsed: dict[str, dict[str, Any]]) -> None:
    for file, tree in parsed.items():
        for name, conf, _ in _role_assignments(tree):
            assert "scope" in conf, f"{file}:{name} has no explicit (resource) scope"
            assert accessor(conf["scope"])[0] not in ("subscription()", "resourceGroup()"), f"{file}:{name}"


def test_deployer_gets_certificates_officer_only_in_certificate_mode(parsed: dict[str, dict[str, Any]]) -> None:
    kv = parsed["modules/keyvault.bicep"]
    assert kv["variables"]["roles"]["value"]["keyVaultCertificatesOfficer"] == "a4417e6f-fecd-4de8-b567-7b0420556985"
    res = kv["resources"]["deployerCertificatesOfficer"]["config"]
    condition = repr(res["condition"])
    assert "deployerPrincipalId" in condition and "credentialType" in condition and "certificate" in condition
    props = body(kv["resources"]["deployerCertificatesOfficer"])["properties"]
    assert props["principalId"] == "deployerPrincipalId"
    assert accessor(body(kv["resources"]["deployerCertificatesOfficer"])["scope"]) == ["vault"]


def test_key_vault_retention_recover_and_audit(parsed: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    params = body(main["modules"]["keyVault"])["params"]
    # Retention can never change once the vault exists: it is a main.bicep parameter, not a module default.
    assert params["softDeleteRetentionInDays"] == "keyVaultSoftDeleteRetentionInDays"
    assert params["createMode"] == "keyVaultCreateMode"
    assert params["credentialType"] == "connectorCredentialType"
    assert _decorator(main["parameters"]["keyVaultCreateMode"], "allowed") == ["default", "recover"]
    assert main["parameters"]["keyVaultCreateMode"]["default"] == "default"
    kv = parsed["modules/keyvault.bicep"]
    assert body(kv["resources"]["vault"])["properties"]["createMode"] == "createMode"
    # Every secret read is audited to Log Analytics.
    diag = body(kv["resources"]["auditLogs"])
    assert accessor(diag["scope"]) == ["vault"]
    assert diag["properties"]["workspaceId"] == "logAnalyticsId"
    assert {"category": "AuditEvent", "enabled": True} in diag["properties"]["logs"]
    assert accessor(params["logAnalyticsId"]) == ["monitoring", "outputs", "logAnalyticsId"]


# --- networking ------------------------------------------------------------------------------------------------


def test_private_networking_is_optional_and_complete(parsed: dict[str, dict[str, Any]], main: dict[str, Any]) -> None:
    assert main["parameters"]["enablePrivateNetworking"]["default"] is False
    assert main["modules"]["network"]["config"]["condition"] == "enablePrivateNetworking"
    network = parsed["modules/network.bicep"]
    vnet = body(network["resources"]["vnet"])
    delegations = [
        d["properties"]["serviceName"]
        for subnet in vnet["properties"]["subnets"]
        for d in subnet["properties"].get("delegations", [])
    ]
    assert delegations == ["Microsoft.App/environments"]
    assert network["variables"]["storageGroups"]["value"] == ["blob", "queue", "table"]
    vault_pe = body(network["resources"]["vaultEndpoint"])
    assert vault_pe["properties"]["privateLinkServiceConnections"][0]["properties"]["groupIds"] == ["vault"]
    # With private networking, storage and vault refuse public traffic.
    for module in ("storage", "keyVault"):
        params = body(main["modules"][module])["params"]
        assert params["publicNetworkAccess"]["operator"]["operands"] == {
            "condition": "enablePrivateNetworking", "true_value": "Disabled", "false_value": "Enabled"
        }
        assert params["networkDefaultAction"]["operator"]["operands"]["true_value"] == "Deny"


# --- alerts ----------------------------------------------------------------------------------------------------


def test_alert_rules_cover_poison_heartbeat_quarantine(parsed: dict[str, dict[str, Any]]) -> None:
    alerts = parsed["modules/alerts.bicep"]
    variables = {k: v["value"] for k, v in alerts["variables"].items()}
    assert variables["heartbeatFailedEvent"] == "connector.heartbeat.failed"
    assert variables["tenantQuarantinedEvent"] == "connector.tenant.quarantined"
    rules = {r["name"]: r for r in variables["rules"]}
    assert set(rules) == {"poison-queue", "heartbeat-failed", "tenant-quarantined"}
    assert "hostPoisonMessage" in rules["poison-queue"]["query"]
    assert "heartbeatFailedEvent" in rules["heartbeat-failed"]["query"]
    assert "tenantQuarantinedEvent" in rules["tenant-quarantined"]["query"]
    rule_res = body(alerts["resources"]["alertRules"])
    criteria = rule_res["properties"]["criteria"]["allOf"][0]
    assert criteria["operator"] == "GreaterThan" and criteria["threshold"] == 0
    assert rule_res["properties"]["scopes"] == ["applicationInsightsId"]


def test_sampling_never_drops_what_alerts_read(parsed: dict[str, dict[str, Any]]) -> None:
    import json

    # App Insights table -> host.json sampling type (customMetrics are pre-aggregated and never sampled).
    sampled_types = {"traces": "Trace", "customEvents": "Event", "requests": "Request", "exceptions": "Exception",
                     "dependencies": "Dependency"}
    rules = parsed["modules/alerts.bicep"]["variables"]["rules"]["value"]
    tables = {t for rule in rules for t in re.findall(r"\(\s*(\w+)\s*\|", rule["query"])}
    assert {"traces", "customEvents"} <= tables
    sampling = json.loads((ROOT / "host.json").read_text())["logging"]["applicationInsights"]["samplingSettings"]
    excluded = set(sampling["excludedTypes"].split(";"))
    for table in tables - {"customMetrics"}:
        assert sampled_types[table] in excluded, f"alerts read {table} but host.json may sample it away"


def test_deploy_doc_states_the_telemetry_contract(parsed: dict[str, dict[str, Any]]) -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    variables = {k: v["value"] for k, v in parsed["modules/alerts.bicep"]["variables"].items()}
    for key in ("heartbeatFailedEvent", "tenantQuarantinedEvent", "poisonLengthMetric"):
        assert f"`{variables[key]}`" in doc, f"docs/deploy.md does not name {variables[key]}"


# --- suppressions ----------------------------------------------------------------------------------------------


def test_every_checkov_suppression_has_a_reason() -> None:
    for path in INFRA.rglob("*.bicep"):
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                match = re.search(r"checkov:skip=([A-Z0-9_]+):\s*(.*)$", line)
                assert match, f"{path.name}: suppression without reason: {line.strip()}"
                assert len(match.group(2)) >= 20, f"{path.name}: reason too short: {line.strip()}"


# --- Azure clouds ----------------------------------------------------------------------------------------------


def _cloud_profiles() -> dict[str, dict[str, Any]]:
    """shared_code/cloud.py's CLOUDS, read with ast (the app is not importable in .venv-infra)."""
    import ast

    tree = ast.parse((ROOT / "shared_code" / "cloud.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "CLOUDS":
            assert isinstance(node.value, ast.Dict)
            out = {}
            for key, call in zip(node.value.keys, node.value.values, strict=True):
                assert isinstance(key, ast.Constant) and isinstance(call, ast.Call)
                out[key.value] = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
            return out
    raise AssertionError("shared_code/cloud.py has no CLOUDS table")


def test_bicep_passes_the_cloud_from_the_arm_environment(main: dict[str, Any], app_settings: dict[str, Any]) -> None:
    profiles = _cloud_profiles()
    param = main["parameters"]["azureCloud"]
    assert _decorator(param, "allowed") == list(profiles)
    assert app_settings["AZURE_CLOUD"] == "azureCloud"
    # The default maps environment().name to the profile whose arm_environment it is (DoD must be chosen).
    default = repr(param["default"])
    for name, profile in profiles.items():
        if name in ("public", "usgovdod"):
            continue
        assert profile["arm_environment"] in default and f"'{name}'" in default, name
    assert "environment" in repr(main["parameters"]["authorityHost"]["default"])
    # Graph and Intune defaults come from the app's cloud profile unless set explicitly.
    assert main["parameters"]["graphBaseUrl"]["default"] == ""
    assert main["parameters"]["intuneResource"]["default"] == ""
    # Private DNS zones follow the cloud's suffixes, never the public-cloud literals.
    network = (INFRA / "modules" / "network.bicep").read_text()
    code = "\n".join(line.split("//", 1)[0] for line in network.splitlines())
    assert "core.windows.net" not in code and "azure.net'" not in code
    assert "environment().suffixes.storage" in code and "environment().suffixes.keyvaultDns" in code
