"""What every stage shares: params, data and splits, model files, reports, clean failures.

Stages run from the repository root (DVC runs their commands there), so paths are relative
to the working directory.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from prefect import flow
from prefect.states import Failed

from components.data import DataError, ImageSet, load_dataset
from components.datasets import load_options
from components.ledger import LEDGER_DIR, LedgerError, read_ledger, requested_ids
from components.methods.base import RETENTION_PLAN
from components.params import Params, ParamsError, load_params
from components.splits import (
    SPLITS,
    IntegrityError,
    Split,
    SplitError,
    class_matched,
    read_manifest,
    split_forget_retain,
)
from components.tasks import TaskSpec
from components.training import DivergenceError
from flows.runtime.tracking import fail_pipeline_run

SPLIT_DIR = Path("data/splits")
MODEL_DIR = Path("models")
REPORT_DIR = Path("reports")

# the info key of a models/retrained.pt that holds no model: audit.reference is none (the
# file exists because DVC requires every declared output)
NO_REFERENCE = "no_reference"
REFUSED = "Refused"  # the name of a flow state that failed on a user mistake
UNAVAILABLE = "Unavailable"  # ... on a service that stayed unreachable after its retries
# Mistakes a user can make (bad params, data, requests): one clear line, exit 2, no traceback.
USER_ERRORS = (ParamsError, DataError, SplitError, IntegrityError, DivergenceError,
               LedgerError)


class StageError(RuntimeError):
    """A stage cannot go on for a reason the user can act on (the message says which)."""


def stage_params(path: str | Path = "params.yaml") -> Params:
    return load_params(path)


def task_spec(params: Params) -> TaskSpec:
    return TaskSpec(task=params.model.task, inpaint_box=params.model.inpaint_box,
                    outpaint_border=params.model.outpaint_border,
                    trigger_size=params.backdoor.trigger_size,
                    pattern_cell=params.backdoor.pattern_cell)


def load_sets(params: Params) -> dict[str, ImageSet]:
    """The dataset's train and test splits (resized, capped, presets applied per params)."""
    options = load_options(params)
    return {s: load_dataset(params.data.dataset, params.data.path, s, options)
            for s in ("train", "test")}


def ledger_indices(train: ImageSet, ledger: Path = LEDGER_DIR) -> dict[int, str]:
    """Train index -> request id for every deletion request in the ledger (cumulative)."""
    out = {}
    for sid, request in requested_ids(read_ledger(ledger)).items():
        dataset, split, index = sid.split(":")
        if dataset != train.dataset or split != "train" or int(index) >= len(train):
            raise SplitError(f"{request} asks for {sid}, which is not in {train.dataset}'s "
                             "training data (did data.dataset change?)")
        out[int(index)] = request
    return out


def draw_splits(params: Params, sets: dict[str, ImageSet]) -> dict[str, Split]:
    """The forget / retain / held-out / test splits the params and the ledger ask for (seeded).

    With forget.kind=ledger the backdoor is never planted: the forget set is real users'
    data that grows request by request, and the original model must not depend on it.
    """
    poison = params.backdoor.fraction if params.backdoor.enabled else 0.0
    return split_forget_retain(
        sets["train"], sets["test"], kind=params.forget.kind, classes=params.forget.classes,
        fraction=params.forget.fraction, heldout_fraction=params.data.heldout_fraction,
        poison_fraction=0.0 if params.forget.kind == "ledger" else poison,
        seed=params.seed, max_train=params.data.max_train, max_test=params.data.max_test,
        requested=ledger_indices(sets["train"]),
    )


def load_splits(sets: dict[str, ImageSet]) -> dict[str, Split]:
    """Read every split manifest, checking each image's sha256 (tampering is caught here)."""
    return {name: read_manifest(SPLIT_DIR / f"{name}.csv", sets) for name in SPLITS}


def split_images(split: Split, sets: dict[str, ImageSet]) -> np.ndarray:
    return sets[split.source].images[split.indices]


def subsample(split: Split, limit: int, seed: int) -> Split:
    """A seeded random subset of at most `limit` samples (audits and metrics use these)."""
    if len(split) <= limit:
        return split
    return split.take(np.sort(np.random.default_rng(seed).choice(len(split), limit, replace=False)))


def model_shape(sets: dict[str, ImageSet]) -> tuple[int, int]:
    """(channels, side) of the dataset's images."""
    _, c, h, w = sets["train"].images.shape
    if h != w:
        raise DataError(f"images must be square, got {h}x{w}")
    return c, h


