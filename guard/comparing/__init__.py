"""`guard compare`: several candidates judged on one draw of the store, then ranked.

    run.py     draw once, check and time each candidate, measure retrieval
    report.py  the ranking report and its renderings

Named ``comparing`` rather than ``compare`` for the reason ``guard.checking`` gives.
"""
