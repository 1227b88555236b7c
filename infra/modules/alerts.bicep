// Operational alerts as scheduled log queries on Application Insights. The app-side names are a contract with the
// code (docs/deploy.md "Telemetry contract"): the connector emits each event either as an App Insights custom event
// with that name or as a log record whose message starts with that name (the Python worker forwards log records to
// the `traces` table), so each query looks in both tables.
@description('Name prefix for the alert rules.')
param namePrefix string

@description('Azure region.')
param location string

@description('Resource tags.')
param tags object = {}

@description('Resource id of the Application Insights component the queries run on.')
param applicationInsightsId string

@description('Name of the poison queue the Functions host moves failed poll messages to.')
param poisonQueueName string

@description('Optional: e-mail address that receives the alerts (empty = alerts fire without a notification).')
param alertEmail string = ''

@description('How often the rules evaluate (ISO 8601 duration).')
param evaluationFrequency string = 'PT5M'

@description('Look-back window of each evaluation (ISO 8601 duration).')
param windowSize string = 'PT15M'

// Event names the connector emits (documented in docs/deploy.md).
var heartbeatFailedEvent = 'connector.heartbeat.failed'
var tenantQuarantinedEvent = 'connector.tenant.quarantined'
var poisonLengthMetric = 'connector.queue.poison_length'

// The Functions host (Storage Queues extension) logs this warning when it moves a message to "<queue>-poison".
var hostPoisonMessage = 'Moving message to queue \'${poisonQueueName}\''

var actionGroupIds = empty(alertEmail) ? [] : [
  actionGroup.id
]

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-ops'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'mtdconn'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var rules = [
  {
    name: 'poison-queue'
    displayName: 'MTD connector: messages in the poison queue'
    description: 'A tenant poll failed maxDequeueCount times and was moved to ${poisonQueueName}, or the connector reported a non-empty poison queue. Inspect and re-queue or delete the messages.'
    severity: 2
    query: 'union isfuzzy=true (traces | where message contains "${hostPoisonMessage}"), (customMetrics | where name == "${poisonLengthMetric}" and value > 0)'
  }
  {
    name: 'heartbeat-failed'
    displayName: 'MTD connector: Intune heartbeat failures'
    description: 'The connector could not send a partner heartbeat to Intune for at least one tenant; Intune marks the connector unavailable if heartbeats stop.'
    severity: 2
    query: 'union isfuzzy=true (traces | where message startswith "${heartbeatFailedEvent}"), (customEvents | where name == "${heartbeatFailedEvent}")'
  }
  {
    name: 'tenant-quarantined'
    displayName: 'MTD connector: tenant quarantined'
    description: 'The connector stopped polling a tenant after repeated failures (for example revoked consent). The tenant needs attention.'
    severity: 1
    query: 'union isfuzzy=true (traces | where message startswith "${tenantQuarantinedEvent}"), (customEvents | where name == "${tenantQuarantinedEvent}")'
  }
]

resource alertRules 'Microsoft.Insights/scheduledQueryRules@2022-06-15' = [for rule in rules: {
  name: '${namePrefix}-${rule.name}'
  location: location
  tags: tags
  properties: {
    displayName: rule.displayName
    description: rule.description
    severity: rule.severity
    enabled: true
    evaluationFrequency: evaluationFrequency
    windowSize: windowSize
    scopes: [
      applicationInsightsId
    ]
    criteria: {
      allOf: [
        {
          query: rule.query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: actionGroupIds
    }
  }
}]

output alertRuleNames array = [for (rule, i) in rules: alertRules[i].name]
