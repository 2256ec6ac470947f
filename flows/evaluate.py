"""Stage `evaluate`: PSNR / SSIM on forget, retain and test for every model (Ray tasks), the
distribution metrics on forget and retain (domain Fréchet distance and embedding cosine on a
classifier trained here once; FID with evaluate.fid), merged with the audit into
reports/metrics.json with the retrain gap and the cost ratio.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from components.audits import eval_pairs
from components.data import ImageSet
from components.metrics import load_judge, make_judge, quality_metrics, retrain_gap, save_judge
from components.splits import Split, file_sha256
from flows.audit import MODELS
from flows.ops.summary import print_summary
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
from flows.runtime.scores import kept, kept_line, scored, stage_key
from flows.runtime.tracking import log_figures, stage_run

# the params it reads (logged on its run)
KEYS = ("data", "evaluate", "model.task", "model.inpaint_box", "model.outpaint_border")
QUALITY_SETS = ("forget", "retain", "test")
JUDGED_SETS = ("forget", "retain")  # Li et al.: retain FID ≈ original's, forget FID up
JUDGE = "judge"  # the domain classifier's own entry among the kept figures (its accuracy)


def classifier_data(splits: dict[str, Split], sets: dict[str, ImageSet], limit: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` training images (retain + forget, a seeded draw) and their labels: what
    the domain classifier learns from."""
    idx = np.concatenate([splits["retain"].indices, splits["forget"].indices])
    if len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, limit, replace=False))
    return sets["train"].images[idx], sets["train"].labels[idx]


@stage_flow("evaluate")
def evaluate() -> dict:
    params = stage_params()
    sets = load_sets(params)
    splits = load_splits(sets)
    chosen = eval_splits(splits, params.evaluate.max_samples, params.seed)
    data = eval_pairs(eval_images({k: chosen[k] for k in QUALITY_SETS}, sets), task_spec(params))
    blobs = {m: read_model_file(MODEL_DIR / f"{m}.pt") for m in MODELS}
    if reference_model(blobs["retrained"]) is None:  # audit.reference: none
        del blobs["retrained"]
    models = list(blobs)
    audit = read_json(REPORT_DIR / "audit.json")["models"]
    train = read_json(REPORT_DIR / "train.json")
    phases = [read_json(REPORT_DIR / f"{s}.json") for s in ("decouple", "finetune")]
    unlearn_s = sum(p["train_seconds"] for p in phases)
    unlearn_grads = [p.get("sample_grads") for p in phases]
    retrained = train["retrained"] if "retrained" in blobs else {}
    # sample-gradient evaluations (flows/runtime/worker.py): the cost ratio that does not move with
    # the machine's load; None where a record predates it, or where nothing was retrained
    grads = [*unlearn_grads, retrained.get("sample_grads")]
    summary = read_json(SPLIT_DIR / "summary.json")
    images, labels = classifier_data(splits, sets, params.evaluate.classifier.max_samples,
                                     params.seed)
    classes = max(len(sets["train"].class_names), int(labels.max()) + 1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    key = stage_key("evaluate", params, KEYS, summary["hashes"])
    judge_kept = []

    def score(names: list[str]) -> dict[str, dict]:
        # the judge depends on the key's inputs alone: kept, it is not trained again when only
        # a model changed
        judge, was_kept = kept(key, JUDGE, lambda: make_judge(
            images, labels, classes, {s: data[s][1] for s in JUDGED_SETS}, params.evaluate,
            params.seed, device), save_judge, load_judge)
        judge_kept.append(was_kept)
        # map_models calls fn(model, *shared, device): the judge goes in by keyword
        out = map_models(functools.partial(quality_metrics, judge=judge),
                         {n: blobs[n] for n in names if n != JUDGE}, (data,), params)
        return {**out, JUDGE: {"train_accuracy": judge.classifier.train_accuracy}}

    hashes = {m: file_sha256(MODEL_DIR / f"{m}.pt") for m in models}
    with stage_run("evaluate", params, KEYS, {"forget_split_hash": summary["hashes"]["forget"]},
                   splits=summary):
        # the judge is trained again only when some model is scored again
        quality, fresh = scored(key, {**hashes, JUDGE: JUDGE}, score)
        print(kept_line("evaluate", models, fresh)
              + ("; kept the domain classifier" if judge_kept == [True] else ""))
        blocks = {m: {**quality[m], **audit[m]} for m in models}
        for m in models:  # without a reference there is no gap to it (null in the JSON)
            blocks[m]["retrain_gap"] = retrain_gap(blocks[m], blocks["retrained"]) \
                if "retrained" in blocks else None
        retrain_s = retrained.get("train_seconds")
        metrics = {
            **blocks,
            "method": params.unlearn.method,
            "reference": params.audit.reference,
            "retrain_gap": blocks["unlearned"]["retrain_gap"],
            "unlearn_seconds": unlearn_s,
            "unlearn_sample_grads": None if None in unlearn_grads else sum(unlearn_grads),
            "retrain_seconds": retrain_s,
            "retrain_sample_grads": grads[2],
            "cost_ratio": unlearn_s / retrain_s if retrain_s else None,
            "cost_ratio_grads": None if None in grads else (grads[0] + grads[1]) / grads[2],
            "classifier_accuracy": quality[JUDGE]["train_accuracy"],
        }
        for m in models:
            log_figures(m, blocks[m])
        log_figures("", metrics)
    write_json(REPORT_DIR / "metrics.json", metrics)
    print_summary(metrics)
    return metrics


if __name__ == "__main__":
    run_stage(evaluate)
