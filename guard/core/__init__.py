"""The functional core: comparison, statistics, diagnosis and policy.

Pure functions over numpy arrays and frozen dataclasses. Nothing here performs I/O or
imports a store, engine, database, HTTP or CLI library (tests/test_core_purity.py).
"""
