"""Prefect flows. This folder holds the eight DVC stages, one module each, thin wiring only
(`python -m flows.<stage>`: prepare, train, start, decouple, finetune, audit, evaluate,
register); `runtime/` is what they run on (stage wrapper, Ray Train jobs, MLflow, Prefect
server), `ops/` is how the pipeline is operated (the `unlearn` CLI, cycles, review, gate).
`stack.py`, `benchmark.py` and `export_imagefolder.py` here only keep documented commands
working (`python -m flows.stack ...`); their code is in runtime/ and tools/.

Quiet, offline defaults for the embedded stack are set here, before Prefect, Ray or MLflow
are imported; a value already in the environment wins.
"""

import os

for _key, _value in {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage reporting (the machine may be offline)
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # else every worker print reaches the driver twice
    "RAY_DEDUP_LOGS": "0",  # concurrent jobs print alike lines; Ray would fold them together
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # fits finish ~5 s sooner (measured)
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # else a telemetry task logs "database locked"
    # the first run on a fresh machine creates the ephemeral API's database: 20 s is too short
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_key, _value)
