"""`guard monitor`: scheduled drift checks of stores against their production engines.

One run of one watch (run.py) re-embeds a seeded sample and compares it with the stored
vectors, compares the records written since the previous run with older ones
(guard.core.population), records the run (history.py), updates the Prometheus gauges
(metrics.py) and alerts on a change of status (alerts.py). service.py schedules the runs.
"""
