"""Stage `finetune`: knowledge retention on the retain set (phase 2 of the seed method) as a
Ray Train job, from the decoupled model. Methods that retain on their own skip it.
Writes models/unlearned.pt.
"""

from __future__ import annotations

import time

import numpy as np

from components.methods import get_method
from components.methods.base import RETENTION_PLAN
from components.params import Params
from components.splits import file_sha256
from flows.runtime.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    StageError,
    job_sets,
    load_sets,
    load_splits,
    new_forget,
    read_json,
    read_model_file,
    run_stage,
    save_model,
    stage_flow,
    stage_params,
    start_model,
    write_json,
)
from flows.runtime.jobs import run_job
from flows.runtime.tracking import log_figures, stage_run

KEYS = ("unlearn.method", "data", "ray")  # and unlearn.finetune when it retains


def retain_job(params: Params, sets: dict, splits: dict, forget: np.ndarray, decoupled: dict,
               plan: dict | None, start: dict, shape: tuple,
               run_id: str) -> tuple[dict, dict, list[str]]:
    """The stage's job: knowledge retention on the retain set from the `decoupled` weights; a
    method that keeps its decoupling also holds each `forget` pair at its λ_i (`plan`).
    `make bench-perf` (tools/perf.py) times this very call.

    Returns:
        (figures, weights, what the retention read): the certificate covers the released
        model only if it read the retain set alone (components/certificate.py).
    """
    parts = {"retain": [splits["retain"]]}
    if get_method(params.unlearn.method).keeps_decoupling:
        parts["forget"] = [forget]
    info, state = run_job("retain", f"finetune-{params.unlearn.method}", params, shape,
                          job_sets(sets, **parts), run_id, init=decoupled, original=start,
                          plan=plan)
    reads = [*parts] + (["start model"] if params.unlearn.finetune.distill > 0 else [])
    return info, state, reads


@stage_flow("finetune")
def finetune() -> dict:
    params = stage_params()
    method = get_method(params.unlearn.method)
    decoupled_file = read_model_file(MODEL_DIR / "decoupled.pt")
    decoupled, shape = decoupled_file["state_dict"], tuple(decoupled_file["shape"])
    summary = read_json(SPLIT_DIR / "summary.json")
    tags = {"forget_split_hash": summary["hashes"]["forget"], "method": method.name}
    keys = (*KEYS, "unlearn.finetune") if method.retention else KEYS
    with stage_run("finetune", params, keys, tags, splits=summary) as run:
        steps = params.unlearn.finetune.steps if method.retention else 0
        if steps == 0:
            info = {"steps": 0, "train_seconds": 0.0, "stage_seconds": 0.0, "reads": []}
            state = decoupled
            print(f"[finetune] {method.name} retains on its own: no retention phase")
        else:
            sets = load_sets(params)
            splits = load_splits(sets)
            start, covers = start_model()
            t0 = time.perf_counter()
            plan = None
            if method.keeps_decoupling:  # each forget pair kept at its λ_i, ρ transplanted
                plan = decoupled_file.get(RETENTION_PLAN)
                if plan is None:
                    raise StageError("models/decoupled.pt holds no retention plan (written by an "
                                     "older version): rerun the decouple stage (dvc repro)")
            info, state, reads = retain_job(params, sets, splits,
                                            new_forget(splits["forget"], covers), decoupled,
                                            plan, start, shape, run.info.run_id)
            info["stage_seconds"] = time.perf_counter() - t0
            info["reads"] = reads
        save_model(MODEL_DIR / "unlearned.pt", state, params, shape, info)
        log_figures("", info)
    report = {"method": method.name, **info, "mlflow_run_id": run.info.run_id,
              "init_sha256": file_sha256(MODEL_DIR / "decoupled.pt"),
              "model_sha256": file_sha256(MODEL_DIR / "unlearned.pt")}
    write_json(REPORT_DIR / "finetune.json", report)
    return report


if __name__ == "__main__":
    run_stage(finetune)
