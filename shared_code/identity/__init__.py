"""Console identity features: Intune MAM registration checks and SSO role mapping."""
