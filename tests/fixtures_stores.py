"""Fixtures that give each test its own real store (filled in by the store adapters work)."""
