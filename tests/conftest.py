"""Shared fixtures: real stores (fixtures_stores.py) and real models (fixtures_models.py)."""

from fixtures_models import *  # noqa: F403
from fixtures_stores import *  # noqa: F403
