"""MLflow wiring: where runs go, one run per stage nested under one run per pipeline run,
the params each stage reads, the splits as datasets, the model registry.

Embedded default: `mlflow.db` (SQLite) and `mlartifacts/` at the repository root, so
`mlflow ui --backend-store-uri sqlite:///mlflow.db` shows everything. MLFLOW_TRACKING_URI
(a server, Postgres, ...) wins when set.

Grouping: DVC runs each stage as its own process, so a stage finds its parent run itself:
UNLEARN_PARENT_RUN_ID when a cycle made one (named with the cycle id), else the run tagged
with the `dvc repro` / `dvc exp run` process it runs under (made by that repro's first stage,
named `repro-<time>`). A stage run alone, outside DVC, gets no parent. `register` names the
pipeline's runs with the version it registered.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.params import Params
from components.review import pick
from flows.runtime.warm import STAGE_PID_ENV

PARENT_ENV = "UNLEARN_PARENT_RUN_ID"
PIPELINE_TAG = "pipeline.id"  # the cycle id or `repro-<time>`, on the parent and its stages
KEY_TAG = "pipeline.key"  # host:pid:start of the DVC process a `repro-*` parent belongs to
KIND_TAG = "pipeline.kind"  # dvc | cycle | calibration: who ends the parent run
PARENT_TAG = "mlflow.parentRunId"  # what MLflow's UI nests runs by
SPLIT_DIR = Path("data/splits")
DIGEST_CHARS = 12  # MLflow keeps a dataset digest in 36 characters: the short hash, as elsewhere


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
        # server decides on its own (--artifacts-destination). MLflow stores this location
        # absolute (docs/operations.md, "Moving the store")
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


def dvc_process_key() -> str | None:
    """host:pid:start-time of the `dvc` process this stage runs under (None: not under DVC,
    or no /proc to tell). The start time keeps a reused pid from joining an old parent. A stage
    forked by the warm stage runner starts the walk at the process DVC started for it."""
    pid = int(os.environ.get(STAGE_PID_ENV) or os.getpid())
    for _ in range(10):  # dvc -> shell -> python; a few more levels for wrappers
        if pid <= 1:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        if "dvc" in {Path(a.decode(errors="replace")).name for a in argv[:3]}:
            return f"{socket.gethostname()}:{pid}:{fields[19]}"  # stat field 22: starttime
        pid = int(fields[1])  # stat field 4: ppid
    return None


def create_pipeline_run(experiment_id: str, pipeline_id: str, kind: str,
                        tags: dict[str, str] | None = None) -> str:
    """A parent run for one pipeline run or cycle; returns its id."""
    run = client().create_run(experiment_id, run_name=pipeline_id,
                              tags={PIPELINE_TAG: pipeline_id, KIND_TAG: kind,
                                    "stage": "pipeline", **(tags or {})})
    return run.info.run_id


def end_pipeline_run(run_id: str, status: str = "FINISHED") -> None:
    client().set_terminated(run_id, status)


def fail_pipeline_run() -> None:
    """Mark FAILED the `repro-*` parent run of the `dvc repro` this failed stage runs under
    (else it would stay RUNNING: only `register` ends it). A cycle ends its own parent."""
    key = dvc_process_key()
    if key is None or os.environ.get(PARENT_ENV):
        return
    try:
        c = client()
        ids = [e.experiment_id for e in c.search_experiments()]
        for run in c.search_runs(ids, f"tags.`{KEY_TAG}` = '{key}' and "
                                      "attributes.status = 'RUNNING'"):
            c.set_terminated(run.info.run_id, "FAILED")
    except MlflowException:  # the stage's own error is the one to report
        pass


def pipeline_parent(experiment_id: str) -> tuple[str, str] | None:
    """(run id, pipeline id) of the parent run this stage nests under, made if it is the
    first stage of a `dvc repro`; None for a stage run alone."""
    given = os.environ.get(PARENT_ENV)
    if given:
        run = client().get_run(given)
        return given, run.data.tags.get(PIPELINE_TAG, run.info.run_name)
    key = dvc_process_key()
    if key is None:
        return None
    found = client().search_runs([experiment_id], f"tags.`{KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id, found[0].data.tags[PIPELINE_TAG]
    pipeline_id = time.strftime("repro-%Y%m%d-%H%M%S")
    return create_pipeline_run(experiment_id, pipeline_id, "dvc", {KEY_TAG: key}), pipeline_id


class DvcSplitSource(DatasetSource):
    """Where a split comes from: its manifest's path in the DVC-tracked data/splits, the git
    commit of the workspace, and the md5 dvc.lock records for data/splits."""

    def __init__(self, path: str, sha256: str, git_commit: str | None, dvc_md5: str | None):
        self.path, self.sha256, self.git_commit, self.dvc_md5 = path, sha256, git_commit, dvc_md5

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> str:
        return self.path

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcSplitSource:
        raise NotImplementedError("a DVC split is logged, never resolved from a string")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "git_commit": self.git_commit,
                "dvc_md5": self.dvc_md5, "get": f"dvc get . {self.path} --rev "
                                                f"{self.git_commit or 'HEAD'}"}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcSplitSource:
        return cls(source_dict["path"], source_dict["sha256"], source_dict.get("git_commit"),
                   source_dict.get("dvc_md5"))


def git_commit() -> str | None:
    """HEAD of the workspace's git repository (None outside one)."""
    proc = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def splits_md5(lock: Path = Path("dvc.lock")) -> str | None:
    """The md5 dvc.lock records for the prepare stage's data/splits (None if not locked)."""
    if not lock.exists():
        return None
    outs = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get("prepare", {})
    return next((o.get("md5") for o in outs.get("outs", []) if o.get("path") == str(SPLIT_DIR)),
                None)


