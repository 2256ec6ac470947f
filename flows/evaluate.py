"""Stage `evaluate`: PSNR / SSIM on forget, retain and test for every model (Ray tasks), merged
with the audit into reports/metrics.json with the retrain gap and the cost ratio.
"""

from __future__ import annotations

from components.audits import eval_pairs
from components.metrics import quality_metrics, retrain_gap
from flows.audit import MODELS
from flows.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    eval_images,
    eval_splits,
    load_sets,
    load_splits,
    read_json,
    read_model_file,
    run_stage,
    stage_flow,
    stage_params,
    task_spec,
    write_json,
)
from flows.jobs import map_models
from flows.summary import print_summary
from flows.tracking import log_figures, stage_run

SECTIONS = ("evaluate",)
QUALITY_SETS = ("forget", "retain", "test")


@stage_flow("evaluate")
def evaluate() -> dict:
    params = stage_params()
    sets = load_sets(params)
    splits = load_splits(sets)
    chosen = eval_splits(splits, params.evaluate.max_samples, params.seed)
    data = eval_pairs(eval_images({k: chosen[k] for k in QUALITY_SETS}, sets), task_spec(params))
    blobs = {m: read_model_file(MODEL_DIR / f"{m}.pt") for m in MODELS}
    audit = read_json(REPORT_DIR / "audit.json")["models"]
    train = read_json(REPORT_DIR / "train.json")
    unlearn_s = sum(read_json(REPORT_DIR / f"{s}.json")["train_seconds"]
                    for s in ("decouple", "finetune"))
    split_hash = read_json(SPLIT_DIR / "summary.json")["hashes"]["forget"]
    with stage_run("evaluate", params, SECTIONS, {"forget_split_hash": split_hash}):
        quality = map_models(quality_metrics, blobs, (data,), params)
        blocks = {m: {**quality[m], **audit[m]} for m in MODELS}
        for m in MODELS:
            blocks[m]["retrain_gap"] = retrain_gap(blocks[m], blocks["retrained"])
        metrics = {
            **blocks,
            "method": params.unlearn.method,
            "retrain_gap": blocks["unlearned"]["retrain_gap"],
            "unlearn_seconds": unlearn_s,
            "retrain_seconds": train["retrained"]["train_seconds"],
            "cost_ratio": unlearn_s / train["retrained"]["train_seconds"],
        }
        for m in MODELS:
            log_figures(m, blocks[m])
        log_figures("", {k: metrics[k] for k in ("retrain_gap", "cost_ratio")})
    write_json(REPORT_DIR / "metrics.json", metrics)
    print_summary(metrics)
    return metrics


if __name__ == "__main__":
    run_stage(evaluate)
