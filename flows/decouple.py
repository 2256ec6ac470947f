"""Stage `decouple`: the forgetting phase of `unlearn.method` (for the seed method: clipped
gradient ascent until the forget loss reaches λ) as a Ray Train job, from the start model
(stage `start`) on the forget samples it has not forgotten yet. Writes models/decoupled.pt.
"""

from __future__ import annotations

import time

import numpy as np

from components.methods import get_method
from components.methods.base import RETENTION_PLAN
from components.params import Params
from components.review import method_keys
from components.splits import file_sha256
from flows.runtime.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    job_sets,
    load_sets,
    load_splits,
    model_shape,
    new_forget,
    read_json,
    run_stage,
    save_model,
    stage_flow,
    stage_params,
    start_model,
    write_json,
)
from flows.runtime.jobs import run_job
from flows.runtime.tracking import log_figures, stage_run

KEYS = ("data", "ray")  # with the method's own params (logged on its run)


def forget_job(params: Params, sets: dict, splits: dict, forget: np.ndarray, start: dict,
               shape: tuple, run_id: str) -> tuple[dict, dict]:
    """The stage's job: `unlearn.method`'s forgetting phase from `start` on the `forget`
    indices (the retain and held-out sets along for methods that read them). `make bench-perf`
    (tools/perf.py) times this very call. Returns (figures, weights)."""
    return run_job(
        "forget", f"decouple-{params.unlearn.method}", params, shape,
        job_sets(sets, forget=[forget], retain=[splits["retain"]], heldout=[splits["heldout"]]),
        run_id, init=start, original=start,
    )


@stage_flow("decouple")
def decouple() -> dict:
    params = stage_params()
    method = get_method(params.unlearn.method)
    sets = load_sets(params)
    splits = load_splits(sets)
    shape = model_shape(sets)
    start, covers = start_model()
    forget = new_forget(splits["forget"], covers)
    summary = read_json(SPLIT_DIR / "summary.json")
    tags = {"forget_split_hash": summary["hashes"]["forget"], "method": method.name}
    keys = (*method_keys(method.name, retention=False), *KEYS)
    with stage_run("decouple", params, keys, tags, splits=summary) as run:
        t0 = time.perf_counter()
        info, state = forget_job(params, sets, splits, forget, start, shape, run.info.run_id)
        info["stage_seconds"] = time.perf_counter() - t0
        save_model(MODEL_DIR / "decoupled.pt", state, params, shape, info)
        info.pop(RETENTION_PLAN, None)  # kept with the model, not in the report
        log_figures("", info)
    # the model this record describes: register checks the chain of hashes down to the
    # registered file before writing a certificate from this record
    report = {"method": method.name, **info, "forget_samples": len(forget),
              "model_sha256": file_sha256(MODEL_DIR / "decoupled.pt"),
              "mlflow_run_id": run.info.run_id}
    write_json(REPORT_DIR / "decouple.json", report)
    print(f"[decouple] {method.name}: {info.get('steps', 0)} steps, "
          f"{info['train_seconds']:.1f} s of unlearning compute")
    return report


if __name__ == "__main__":
    run_stage(decouple)
