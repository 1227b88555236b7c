"""Custom checkov checks for the connector's Bicep (loaded with ``--external-checks-dir infra/checks``)."""
