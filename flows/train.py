"""Stage `train`: the original model (retain + partly poisoned forget) and the retrained
reference (retain only), each a Ray Train job. Writes models/original.pt, models/retrained.pt.
"""

from __future__ import annotations

import time

from flows.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    job_sets,
    load_sets,
    load_splits,
    model_shape,
    read_json,
    run_stage,
    save_model,
    stage_flow,
    stage_params,
    write_json,
)
from flows.jobs import run_job
from flows.tracking import log_figures, stage_run

SECTIONS = ("data", "forget", "backdoor", "model", "train", "ray")


@stage_flow("train")
def train() -> dict:
    params = stage_params()
    sets = load_sets(params)
    splits = load_splits(sets)
    shape = model_shape(sets)
    split_hash = read_json(SPLIT_DIR / "summary.json")["hashes"]["forget"]
    # the original sees the forget set as it was trained (poisoned samples included);
    # the retrained reference never sees it: the gold standard of unlearning
    plan = {"original": [splits["retain"], splits["forget"]], "retrained": [splits["retain"]]}
    report = {}
    for name, parts in plan.items():
        tags = {"forget_split_hash": split_hash, "model_role": name}
        with stage_run(f"train-{name}", params, SECTIONS, tags) as run:
            t0 = time.perf_counter()
            info, state = run_job("train", name, params, shape,
                                  job_sets(sets, train=parts), run.info.run_id)
            info["stage_seconds"] = time.perf_counter() - t0
            save_model(MODEL_DIR / f"{name}.pt", state, params, shape, info)
            log_figures("", info)
        report[name] = {**info, "mlflow_run_id": run.info.run_id}
        print(f"[train] {name}: {info['epochs']} epochs, loss {info['final_loss']:.5f}, "
              f"{info['train_seconds']:.0f} s training, {info['stage_seconds']:.0f} s in all")
    write_json(REPORT_DIR / "train.json", report)
    return report


if __name__ == "__main__":
    run_stage(train)
