// Optional private networking (main.bicep deploys this module only when enablePrivateNetworking=true): a VNet whose
// "app" subnet is delegated to Flex Consumption for outbound VNet integration, and private endpoints (with private
// DNS) for the storage account's blob/queue/table services and the Key Vault, which then refuse public traffic.
// The function app's inbound HTTPS endpoint stays public: the console calls it with Entra ID bearer tokens.
@description('Name prefix for the network resources.')
param namePrefix string

@description('Azure region.')
param location string

@description('Resource tags.')
param tags object = {}

@description('VNet address space.')
param addressPrefix string = '10.40.0.0/16'

@description('Subnet for Flex Consumption VNet integration (delegated to Microsoft.App/environments).')
param appSubnetPrefix string = '10.40.1.0/24'

@description('Subnet for the private endpoints.')
param privateEndpointSubnetPrefix string = '10.40.2.0/24'

@description('Resource id of the storage account to reach privately.')
param storageAccountId string

@description('Resource id of the Key Vault to reach privately.')
param keyVaultId string

var storageGroups = [
  'blob'
  'queue'
  'table'
]

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: '${namePrefix}-vnet'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: [
      {
        name: 'app'
        properties: {
          addressPrefix: appSubnetPrefix
          // Flex Consumption VNet integration requires this delegation.
          delegations: [
            {
              name: 'flex'
              properties: {
                serviceName: 'Microsoft.App/environments'
              }
            }
          ]
        }
      }
      {
        name: 'private-endpoints'
        properties: {
          addressPrefix: privateEndpointSubnetPrefix
          privateEndpointNetworkPolicies: 'Disabled'
        }
      }
    ]
  }
}

resource storageDnsZones 'Microsoft.Network/privateDnsZones@2020-06-01' = [for group in storageGroups: {
  name: 'privatelink.${group}.${environment().suffixes.storage}'
  location: 'global'
  tags: tags
}]

resource storageDnsLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = [for (group, i) in storageGroups: {
  parent: storageDnsZones[i]
  name: '${namePrefix}-${group}-link'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}]

resource storageEndpoints 'Microsoft.Network/privateEndpoints@2024-01-01' = [for (group, i) in storageGroups: {
  name: '${namePrefix}-st-${group}-pe'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: vnet.properties.subnets[1].id
    }
    privateLinkServiceConnections: [
      {
        name: '${namePrefix}-st-${group}'
        properties: {
          privateLinkServiceId: storageAccountId
          groupIds: [
            group
          ]
        }
      }
    ]
  }
}]

resource storageEndpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-01-01' = [for (group, i) in storageGroups: {
  parent: storageEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: group
        properties: {
          privateDnsZoneId: storageDnsZones[i].id
        }
      }
    ]
  }
}]

// privatelink.vaultcore.<cloud suffix>: keyvaultDns is '.vault.azure.net' (public), '.vault.usgovcloudapi.net',
// '.vault.azure.cn' (learn.microsoft.com/azure/private-link/private-endpoint-dns, "Key Vault").
resource vaultDnsZone 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
  location: 'global'
  tags: tags
}

resource vaultDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: vaultDnsZone
  name: '${namePrefix}-vault-link'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource vaultEndpoint 'Microsoft.Network/privateEndpoints@2024-01-01' = {
  name: '${namePrefix}-kv-pe'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: vnet.properties.subnets[1].id
    }
    privateLinkServiceConnections: [
      {
        name: '${namePrefix}-kv'
        properties: {
          privateLinkServiceId: keyVaultId
          groupIds: [
            'vault'
          ]
        }
      }
    ]
  }
}

resource vaultEndpointDns 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-01-01' = {
  parent: vaultEndpoint
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: 'vault'
        properties: {
          privateDnsZoneId: vaultDnsZone.id
        }
      }
    ]
  }
}

output appSubnetId string = vnet.properties.subnets[0].id
output vnetId string = vnet.id