def log_splits(summary: dict) -> None:
    """Log the forget and retain splits as the active run's datasets (MLflow's "Datasets
    used"): name, the split hash as digest, the DVC path and revision as source."""
    commit, md5 = git_commit(), splits_md5()
    for name in ("forget", "retain"):
        sha = summary["hashes"][name]
        source = DvcSplitSource(str(SPLIT_DIR / f"{name}.csv"), sha, commit, md5)
        dataset = MetaDataset(source, name=f"{summary.get('dataset', 'data')}-{name}",
                              digest=sha[:DIGEST_CHARS])
        mlflow.log_input(dataset, context=name,
                         tags={"samples": str(summary["counts"][name])})


@contextmanager
def stage_run(stage: str, params: Params, keys: tuple[str, ...],
              tags: dict[str, str] | None = None,
              splits: dict | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage, nested under its pipeline's run, with the params it reads.

    Args:
        stage: the stage name (the `stage` tag; the run name is `<pipeline id>/<stage>`).
        params: all params.
        keys: the params this stage reads, dotted (`unlearn.decouple` logs that block only).
        tags: extra tags (e.g. the forget-split hash).
        splits: data/splits/summary.json, for a stage that reads the splits: forget and
            retain are logged as the run's datasets.
    """
    experiment_id = setup(params)
    parent = pipeline_parent(experiment_id)
    run_tags = {"stage": stage, **(tags or {})}
    name = stage
    if parent is not None:
        run_tags.update({PARENT_TAG: parent[0], PIPELINE_TAG: parent[1]})
        name = f"{parent[1]}/{stage}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=run_tags) as run:
        mlflow.log_params({"seed": params.seed,
                           **pick(params.model_dump(mode="json"), keys)})
        if splits is not None:
            log_splits(splits)
        yield run


def name_pipeline_runs(run_id: str, label: str) -> None:
    """Add `label` (e.g. `fashion-mnist-ae v3`) to the names of the pipeline run that
    `run_id` belongs to and of every stage run under it, and tag them `model.version`."""
    c = client()
    run = c.get_run(run_id)
    parent = run.data.tags.get(PARENT_TAG)
    if parent is None:
        return
    pipeline_id = run.data.tags.get(PIPELINE_TAG, parent)
    c.set_tag(parent, "mlflow.runName", f"{pipeline_id} -> {label}")
    c.set_tag(parent, "model.version", label)
    children = c.search_runs([run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'")
    for child in children:
        stage = child.data.tags.get("stage", child.info.run_name)
        c.set_tag(child.info.run_id, "mlflow.runName", f"{pipeline_id}/{stage} ({label})")
        c.set_tag(child.info.run_id, "model.version", label)


def parent_of(run_id: str) -> tuple[str, str] | None:
    """(parent run id, its `pipeline.kind`) of a stage run, or None."""
    c = client()
    parent = c.get_run(run_id).data.tags.get(PARENT_TAG)
    if parent is None:
        return None
    return parent, c.get_run(parent).data.tags.get(KIND_TAG, "")


# the columns of MLflow's SQL schema that hold artifact locations (MLflow 2.x and 3.x)
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"),
                    ("model_versions", "storage_location"), ("model_versions", "source"))


def relocate_store(db: Path, old: str, new: str) -> dict[str, int]:
    """Point an embedded store's artifact locations from folder `old` to folder `new`.

    MLflow stores every local artifact location absolute (it resolves a relative one when
    the experiment is created), so a copied or moved mlflow.db keeps serving, and writing
    to, the folder it came from. This rewrites that prefix in the SQLite file.

    Args:
        db: the mlflow.db file.
        old: the artifact folder the store points at now (a path).
        new: the folder the artifacts are in now.

    Returns:
        {"table.column": rows changed}.
    """
    import sqlite3

    old_path, new_path = str(Path(old)), str(Path(new))
    changed = {}
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in LOCATION_COLUMNS:
            if table not in tables:
                continue
            # both forms MLflow writes, file:///a/b/... and /a/b/...; table and column names
            # come from LOCATION_COLUMNS, the paths are bound parameters
            cur = conn.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) "
                               f"WHERE {column} LIKE ?", (old_path, new_path, f"%{old_path}%"))
            changed[f"{table}.{column}"] = cur.rowcount
    return changed


def log_figures(prefix: str, figures: dict[str, Any]) -> None:
    """Log the numeric entries of `figures` as metrics named `<prefix>.<key>`."""
    mlflow.log_metrics({f"{prefix}.{k}" if prefix else k: float(v)
                        for k, v in flatten(figures).items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})


def client() -> MlflowClient:
    return MlflowClient(tracking_uri())
