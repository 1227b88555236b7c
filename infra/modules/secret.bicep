// One Key Vault secret, deployed by keyvault.bicep only when the operator passes the connector secret as a
// @secure() parameter. (A module, not a conditional resource, so every property is visible to checkov.)
@description('Name of the existing Key Vault.')
param vaultName string

@description('Secret name.')
param name string

@description('Secret value.')
@secure()
param value string

@description('Expiry as Unix seconds.')
param expiresAt int

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: name
  properties: {
    value: value
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: expiresAt
    }
  }
}

// The secret's URI without a version, never its value.
output uri string = secret.properties.secretUri
