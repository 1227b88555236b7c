// The connector's Function App on the Flex Consumption plan (FC1, Linux, Python 3.11), running as the user-assigned
// identity. Flex specifics (https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan): the runtime and
// scale settings live in functionAppConfig (FUNCTIONS_WORKER_RUNTIME / FUNCTIONS_EXTENSION_VERSION /
// WEBSITE_RUN_FROM_PACKAGE app settings are not allowed), and the package is read from a blob container.
@description('Function app name (also the default host name).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('Azure region.')
param location string

@description('Resource tags (the azd-service-name tag is added here).')
param tags object = {}

@description('azd service name in azure.yaml that deploys to this app.')
param azdServiceName string = 'api'

@description('Resource id of the user-assigned identity.')
param identityId string

@description('URL of the blob container holding the deployment package.')
param deploymentContainerUrl string

@description('Instance memory in MB: 512, 2048 or 4096.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Upper bound on instances (Flex allows up to 1000). Caps cost and the load on Graph and Intune.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Python version of the Flex runtime.')
@allowed([
  '3.11'
])
param pythonVersion string = '3.11'

@description('App settings (name -> value). Built in main.bicep; see docs/deploy.md for the list.')
param appSettings object

@description('Optional: subnet id for outbound VNet integration (empty = none).')
param virtualNetworkSubnetId string = ''

@description('Zone-redundant Flex Consumption plan (only in regions that offer it for Flex).')
param zoneRedundant bool = false

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy for Flex Consumption is offered only in some regions, so it is the zoneRedundant parameter (default off so a deployment works everywhere); the connector's work is idempotent and resumes from its stored cursors after an outage
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    // Linux.
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17: callers authenticate with Entra ID bearer tokens, not client certificates
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales each function from zero on demand (numberOfWorkers is not a Flex property); failover capacity is the platform's, capped by maximumInstanceCount
  // checkov:skip=CKV_AZURE_213: App Service health-check eviction does not apply to Flex Consumption, whose instances the platform manages; /api/health is exposed for external availability probes
  // checkov:skip=CKV_AZURE_78: ARM refuses siteConfig.ftpsState on Flex Consumption sites (error 51021; the Azure Verified Modules web/site module dropped it for Flex), so FTP and FTPS are switched off by the basicPublishingCredentialsPolicies 'ftp' resource below (allow: false) and tests/infra asserts both
  // checkov:skip=CKV_AZURE_222: the HTTP API is called by the vendor console over the internet by design; every route but /api/health requires an Entra ID token
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': azdServiceName
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      // No ftpsState: ARM rejects it on Flex Consumption sites (error 51021, "FtpsState ... for Flex Consumption sites
      // is invalid"); FTP is off through the basicPublishingCredentialsPolicies below.
      http20Enabled: true
      // Set with the site (not a separate sites/config resource) so the host never starts without its settings.
      appSettings: [for setting in items(appSettings): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: deploymentContainerUrl
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

// Basic-auth publishing (FTP and SCM) off: deployments authenticate with Entra ID.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output id string = functionApp.id
output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
