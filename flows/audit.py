"""Stage `audit`: backdoor attack success rate, loss-based membership inference and the OOD
score for the original, decoupled, unlearned and retrained models (Ray tasks, one per model).

MIA and OOD use the clean forget samples; the poisoned ones are the backdoor audit's. For
class forgetting the MIA reference is held-out data of the same classes, so that the AUC
measures membership and not class difficulty.
"""

from __future__ import annotations

import numpy as np
import torch

from components.audits import audit_model, triggered_inputs
from components.splits import Split
from components.tasks import build_pairs, to_float
from flows.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    load_sets,
    load_splits,
    read_json,
    read_model_file,
    run_stage,
    split_images,
    stage_flow,
    stage_params,
    subsample,
    task_spec,
    write_json,
)
from flows.jobs import map_models
from flows.tracking import log_figures, stage_run

MODELS = ("original", "decoupled", "unlearned", "retrained")
SECTIONS = ("audit", "backdoor")


@stage_flow("audit")
def audit() -> dict:
    params = stage_params()
    sets = load_sets(params)
    splits = load_splits(sets)
    spec, limit, seed = task_spec(params), params.audit.max_samples, params.seed
    forget = splits["forget"]
    clean_forget = forget.take(~forget.poisoned)
    reference = splits["heldout"].take(np.isin(splits["heldout"].labels, forget.labels))

    def pairs(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        s = subsample(split, limit, seed)
        return build_pairs(split_images(s, sets), np.zeros(len(s), bool), spec)

    triggered = to_float(split_images(subsample(splits["heldout"], limit, seed), sets))
    data = {"forget": pairs(clean_forget), "retain": pairs(splits["retain"]),
            "heldout": pairs(reference),
            "triggered": (triggered_inputs(triggered, spec), triggered)}
    blobs = {m: read_model_file(MODEL_DIR / f"{m}.pt") for m in MODELS}
    split_hash = read_json(SPLIT_DIR / "summary.json")["hashes"]["forget"]
    with stage_run("audit", params, SECTIONS, {"forget_split_hash": split_hash}) as run:
        results = map_models(audit_model, blobs, (data, spec, params.backdoor.threshold), params)
        for name, figures in results.items():
            log_figures(name, figures)
    report = {"models": results, "samples": {k: len(v[0]) for k, v in data.items()},
              "mlflow_run_id": run.info.run_id}
    write_json(REPORT_DIR / "audit.json", report)
    for name, f in results.items():
        print(f"[audit] {name:10s} backdoor ASR {f['backdoor_asr']:.3f}  MIA AUC "
              f"{f['mia_auc']:.3f}  OOD AUROC {f['ood_auroc']:.3f}")
    return report


if __name__ == "__main__":
    run_stage(audit)
