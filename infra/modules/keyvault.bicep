// Key Vault for the connector's credential (the multi-tenant app registration's client secret or certificate).
// RBAC mode (no access policies), soft delete and purge protection on. The secret value never appears in a template
// or an output: it is either created out of band (docs/deploy.md, recommended) or passed once as a @secure() param.
@description('Key Vault name (3-24 characters).')
@minLength(3)
@maxLength(24)
param name string

@description('Azure region.')
param location string

@description('Resource tags.')
param tags object = {}

@description('Principal id of the function app\'s user-assigned identity (gets Key Vault Secrets User).')
param principalId string

@description('Optional: principal id of the person or pipeline running the deployment (gets Key Vault Secrets Officer so it can set the connector secret). Empty = no assignment.')
param deployerPrincipalId string = ''

@description('Principal type of deployerPrincipalId.')
@allowed([
  'User'
  'ServicePrincipal'
  'Group'
])
param deployerPrincipalType string = 'User'

@description('Name of the secret that holds the connector credential (CONNECTOR_SECRET_NAME).')
param secretName string

@description('What secretName holds (CONNECTOR_CREDENTIAL_TYPE): "certificate" also gives the deployer Key Vault Certificates Officer, to create the certificate and download its public part.')
@allowed([
  'secret'
  'certificate'
])
param credentialType string = 'secret'

@description('"recover" re-attaches a soft-deleted vault of the same name (after `azd down`: purge protection keeps the name taken); "default" creates a vault.')
@allowed([
  'default'
  'recover'
])
param createMode string = 'default'

@description('Resource id of the Log Analytics workspace that receives the vault\'s AuditEvent logs (every secret read).')
param logAnalyticsId string

@description('Optional: the connector client secret. Leave empty (default) and set it out of band; see docs/deploy.md.')
@secure()
param connectorClientSecret string = ''

@description('Expiry of the secret set from connectorClientSecret, as Unix seconds. Match the app registration secret\'s own expiry.')
param connectorSecretExpiresAt int = dateTimeToEpoch(dateTimeAdd(utcNow(), 'P180D'))

@description('Soft-delete retention in days (7-90). Purge protection keeps the vault name taken for this long after deletion.')
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

@description('Public network access: "Disabled" when main.bicep deploys private endpoints (enablePrivateNetworking), else "Enabled".')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@description('Firewall default action: "Deny" with private endpoints, else "Allow".')
@allowed([
  'Allow'
  'Deny'
])
param networkDefaultAction string = 'Allow'

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var roles = {
  // Key Vault Secrets User: read secret contents (the connector reads its credential).
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  // Key Vault Secrets Officer: create/rotate secrets (the deployer, to set the connector credential).
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  // Key Vault Certificates Officer: create certificates and read their public part (certificate mode, deployer).
  keyVaultCertificatesOfficer: 'a4417e6f-fecd-4de8-b567-7b0420556985'
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_189: public mode only - publicNetworkAccess is Disabled when enablePrivateNetworking=true; without VNet integration Flex Consumption reaches the vault over the public endpoint (with an Entra ID token and an RBAC role)
  // checkov:skip=CKV_AZURE_109: public mode only - Flex Consumption without VNet integration has no fixed egress addresses to allow, so the firewall default is Deny only when enablePrivateNetworking=true (access still needs an Entra ID token and an RBAC role)
  name: name
  location: location
  tags: tags
  properties: {
    // 'recover' undeletes the vault soft-deleted by an earlier `azd down` (its secrets come back with it).
    createMode: createMode
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: networkDefaultAction
    }
  }
}

// Created only when a value is passed; otherwise the operator sets it (docs/deploy.md) and the app reads it by name.
module connectorSecret 'secret.bicep' = if (!empty(connectorClientSecret)) {
  name: 'connector-secret'
  params: {
    vaultName: vault.name
    name: secretName
    value: connectorClientSecret
    expiresAt: connectorSecretExpiresAt
  }
}

// Key Vault Secrets User on this vault: the vault holds only the connector's credential, so vault scope equals
// secret scope, and it survives deleting and re-creating the secret during rotation.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
  }
}

// Key Vault Secrets Officer for the deployer (optional), so `az keyvault secret set` works in RBAC mode.
resource deployerSecretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(vault.id, deployerPrincipalId, roles.keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsOfficer)
  }
}

// Key Vault Certificates Officer for the deployer in certificate mode: `az keyvault certificate create` and
// `download` need certificate permissions, which Secrets Officer does not include. Re-provision after switching
// CONNECTOR_CREDENTIAL_TYPE so this assignment exists (docs/deploy.md §3).
resource deployerCertificatesOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId) && credentialType == 'certificate') {
  name: guid(vault.id, deployerPrincipalId, roles.keyVaultCertificatesOfficer)
  scope: vault
  properties: {
    principalId: deployerPrincipalId
    principalType: deployerPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultCertificatesOfficer)
  }
}

// Audit every data-plane operation (secret reads by the app, sets by operators) to Log Analytics
// (learn.microsoft.com/azure/key-vault/general/logging: category AuditEvent).
resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: vault
  properties: {
    workspaceId: logAnalyticsId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
