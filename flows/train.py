"""Stage `train`: the original model (retain + partly poisoned forget) and the retrained
reference (retain only), each a Ray Train job. Writes models/original.pt, models/retrained.pt.

The original depends on the training data as a whole, not on how it splits into forget and
retain: when a new deletion request only moves samples from retain to forget (a scheduled
cycle, forget.kind=ledger), the original on disk (a persistent DVC out) is kept if its
fingerprint (images, poisoned flags, model/train params, seed) matches, and only the
retrained reference is trained again.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from components.params import Params
from flows.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    job_sets,
    load_sets,
    load_splits,
    model_shape,
    read_json,
    read_model_file,
    run_stage,
    save_model,
    stage_flow,
    stage_params,
    write_json,
)
from flows.jobs import run_job
from flows.tracking import log_figures, stage_run

SECTIONS = ("data", "forget", "backdoor", "model", "train", "ray")


def fingerprint(data: dict[str, np.ndarray], params: Params) -> str:
    """What the original's weights depend on: its training images in a canonical order, their
    poisoned flags, the model and training params and the seed."""
    h = hashlib.sha256()
    rows = np.ascontiguousarray(data["images"].reshape(len(data["images"]), -1))
    order = np.argsort(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(), kind="stable")
    h.update(np.ascontiguousarray(data["images"][order]).tobytes())
    h.update(data["poisoned"][order].tobytes())
    h.update(json.dumps([params.seed, params.model.model_dump(mode="json"),
                         params.train.model_dump(mode="json"), params.ray.num_workers]).encode())
    return h.hexdigest()


def reusable(name: str, print_hash: str) -> dict | None:
    """The info of the model file on disk if it was trained on exactly this (else None)."""
    path = MODEL_DIR / f"{name}.pt"
    if not path.exists():
        return None
    info = read_model_file(path)["info"]
    return info if info.get("fingerprint") == print_hash else None


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
        data = job_sets(sets, train=parts)
        print_hash = fingerprint(data["train"], params)
        kept = reusable(name, print_hash) if name == "original" else None
        if kept is not None:
            report[name] = {**kept, "reused": True}
            print(f"[train] {name}: same training data and params as models/{name}.pt "
                  f"({print_hash[:12]}): kept, not trained again")
            continue
        tags = {"forget_split_hash": split_hash, "model_role": name}
        with stage_run(f"train-{name}", params, SECTIONS, tags) as run:
            t0 = time.perf_counter()
            info, state = run_job("train", name, params, shape, data, run.info.run_id)
            info["stage_seconds"] = time.perf_counter() - t0
            info["fingerprint"] = print_hash
            save_model(MODEL_DIR / f"{name}.pt", state, params, shape, info)
            log_figures("", info)
        report[name] = {**info, "mlflow_run_id": run.info.run_id}
        print(f"[train] {name}: {info['epochs']} epochs, loss {info['final_loss']:.5f}, "
              f"{info['train_seconds']:.0f} s training, {info['stage_seconds']:.0f} s in all")
    write_json(REPORT_DIR / "train.json", report)
    return report


if __name__ == "__main__":
    run_stage(train)
