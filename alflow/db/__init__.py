"""Provenance database: models, sessions/migrations, bulk writers, views and queries.

Only the engine's orchestrator process writes here; science code never imports this package.
"""
