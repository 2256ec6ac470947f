"""Stage `audit`: backdoor attack success rate, loss-based membership inference and the OOD
score for the original, decoupled, unlearned and retrained models (Ray tasks, one per model).

MIA and OOD use the clean forget samples; the poisoned ones are the backdoor audit's. For
class forgetting the MIA reference is held-out data of the same classes, so that the AUC
measures membership and not class difficulty (flows.runtime.common.eval_splits).
"""

from __future__ import annotations

from components.audits import audit_model, eval_pairs
from components.splits import file_sha256, whole_class_share
from components.verdict import audit_verdict
from flows.runtime.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    eval_images,
    eval_splits,
    load_sets,
    load_splits,
    read_json,
    read_model_file,
    reference_model,
    run_stage,
    stage_flow,
    stage_params,
    task_spec,
    write_json,
)
from flows.runtime.jobs import map_models
from flows.runtime.scores import kept_line, scored, stage_key
from flows.runtime.tracking import log_figures, stage_run

MODELS = ("original", "decoupled", "unlearned", "retrained")
# the params it reads (logged on its run)
KEYS = ("data", "audit", "backdoor", "model.task", "model.inpaint_box", "model.outpaint_border")
AUDIT_SETS = ("forget", "retain", "heldout", "test", "triggered")


@stage_flow("audit")
def audit() -> dict:
    params = stage_params()
    sets = load_sets(params)
    spec = task_spec(params)
    splits = load_splits(sets)
    chosen = eval_splits(splits, params.audit.max_samples, params.seed)
    data = eval_pairs(eval_images({k: chosen[k] for k in AUDIT_SETS}, sets), spec)
    blobs = {m: read_model_file(MODEL_DIR / f"{m}.pt") for m in MODELS}
    if reference_model(blobs["retrained"]) is None:  # audit.reference: none
        del blobs["retrained"]
    # which files were judged: `register` refuses a model whose hash is not this one
    hashes = {m: file_sha256(MODEL_DIR / f"{m}.pt") for m in blobs}
    summary = read_json(SPLIT_DIR / "summary.json")
    with stage_run("audit", params, KEYS, {"forget_split_hash": summary["hashes"]["forget"]},
                   splits=summary) as run:
        results, fresh = scored(
            stage_key("audit", params, KEYS, summary["hashes"]), hashes,
            lambda names: map_models(audit_model, {n: blobs[n] for n in names},
                                     (data, spec, params.backdoor.threshold), params))
        print(kept_line("audit", list(results), fresh))
        for name, figures in results.items():
            log_figures(name, figures)
        # what the reference-free verdict reads besides the model's own figures: has a
        # forgotten class moved away from the retain set since the original
        results["unlearned"].update(
            original_ood_auroc=results["original"]["ood_auroc"],
            whole_class_share=whole_class_share(splits["forget"], splits["retain"]))
        verdict = audit_verdict(results["unlearned"], results.get("retrained"), params.audit)
        log_figures("", {"audit_passed": int(verdict["passed"])})
    report = {"models": results, "verdict": verdict, "sha256": hashes,
              "audit_params": params.audit.model_dump(mode="json"),
              "samples": {k: len(v[0]) for k, v in data.items()}, "mlflow_run_id": run.info.run_id}
    write_json(REPORT_DIR / "audit.json", report)
    for name, f in results.items():
        print(f"[audit] {name:10s} backdoor ASR {f['backdoor_asr']:.3f}  MIA AUC "
              f"{f['mia_auc']:.3f}  MIA efficacy {f['mia_efficacy']:.3f}  OOD AUROC "
              f"{f['ood_auroc']:.3f}")
    print(f"[audit] verdict: {'PASSED' if verdict['passed'] else 'FAILED'}"
          + (f" ({', '.join(verdict['failed'])})" if verdict["failed"] else "")
          + (" against the retrained reference" if "retrained" in results else
             " (reference-free: against held-out data and the model's own figures)"))
    return report


if __name__ == "__main__":
    run_stage(audit)
