// Intune MTD partner connector: everything `azd up` provisions (docs/deploy.md walks through it).
// Plain Bicep resources in ./modules (no registry modules) so checkov and the tests in tests/infra can see every
// property. Names of app settings mirror shared_code/settings.py (SETTING_NAMES); tests/infra checks the mapping.
targetScope = 'subscription'

// ---------------------------------------------------------------------------------------------------------------
// azd environment
// ---------------------------------------------------------------------------------------------------------------
@minLength(1)
@maxLength(64)
@description('azd environment name; seeds resource names and tags.')
param environmentName string

// The regions that offer Flex Consumption, as in Microsoft's Flex quickstart template
// (Azure-Samples/functions-quickstart-python-http-azd, infra/main.bicep); the live list is
// `az functionapp list-flexconsumption-locations -o table` (docs/deploy.md, "Prerequisites").
@minLength(1)
@description('Azure region for all resources: one that offers Flex Consumption.')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'eastus2euap'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name (default rg-<environmentName>).')
param resourceGroupName string = ''

@description('Principal id of the deploying user or pipeline (azd sets AZURE_PRINCIPAL_ID). Gets Key Vault Secrets Officer on the connector vault so it can set the credential. Empty = none.')
param principalId string = ''

@description('Type of principalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param principalType string = 'User'

// ---------------------------------------------------------------------------------------------------------------
// Connector identity and API
// ---------------------------------------------------------------------------------------------------------------
@minLength(36)
@maxLength(36)
@description('Application (client) id of the multi-tenant app registration (CONNECTOR_CLIENT_ID).')
param connectorClientId string

@description('Name of the Key Vault secret holding the app registration\'s credential (CONNECTOR_SECRET_NAME).')
param connectorSecretName string = 'connector-client-secret'

@allowed([
  'secret'
  'certificate'
])
@description('What connectorSecretName holds: a client secret, or a Key Vault certificate (PEM or PKCS#12) used for certificate assertions (CONNECTOR_CREDENTIAL_TYPE).')
param connectorCredentialType string = 'secret'

@secure()
@description('Optional: the client secret, stored once in Key Vault. Leave empty and set it out of band (recommended, docs/deploy.md).')
param connectorClientSecret string = ''

@description('Audience (App ID URI or client id) of tokens the console presents (CONSOLE_API_AUDIENCE). Default: api://<connectorClientId>.')
param consoleApiAudience string = ''

@description('Tenant that issues the console\'s tokens (CONSOLE_API_TENANT_ID). Default: this subscription\'s tenant.')
param consoleApiTenantId string = subscription().tenantId

@description('Client id(s), comma-separated, of the console app(s) whose tokens the API accepts (CONSOLE_ALLOWED_CLIENT_IDS; azp/appid). Required: with none, nobody is let in.')
param consoleAllowedClientIds string

@description('Console token kind (CONSOLE_TOKEN_KIND): app (the console backend\'s app-only token, default) or delegated (operators sign in).')
@allowed(['app', 'delegated'])
param consoleTokenKind string = 'app'

// ---------------------------------------------------------------------------------------------------------------
// Microsoft cloud endpoints and Intune partner services (defaults: the cloud this deployment runs in; see
// shared_code/cloud.py and docs/deploy.md "Azure clouds")
// ---------------------------------------------------------------------------------------------------------------
@allowed([
  'public'
  'usgov'
  'usgovdod'
  'china'
])
@description('Microsoft cloud of the customer tenants (AZURE_CLOUD): picks the Graph, Intune and Entra defaults. Default: from the ARM environment this deployment runs in; choose usgovdod yourself (DoD shares Azure Government\'s ARM environment).')
param azureCloud string = environment().name == 'AzureUSGovernment' ? 'usgov' : (environment().name == 'AzureChinaCloud' ? 'china' : 'public')

@description('Entra ID authority host (AZURE_AUTHORITY_HOST). Default: this ARM environment\'s login endpoint.')
param authorityHost string = environment().authentication.loginEndpoint

@description('Microsoft Graph root (GRAPH_BASE_URL). Empty = the azureCloud default.')
param graphBaseUrl string = ''

@description('Token audience for Intune partner services (INTUNE_RESOURCE). Empty = the azureCloud default.')
param intuneResource string = ''

@description('Intune partner tenant service providerName (INTUNE_TENANT_SYNC_PROVIDER).')
param intuneTenantSyncProvider string = 'StatelessPartnerTenantDataSyncService'

@description('Intune partner device service providerName (INTUNE_DEVICE_SYNC_PROVIDER).')
param intuneDeviceSyncProvider string = 'StatelessPartnerDeviceDataSyncService'

@description('api-version for the tenant service (INTUNE_TENANT_API_VERSION).')
param intuneTenantApiVersion string = '1.6'

@description('api-version for the device service (INTUNE_DEVICE_API_VERSION).')
param intuneDeviceApiVersion string = '1.2'

// ---------------------------------------------------------------------------------------------------------------
// Schedules and state (NCRONTAB: {second} {minute} {hour} {day} {month} {day-of-week}, UTC)
// ---------------------------------------------------------------------------------------------------------------
@description('Timer that enqueues due tenant polls (POLL_SCHEDULE).')
param pollSchedule string = '0 */5 * * * *'

@description('Timer that sends Intune partner heartbeats (HEARTBEAT_SCHEDULE).')
param heartbeatSchedule string = '0 */15 * * * *'

@description('Timer that collects Intune upload results (UPLOAD_RESULTS_SCHEDULE).')
param uploadResultsSchedule string = '30 */2 * * * *'

@minValue(1)
@description('Hours between full reconciles of a tenant (FULL_RECONCILE_HOURS).')
param fullReconcileHours int = 24

@description('Work queue of tenant polls (POLL_QUEUE_NAME); the Functions host adds "<name>-poison".')
param pollQueueName string = 'tenant-polls'

@description('Prefix for the table names (TABLE_PREFIX), letters and digits only (table-name rules), e.g. "prod".')
param tablePrefix string = ''

@description('Further app settings (name -> string value), e.g. QUARANTINE_AFTER_FAILURES. They override the ones above.')
param extraAppSettings object = {}

// ---------------------------------------------------------------------------------------------------------------
// Hosting, storage, network, alerts
// ---------------------------------------------------------------------------------------------------------------
@allowed([
  512
  2048
  4096
])
@description('Flex Consumption instance memory in MB.')
param instanceMemoryMB int = 2048

@minValue(6)
@maxValue(6000)
@description('Most tenant polls that may run at once across the app: the cap on the load this app registration puts on Graph and Intune. Sets maximumInstanceCount = ceil(maxConcurrentPolls / pollsPerInstance).')
param maxConcurrentPolls int = 120

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
@description('Storage redundancy.')
param storageSkuName string = 'Standard_GRS'

@description('Deploy a VNet, integrate the app with it and reach storage and Key Vault only through private endpoints.')
param enablePrivateNetworking bool = false

@description('Zone-redundant Flex Consumption plan. Only in flexZoneRedundantRegions; the platform then keeps at least two always-ready instances per scale group (billed as always-ready).')
param zoneRedundant bool = false

@description('Regions where Flex Consumption offers zone redundancy; zoneRedundant=true anywhere else is refused. Default: the Flex regions above that have availability zones (learn.microsoft.com/azure/reliability/regions-list). Check the live list with `az functionapp list-flexconsumption-locations --zone-redundant=true` and pass it here if it differs.')
param flexZoneRedundantRegions array = [
  'australiaeast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'westeurope'
  'westus2'
  'westus3'
]

@minValue(7)
@maxValue(90)
@description('Key Vault soft-delete retention in days (7-90). Fixed once the vault exists; with purge protection the vault name stays taken this long after deletion (docs/deploy.md §7).')
param keyVaultSoftDeleteRetentionInDays int = 90

@allowed([
  'default'
  'recover'
])
@description('"recover" re-attaches the soft-deleted vault of an earlier `azd down` in this environment (purge protection keeps its name taken for the retention period); "default" creates a new vault.')
param keyVaultCreateMode string = 'default'

@description('Optional e-mail address for the alerts.')
param alertEmail string = ''

// ---------------------------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------------------------
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  application: 'intune-mtd-connector'
}
var functionAppName = 'func-${resourceToken}'
// Polls one instance runs at once: host.json queues.batchSize (4) + newBatchThreshold (2); tests/infra keeps the two in
// step. Flex applies maximumInstanceCount to each scale group (the poll queue function has its own), so the poll
// group runs at most maximumInstanceCount x pollsPerInstance polls (docs/deploy.md, "Sizing").
var pollsPerInstance = 6
var maximumInstanceCount = (maxConcurrentPolls + pollsPerInstance - 1) / pollsPerInstance
var deploymentContainerName = 'deployment-package'