def save_model(path: Path, state: dict[str, torch.Tensor], params: Params,
               shape: tuple[int, int], info: dict[str, Any]) -> None:
    """Write a model file: weights, what is needed to rebuild the module, the job's figures
    and, for a decoupled model, the plan its retention follows (λ_i, memorised residual)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    info = dict(info)
    plan = info.pop(RETENTION_PLAN, None)
    torch.save({"state_dict": state, "model": params.model.model_dump(), "shape": list(shape),
                "info": info, RETENTION_PLAN: plan}, path)


def read_model_file(path: Path) -> dict[str, Any]:
    """The content of a model file: weights are loaded as tensors only, no code is unpickled."""
    if not path.exists():
        raise StageError(f"model file missing: {path} (run the stage that writes it)")
    return torch.load(path, map_location="cpu", weights_only=True)


def reference_model(blob: dict[str, Any]) -> dict[str, Any] | None:
    """A models/retrained.pt's content, or None where no reference was trained."""
    return None if blob["info"].get(NO_REFERENCE) else blob


def start_model() -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights unlearning starts from (stage `start`) and the deletion requests they have
    already forgotten (none unless a cycle starts from the champion)."""
    blob = read_model_file(MODEL_DIR / "start.pt")
    return blob["state_dict"], list(blob["info"].get("covers", []))


def new_forget(forget: Split, covers: list[str]) -> Split:
    """The forget samples the start model has not forgotten yet: incremental unlearning acts
    on these only, while the audit still covers the whole forget split."""
    if not covers:
        return forget
    keep = ~np.isin(forget.requests.astype(str), covers)
    if not keep.any():
        raise StageError("the start model already forgot every sample of the forget split: "
                         "nothing new to unlearn")
    return forget.take(keep)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    if not path.exists():
        raise StageError(f"{path} missing (run the stage that writes it)")
    return json.loads(path.read_text())


def stage_flow(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Make a stage's body a Prefect flow that ends in a clean Failed state on user mistakes.

    Prefect logs a traceback for an exception escaping a flow; for a mistake the user can
    fix (bad params, missing data, a diverged ascent) one line says more.
    """

    def wrap(fn: Callable[..., Any]) -> Any:
        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (*USER_ERRORS, StageError) as exc:
                return Failed(message=str(exc), name=REFUSED)
            except MlflowException as exc:
                # the client has already retried (MLFLOW_HTTP_REQUEST_MAX_RETRIES); a server
                # that is down is an operator's matter: say which, without a traceback
                if "API request to" not in str(exc):
                    raise
                where = os.environ.get("MLFLOW_TRACKING_URI", "the tracking URI")
                first = str(exc).splitlines()[0][:300]
                return Failed(message=f"MLflow unreachable at {where} after retries ({first})",
                              name=UNAVAILABLE)

        return flow(name=name, validate_parameters=False)(body)

    return wrap


def run_stage(stage: Any, **kwargs: Any) -> None:
    """Run a stage's flow as a program: exit 0 on success, 2 on a user mistake, 1 on a crash.

    Args:
        stage: the Prefect flow of the stage (made with stage_flow).
        kwargs: the flow's parameters.
    """
    state = stage(return_state=True, **kwargs)
    if state.is_failed() or state.is_crashed():
        if state.name != UNAVAILABLE:  # no second wait on a tracking server that is down
            fail_pipeline_run()
        print(f"error: {state.message}", file=sys.stderr)
        sys.exit(2 if state.name == REFUSED else 1)


def job_sets(sets: dict[str, ImageSet], **parts: list[Split]) -> dict[str, dict[str, np.ndarray]]:
    """Images and poisoned flags for a job, each named set the concatenation of its splits.

    Example: job_sets(sets, train=[splits["retain"], splits["forget"]]).
    """
    return {
        name: {"images": np.concatenate([split_images(s, sets) for s in group]),
               "poisoned": np.concatenate([s.poisoned for s in group])}
        for name, group in parts.items()
    }


def eval_splits(splits: dict[str, Split], limit: int, seed: int) -> dict[str, Split]:
    """The samples the audits and metrics look at, at most `limit` each (seeded).

    forget: the clean forget samples (the poisoned ones are the backdoor audit's);
    heldout: held-out samples with the forget samples' class mix (the MIA reference, so that
    the AUC measures membership, not class difficulty: components.splits.class_matched);
    triggered: held-out samples of every class, to stamp the trigger on; retain, test: as
    named.
    """
    forget = subsample(splits["forget"].take(~splits["forget"].poisoned), limit, seed)
    chosen = {
        "retain": splits["retain"],
        "triggered": splits["heldout"],
        "test": splits["test"],
    }
    return {"forget": forget,
            "heldout": class_matched(splits["heldout"], forget.labels, limit, seed),
            **{name: subsample(split, limit, seed) for name, split in chosen.items()}}


def eval_images(chosen: dict[str, Split], sets: dict[str, ImageSet]) -> dict[str, np.ndarray]:
    """The uint8 images of every eval split (components.audits.eval_pairs makes the pairs)."""
    return {name: split_images(split, sets) for name, split in chosen.items()}
