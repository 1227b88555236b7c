"""Intune MTD partner flows: discovery, provisioning, heartbeat, threat levels, App Sync inventory, uploads."""
