// Deployment-time guards that a parameter's @allowed list cannot express (they depend on two parameters).
// main.bicep passes 'ok', or a sentence saying why the combination is refused; ARM then fails the deployment
// during validation with "The value '<sentence>' is not part of the allowed value(s): 'ok'". The inputs are
// parameters only, so the check runs before any resource is created. (Bicep's fail() says the same more directly,
// but pycep-parser, which `make infra-check` uses, does not know it.)
targetScope = 'subscription'

@description('"ok", or why zone redundancy is refused in the chosen region.')
@allowed([
  'ok'
])
param zoneRedundancy string

output zoneRedundancy string = zoneRedundancy
