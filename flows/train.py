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
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException

from components.audits import eval_pairs
from components.metrics import learned_check
from components.models import model_file_problems, model_from_file
from components.params import Params
from components.review import model_keys
from components.tasks import to_float
from flows.runtime.common import (
    MODEL_DIR,
    NO_REFERENCE,
    REPORT_DIR,
    SPLIT_DIR,
    StageError,
    eval_images,
    eval_splits,
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
    task_spec,
    write_json,
)
from flows.runtime.jobs import run_job
from flows.runtime.tracking import client, log_figures, stage_run
from flows.start import champion_weights

# the params it reads besides the model family's (logged on its runs)
KEYS = ("data", "backdoor", "train", "audit.reference", "ray")


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
    summary = read_json(SPLIT_DIR / "summary.json")
    split_hash = summary["hashes"]["forget"]
    # the original sees the forget set as it was trained (poisoned samples included);
    # the retrained reference never sees it: the gold standard of unlearning, trained only
    # where the audit reads against it
    plan = {"original": [splits["retain"], splits["forget"]], "retrained": [splits["retain"]]}
    report = {}
    if params.model.source != "train":
        report["original"] = import_original(params, shape)
        del plan["original"]
    if params.audit.reference == "none":
        save_model(MODEL_DIR / "retrained.pt", {}, params, shape, {NO_REFERENCE: True})
        report["retrained"] = {NO_REFERENCE: True}
        print("[train] retrained: none (audit.reference: none; the audit is reference-free)")
        del plan["retrained"]
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
        with stage_run(f"train-{name}", params, (*KEYS, *model_keys(params)), tags,
                       splits=summary) as run:
            t0 = time.perf_counter()
            info, state = run_job("train", name, params, shape, data, run.info.run_id)
            info["stage_seconds"] = time.perf_counter() - t0
            info["fingerprint"] = print_hash
            save_model(MODEL_DIR / f"{name}.pt", state, params, shape, info)
            log_figures("", info)
        report[name] = {**info, "mlflow_run_id": run.info.run_id}
        print(f"[train] {name}: {info['epochs']} epochs, loss {info['final_loss']:.5f}, "
              f"{info['train_seconds']:.0f} s training, {info['stage_seconds']:.0f} s in all")
    report["original"]["learned"] = check_learned(params, sets, splits)
    write_json(REPORT_DIR / "train.json", report)
    if not report["original"]["learned"]["passed"]:
        raise StageError(not_learned(report["original"]["learned"]))
    return report


def import_original(params: Params, shape: tuple[int, int]) -> dict:
    """models/original.pt from `model.source`, a model file or a version of the project's
    MLflow registry, checked against params; nothing is trained."""
    source = params.model.source
    if source.startswith("models:/"):
        blob = registry_model_file(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise StageError(f"model.source: {source} is not a file (a model file, "
                             "models:/<name>@<alias>, or train)")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, or pickled code (refused by weights_only)
            raise StageError(f"model.source: {source} cannot be read as a model file "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                             "wrap a plain state dict with `unlearn import-model`") from None
    problems = model_file_problems(blob, params.model, shape)
    if problems:
        raise StageError(f"model.source: {source} does not fit params: " + "; ".join(problems))
    info = {**blob.get("info", {}), "source": source, "imported": True}
    save_model(MODEL_DIR / "original.pt", blob["state_dict"], params, shape, info)
    print(f"[train] original: imported from {source}, not trained")
    return info


def registry_model_file(uri: str) -> dict:
    """The model file behind a version of this project's registry (models:/<name>/<version>
    or models:/<name>@<alias>): the checkpoint `register` logged with it, hash-checked."""
    name, _, which = uri.removeprefix("models:/").partition("@")
    if not which:
        name, _, which = name.partition("/")
    try:
        version = client().get_model_version_by_alias(name, which) if "@" in uri else \
            client().get_model_version(name, which)
    except MlflowException as exc:
        raise StageError(f"model.source: {uri}: no such registered version "
                         f"({str(exc).splitlines()[0][:200]})") from None
    return champion_weights(name, {"version": int(version.version), "run_id": version.run_id})


def check_learned(params: Params, sets: dict, splits: dict) -> dict:
    """components.metrics.learned_check of models/original.pt on held-out pairs (the
    audits' sample of them), against the mean of its training images."""
    # held-out samples of every class (the audit's "triggered" sample, here without the trigger)
    every_class = eval_splits(splits, params.audit.max_samples, params.seed)["triggered"]
    held = eval_pairs(eval_images({"heldout": every_class}, sets), task_spec(params))["heldout"]
    images = np.concatenate([sets["train"].images[s.indices]
                             for s in (splits["retain"], splits["forget"])])
    mean = to_float(images).mean(0)
    model = model_from_file(read_model_file(MODEL_DIR / "original.pt"))
    return learned_check(model, held, mean, task_spec(params), params.train.min_gain_db,
                         torch.device("cpu"))


def not_learned(check: dict) -> str:
    best = max(check["baselines"], key=check["baselines"].get)
    return (f"the original model did not learn its task: held-out PSNR {check['psnr']:.2f} dB, "
            f"{check['baselines'][best]:.2f} dB for the {best} (it must be "
            f"{check['margin_db']:g} dB better: train.min_gain_db); an audit of it would "
            "mean nothing. Train longer (train.epochs, train.min_steps) or check the data "
            "and model.task")


if __name__ == "__main__":
    run_stage(train)
