"""Local Microsoft cloud for tests: Entra, Graph v1.0, Intune partner services, Key Vault (see docs/simulator.md).

Written from Microsoft's public documents; never imports the connector's own code (shared_code/).
"""