// The connector's tables (ARCHITECTURE §4); TABLE_PREFIX is prepended exactly as the app does.
var tableBaseNames = [
  'tenants'
  'cursors'
  'memberships'
  'devices'
  'uploads'
  'leases'
]
var tableNames = [for t in tableBaseNames: '${tablePrefix}${t}']
// The work queue and the poison queue the Functions host moves a message to after maxDequeueCount failures.
var queueNames = [
  pollQueueName
  '${pollQueueName}-poison'
]

// Refuse what no @allowed list can: zone redundancy where Flex Consumption does not offer it (modules/preflight.bicep).
module preflight 'modules/preflight.bicep' = {
  name: 'preflight'
  params: {
    zoneRedundancy: (zoneRedundant && !contains(flexZoneRedundantRegions, location)) ? 'zoneRedundant=true is refused: Flex Consumption zone redundancy is not offered in ${location} (flexZoneRedundantRegions)' : 'ok'
  }
}

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
  dependsOn: [
    preflight
  ]
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: 'log-${resourceToken}'
    applicationInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    tableNames: tableNames
    queueNames: queueNames
    deploymentContainerName: deploymentContainerName
    skuName: storageSkuName
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
    networkDefaultAction: enablePrivateNetworking ? 'Deny' : 'Allow'
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: 'kv-${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    deployerPrincipalType: principalType
    secretName: connectorSecretName
    credentialType: connectorCredentialType
    connectorClientSecret: connectorClientSecret
    softDeleteRetentionInDays: keyVaultSoftDeleteRetentionInDays
    createMode: keyVaultCreateMode
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    publicNetworkAccess: enablePrivateNetworking ? 'Disabled' : 'Enabled'
    networkDefaultAction: enablePrivateNetworking ? 'Deny' : 'Allow'
  }
}

