"""MLflow wiring: where runs go, one run per stage, flat params, the model registry.

Embedded default: `mlflow.db` (SQLite) and `mlartifacts/` at the repository root, so
`mlflow ui --backend-store-uri sqlite:///mlflow.db` shows everything. MLFLOW_TRACKING_URI
(a server, Postgres, ...) wins when set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from components.params import Params


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def setup(params: Params) -> str:
    """Point MLflow at the tracking store and the project's experiment; returns its id."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = params.mlflow.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        # a database store would put artifacts in ./mlruns of whatever the cwd is; a tracking
        # server decides on its own (--artifacts-destination)
        local = not uri.startswith(("http://", "https://", "databricks"))
        location = Path("mlartifacts").resolve().as_uri() if local else None
        return mlflow.create_experiment(name, artifact_location=location)
    return exp.experiment_id


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: params as MLflow keys."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


@contextmanager
def stage_run(stage: str, params: Params, sections: tuple[str, ...],
              tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, with the params sections it depends on logged.

    Args:
        stage: the stage name (the run name and the `stage` tag).
        params: all params.
        sections: the params sections this stage reads (logged as flat params).
        tags: extra tags (e.g. the forget-split hash).
    """
    experiment_id = setup(params)
    dumped = params.model_dump(mode="json")
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage,
                          tags={"stage": stage, **(tags or {})}) as run:
        logged = {"seed": params.seed}
        for section in sections:
            logged.update(flatten(dumped[section], f"{section}."))
        mlflow.log_params(logged)
        yield run


def log_figures(prefix: str, figures: dict[str, Any]) -> None:
    """Log the numeric entries of `figures` as metrics named `<prefix>.<key>`."""
    mlflow.log_metrics({f"{prefix}.{k}" if prefix else k: float(v)
                        for k, v in flatten(figures).items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})


def client() -> MlflowClient:
    return MlflowClient(tracking_uri())
