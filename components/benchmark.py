"""One benchmark case (a scenario and a seed): train the original and the retrained reference,
run every method from the original, audit and measure every model against the reference.

The pipeline's stages do the same work one model at a time; a case does it in one job so a
2-core machine pays Ray Train's start-up (15-35 s) once per case instead of once per method.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from components.audits import audit_model, eval_pairs
from components.methods import UnlearnData, run_method
from components.metrics import quality_metrics, retrain_gap
from components.models import build_model
from components.params import Params, merge_tree, override
from components.tasks import TaskSpec, build_pairs
from components.training import ComputeCounter, JobContext, train_model

Pairs = tuple[torch.Tensor, torch.Tensor]
# the `retrain` row is a second retraining with another seed: its gap to the reference is
# the noise floor every other method is read against
RETRAIN_SEED_OFFSET = 1000


@dataclass
class Case:
    """Everything a case trains and measures on (CPU tensors).

    Attributes:
        train: retain ∪ forget pairs, as the original saw them (poisoned ones included).
        retain, forget, heldout: the unlearning data.
        audit: sets for components.audits.audit_model.
        quality: sets for components.metrics.quality_metrics.
        spec: task and backdoor geometry.
        shape: (channels, side).
    """

    train: Pairs
    retain: Pairs
    forget: Pairs
    heldout: Pairs
    audit: dict[str, Pairs]
    quality: dict[str, Pairs]
    spec: TaskSpec
    shape: tuple[int, int]


def make_case(sets: dict[str, dict[str, np.ndarray]], eval_images: dict[str, np.ndarray],
              spec: TaskSpec, shape: tuple[int, int]) -> Case:
    """Build a Case from uint8 images: `sets` holds train / retain / forget / heldout with
    their poisoned flags; `eval_images` the audit and quality sets."""
    pairs = {k: build_pairs(v["images"], v["poisoned"], spec) for k, v in sets.items()}
    scored = eval_pairs(eval_images, spec)
    return Case(
        train=pairs["train"], retain=pairs["retain"], forget=pairs["forget"],
        heldout=pairs["heldout"],
        audit={k: scored[k] for k in ("forget", "retain", "heldout", "test", "triggered")},
        quality={k: scored[k] for k in ("forget", "retain", "test")},
        spec=spec, shape=shape,
    )


def measure(model: nn.Module, case: Case, threshold: float, device: torch.device) -> dict:
    """Every audit and quality figure of one model."""
    return {**quality_metrics(model, case.quality, device),
            **audit_model(model, case.audit, case.spec, threshold, device)}


def _inner(ctx: JobContext) -> JobContext:
    """A context for an inner loop: its progress lines, no checkpoints of its own."""
    return replace(ctx, resume=None, report=lambda metrics, state: None)


def _train(case_pairs: Pairs, params: Params, case: Case, ctx: JobContext, seed: int,
           label: str) -> tuple[nn.Module, dict]:
    """Train from scratch; the cost measured as every method's is: wall seconds of the whole
    call (the `retrain` row's cost ratio read 0.72 when the reference's time was the loop's
    own sum of epochs and the row's the wall time around run_method) and sample gradients."""
    torch.manual_seed(seed)
    model = build_model(params.model, *case.shape).to(ctx.device)
    t0 = time.perf_counter()
    with ComputeCounter(model) as compute:
        train_model(model, *case_pairs, params.train, _inner(ctx), seed, label=label)
    return model, {"seconds": time.perf_counter() - t0, "sample_grads": compute.sample_grads}


def run_case(case: Case, params: Params, methods: list[str], ctx: JobContext) -> dict:
    """Run one case; checkpoints after each model so a restarted job resumes where it was.

    Args:
        case: the data of this scenario and seed.
        params: the scenario's params (seed included).
        methods: the methods (or benchmark.variants) to run from the original.
        ctx: the job context (device, resume state, reporting).

    Returns:
        {"original": metrics, "<method>": metrics + cost_ratio (wall seconds) +
         cost_ratio_grads (sample-gradient evaluations) + unlearn_seconds, ...,
         "reference": metrics, "retrain_seconds": s, "retrain_sample_grads": n}, every block
        with its retrain_gap.
    """
    threshold = params.backdoor.threshold
    state = ctx.resume or {"results": {}}
    results = state["results"]
    if "original" not in state:
        original, _ = _train(case.train, params, case, ctx, params.seed, "original")
        reference, cost = _train(case.retain, params, case, ctx, params.seed, "reference")
        state.update(original=original.state_dict(), reference=reference.state_dict(),
                     retrain_seconds=cost["seconds"], retrain_sample_grads=cost["sample_grads"])
        results["reference"] = measure(reference, case, threshold, ctx.device)
        results["original"] = measure(original, case, threshold, ctx.device)
        ctx.report({"models": 2}, state)
    original = build_model(params.model, *case.shape).to(ctx.device)
    original.load_state_dict(state["original"])
    frozen = copy.deepcopy(original).eval().requires_grad_(False)
    data = UnlearnData(case.forget, case.retain, case.heldout, frozen)
    for name in methods:
        if name in results:
            continue
        variant = params.benchmark.variants.get(name)
        method = variant.method if variant else name
        seed = params.seed + (RETRAIN_SEED_OFFSET if method == "retrain" else 0)
        run_params = override(params, merge_tree(variant.params if variant else {}, {
            "seed": seed, "unlearn": {"method": method}}))
        torch.manual_seed(seed)
        model = copy.deepcopy(original).train()
        t0 = time.perf_counter()
        with ComputeCounter(model, frozen) as compute:
            info = run_method(model, data, run_params, _inner(ctx))
        seconds = time.perf_counter() - t0
        results[name] = {**measure(model, case, threshold, ctx.device),
                         "unlearn_seconds": seconds,
                         "cost_ratio": seconds / state["retrain_seconds"],
                         "cost_ratio_grads": compute.sample_grads / state["retrain_sample_grads"],
                         "steps": float(info.get("steps", 0))}
        ctx.say(f"[{name}] done in {seconds:.1f} s")
        ctx.report({"models": len(results)}, state)
    for block in results.values():
        block["retrain_gap"] = retrain_gap(block, results["reference"])
    results["original"].update(cost_ratio=0.0, cost_ratio_grads=0.0, unlearn_seconds=0.0)
    return {**results, "retrain_seconds": state["retrain_seconds"],
            "retrain_sample_grads": state["retrain_sample_grads"]}


def summarize(cases: list[dict], names: list[str], keys: list[str]) -> dict:
    """Mean and std over seeds of every metric of every row.

    Args:
        cases: run_case results of one scenario, one per seed.
        names: rows to summarise.
        keys: metrics to summarise.

    Returns:
        {name: {metric: {"mean", "std"}}}.
    """
    out: dict[str, dict] = {}
    for name in names:
        out[name] = {}
        for key in keys:
            values = np.array([c[name][key] for c in cases if key in c.get(name, {})], float)
            if len(values):
                out[name][key] = {"mean": float(values.mean()), "std": float(values.std())}
    return out
