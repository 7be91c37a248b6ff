"""Maintenance scripts run by hand (see docs/testing.md), not part of the package."""
