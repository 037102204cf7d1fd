"""Prefect flows: orchestration only, importable as `wobble.flows`.

`tasks` wraps each `wobble` stage function as a Prefect task (and chooses the task runner);
`stages` is one flow per stage; `weekly` and `retrain` compose them; `deploy` schedules them.
No flow or task holds SQL or dataframe code.
"""

import os

# Before Prefect loads: no telemetry from an offline deployment.
for _var, _val in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                   ("DO_NOT_TRACK", "true")):
    os.environ.setdefault(_var, _val)
