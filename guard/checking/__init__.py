"""`guard check`: sample the store, re-embed in rounds, diagnose, fit a bridge, report.

    sample.py     one uniform draw from the store, shared by check and compare
    rounds.py     re-embedding round after round until the bound decides
    run.py        one check: self-checks, overlap, diagnosis, baseline, the verdict
    bridge.py     fitting and judging a linear bridge on held-out records
    retrieval.py  recall as stored against recall after the switch (``--queries``)
    report.py     the report object and its JSON; render.py its text, Markdown, HTML

Named ``checking`` rather than ``check``: ``guard.check`` is the Python API's function,
which a subpackage of the same name would replace on its first import.
"""