module network 'modules/network.bicep' = if (enablePrivateNetworking) {
  name: 'network'
  scope: rg
  params: {
    namePrefix: 'mtd-${resourceToken}'
    location: location
    tags: tags
    storageAccountId: storage.outputs.id
    keyVaultId: keyVault.outputs.id
  }
}

// Every setting shared_code/settings.py reads in Azure (tests/infra/test_settings_coverage.py keeps this in step).
var appSettings = union({
  // Identity-based host storage (no connection string, no keys).
  AzureWebJobsStorage__accountName: storage.outputs.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identity.outputs.clientId
  AzureWebJobsStorage__blobServiceUri: storage.outputs.blobEndpoint
  AzureWebJobsStorage__queueServiceUri: storage.outputs.queueEndpoint
  AzureWebJobsStorage__tableServiceUri: storage.outputs.tableEndpoint
  // The user-assigned identity azure-identity's ManagedIdentityCredential / DefaultAzureCredential should use.
  AZURE_CLIENT_ID: identity.outputs.clientId
  // Telemetry with Entra ID auth (App Insights local auth is disabled).
  APPLICATIONINSIGHTS_CONNECTION_STRING: monitoring.outputs.applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identity.outputs.clientId};Authorization=AAD'
  // The connector's app registration; its credential is read from Key Vault, never stored in settings.
  CONNECTOR_CLIENT_ID: connectorClientId
  KEY_VAULT_URL: keyVault.outputs.uri
  CONNECTOR_SECRET_NAME: connectorSecretName
  CONNECTOR_CREDENTIAL_TYPE: connectorCredentialType
  AZURE_CLOUD: azureCloud
  AZURE_AUTHORITY_HOST: authorityHost
  GRAPH_BASE_URL: graphBaseUrl
  INTUNE_RESOURCE: intuneResource
  CONSOLE_API_AUDIENCE: empty(consoleApiAudience) ? 'api://${connectorClientId}' : consoleApiAudience
  CONSOLE_API_TENANT_ID: consoleApiTenantId
  CONSOLE_ALLOWED_CLIENT_IDS: consoleAllowedClientIds
  CONSOLE_TOKEN_KIND: consoleTokenKind
  INTUNE_TENANT_SYNC_PROVIDER: intuneTenantSyncProvider
  INTUNE_DEVICE_SYNC_PROVIDER: intuneDeviceSyncProvider
  INTUNE_TENANT_API_VERSION: intuneTenantApiVersion
  INTUNE_DEVICE_API_VERSION: intuneDeviceApiVersion
  // Timer schedules are bound as %NAME% in the trigger decorators, so the host needs them as app settings.
  POLL_SCHEDULE: pollSchedule
  HEARTBEAT_SCHEDULE: heartbeatSchedule
  UPLOAD_RESULTS_SCHEDULE: uploadResultsSchedule
  FULL_RECONCILE_HOURS: string(fullReconcileHours)
  POLL_QUEUE_NAME: pollQueueName
  TABLE_PREFIX: tablePrefix
  // The host refuses larger request bodies before buffering them (the API's own cap is 64 KiB; the largest valid body
  // is well under it), and the anonymous Functions landing page is off (learn.microsoft.com/azure/azure-functions/
  // functions-app-settings: FUNCTIONS_REQUEST_BODY_SIZE_LIMIT, AzureWebJobsDisableHomepage).
  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '131072'
  AzureWebJobsDisableHomepage: 'true'
}, extraAppSettings)

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    deploymentContainerUrl: storage.outputs.deploymentContainerUrl
    instanceMemoryMB: instanceMemoryMB
    maximumInstanceCount: maximumInstanceCount
    appSettings: appSettings
    virtualNetworkSubnetId: enablePrivateNetworking ? network.outputs.appSubnetId : ''
    zoneRedundant: zoneRedundant
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'mtd-${resourceToken}'
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    poisonQueueName: '${pollQueueName}-poison'
    alertEmail: alertEmail
  }
}

// Outputs become azd environment values. None of them is a secret.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = subscription().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output SERVICE_API_NAME string = functionApp.outputs.name
output SERVICE_API_URI string = 'https://${functionApp.outputs.defaultHostName}'
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output KEY_VAULT_URL string = keyVault.outputs.uri
output CONNECTOR_SECRET_NAME string = connectorSecretName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_USER_ASSIGNED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output MAXIMUM_INSTANCE_COUNT int = maximumInstanceCount
