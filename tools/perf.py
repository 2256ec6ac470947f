"""`make bench-perf`: what the orchestration costs on top of the work, what unlearning costs
next to retraining, and how unlearning grows with the forget set -> reports/perf.{json,md,png}.

Everything is measured side by side in this one process, on this machine, `perf.repeats`
times (median and range reported):
- overhead: the default unlearning job (the seed method's ascent, then its retention; same
  data, steps and seed) as the pipeline runs it (a Prefect flow, two jobs, MLflow logging and
  checkpoints) and as a plain PyTorch loop in this process (flows.runtime.worker.run_loop, the very
  code a job runs). The pipeline runs it both ways `ray.job_mode` offers: local (Ray Train's
  local mode in this process, the default's choice for these jobs) and workers (two Ray Train
  jobs with their own processes). Both start from the same arrays in memory: reading the
  dataset and checking the manifests' sha256 is the stages' cost on both sides, so it is left
  out of both. Ray and Prefect start once per process (a scheduled service or a Ray cluster
  keeps them running): that is reported apart, and in overhead_ratio_cold. fixed_overhead_s:
  per stage, the pipeline's wall time less the loops' compute.
- cost: that unlearning against retraining from scratch on the retain set, both through the
  pipeline (cost_ratio), both as plain loops (cost_ratio_plain), and in sample-gradient
  evaluations (cost_ratio_grads: deterministic, whatever the machine's load); the retraining's own
  pipeline / plain ratio shows how the fixed overhead weighs on a longer job.
- scaling: plain unlearning and retraining time for forget sets of `perf.forget_fractions`
  of the training data (forget.kind=sample), the retention budget fixed.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any

import ray
import torch
from prefect import flow

from components.methods.base import RETENTION_PLAN
from components.models import cpu_state
from components.params import Params, override
from components.perf_report import (
    JOB_PARTS,
    add_parts,
    job_breakdown,
    plot_scaling,
    spread,
    to_markdown,
)
from components.review import method_keys
from components.training import JobContext, seed_everything
from flows.decouple import forget_job
from flows.finetune import retain_job
from flows.runtime.common import (
    REPORT_DIR,
    USER_ERRORS,
    StageError,
    draw_splits,
    job_sets,
    load_sets,
    model_shape,
    stage_params,
    write_json,
)
from flows.runtime.jobs import connect, job_payload, run_job
from flows.runtime.progress import progress_bar
from flows.runtime.tracking import log_figures, stage_run
from flows.runtime.worker import max_rss_mb, run_loop

# the ways the unlearning job runs through the pipeline, side by side (ray.job_mode); the
# first is the default's (auto picks local for it on one machine)
MODES = ("local", "workers")
STAGES = 2  # the unlearning job's stages, one job each: decouple, finetune
# the cases the pipeline flows run, by name: Prefect records a flow's parameters, so the
# arrays stay here and only the name travels
_CASES: dict[str, dict[str, Any]] = {}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def draw_case(params: Params, sets: dict, original: dict | None) -> dict[str, Any]:
    """The job sets of one forget split: forget (ascent), retain (+forget: retention), train."""
    splits = draw_splits(params, sets)
    return {
        "params": params, "shape": model_shape(sets), "original": original,
        "forget": job_sets(sets, forget=[splits["forget"]], retain=[splits["retain"]],
                           heldout=[splits["heldout"]]),
        "retain": job_sets(sets, retain=[splits["retain"]], forget=[splits["forget"]]),
        "train": job_sets(sets, train=[splits["retain"]]),
        "trainable": job_sets(sets, train=[splits["retain"], splits["forget"]]),
        "forget_samples": len(splits["forget"]),
        "sets": sets, "splits": splits,
    }


def unlearn_plain(case: dict[str, Any]) -> tuple[float, dict]:
    """The seed method's two phases as plain loops in this process; (seconds, ascent info)."""
    params, shape, original = case["params"], case["shape"], case["original"]
    ctx = JobContext(device=_device(), log=lambda line: None)
    t0 = time.perf_counter()
    seed_everything(params.seed)
    info, model = run_loop("forget", job_payload("plain-decouple", params, shape, case["forget"],
                                                 init=original, original=original),
                           params, ctx, lambda m: m.to(ctx.device))
    seed_everything(params.seed)
    run_loop("retain", job_payload("plain-finetune", params, shape, case["retain"],
                                   init=cpu_state(model), original=original,
                                   plan=info.pop(RETENTION_PLAN, None)),
             params, ctx, lambda m: m.to(ctx.device))
    return time.perf_counter() - t0, info


def train_plain(case: dict[str, Any], part: str) -> tuple[float, dict, dict]:
    """Train from scratch on the case's `part` ("train": retain = retraining; "trainable":
    the original) as a plain loop; (seconds, info, weights)."""
    params = case["params"]
    ctx = JobContext(device=_device(), log=lambda line: None)
    t0 = time.perf_counter()
    seed_everything(params.seed)
    info, model = run_loop("train", job_payload(f"plain-{part}", params, case["shape"],
                                                {"train": case[part]["train"]}),
                           params, ctx, lambda m: m.to(ctx.device))
    return time.perf_counter() - t0, info, cpu_state(model)


@flow(name="perf-unlearn", validate_parameters=False)
def unlearn_pipeline(name: str, mode: str) -> dict:
    """The unlearning job through the `decouple` and `finetune` stages' own job calls
    (flows.decouple.forget_job, flows.finetune.retain_job), run the `ray.job_mode` way `mode`
    says (local: in this process; workers: Ray Train jobs)."""
    case = _CASES[name]
    params = override(case["params"], {"ray": {"job_mode": mode}})
    shape, original = case["shape"], case["original"]
    parts, rss = [], []
    keys = (*method_keys(params.unlearn.method, retention=True), "ray")
    sets, splits = case["sets"], case["splits"]
    with stage_run("perf-unlearn", params, keys, {"method": params.unlearn.method}) as run:
        t0 = time.time()
        info, state = forget_job(params, sets, splits, splits["forget"], original, shape,
                                 run.info.run_id)
        parts.append(job_breakdown(t0, time.time(), info))
        plan = info.pop(RETENTION_PLAN, None)
        t0 = time.time()
        info_r, _, _ = retain_job(params, sets, splits, splits["forget"], state, plan, original,
                                  shape, run.info.run_id)
        parts.append(job_breakdown(t0, time.time(), info_r))
        rss += [info["worker_max_rss_mb"], info_r["worker_max_rss_mb"]]
        log_figures("", {"steps": info.get("steps", 0), **add_parts(parts)})
    return {"parts": add_parts(parts), "worker_max_rss_mb": max(rss),
            "sample_grads": info["sample_grads"] + info_r["sample_grads"]}


@flow(name="perf-retrain", validate_parameters=False)
def retrain_pipeline(name: str) -> dict:
    """Retraining on the retain set as the `train` stage runs it (a Ray Train job)."""
    case = _CASES[name]
    params = case["params"]
    with stage_run("perf-retrain", params, ("train", "ray"), {"method": "retrain"}) as run:
        t0 = time.time()
        info, _ = run_job("train", "perf-retrain", params, case["shape"],
                          {"train": case["train"]["train"]}, run.info.run_id)
        parts = job_breakdown(t0, time.time(), info)
        log_figures("", parts)
    return {"parts": parts, "worker_max_rss_mb": info["worker_max_rss_mb"],
            "sample_grads": info["sample_grads"]}


@flow(name="perf-warmup")
def _warmup() -> None:
    return None


def _timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _say(line: str) -> None:
    print(f"[perf] {line}", flush=True)


def bench_perf(params: Params) -> dict:
    """Run every measurement; returns the report (also written to reports/perf.*)."""
    sets = load_sets(params)
    base = draw_case(params, sets, None)
    total = 1 + params.perf.repeats * (len(MODES) + 3) + len(params.perf.forget_fractions)
    with progress_bar("bench-perf", total) as steps:
        _say(f"training the original ({params.train.epochs} epochs, plain loop) ...")
        with steps.step("original (plain)"):
            train_s, train_info, original = train_plain(base, "trainable")
        base["original"] = original
        images_per_s = len(base["trainable"]["train"]["images"]) * params.train.epochs / \
            train_info["train_seconds"]
        ray_start_s, _ = _timed(connect, params)
        prefect_start_s, _ = _timed(_warmup)
        _say(f"original {train_s:.0f} s ({images_per_s:.0f} images/s); Ray start "
             f"{ray_start_s:.1f} s, Prefect start {prefect_start_s:.1f} s")
        _CASES["default"] = base
        plain, plain_retrain, retrain, rss = [], [], [], []
        pipe = {mode: [] for mode in MODES}
        parts = {mode: [] for mode in MODES}
        grads = {}
        for r in range(params.perf.repeats):
            tag = f"repeat {r + 1}/{params.perf.repeats}"
            with steps.step(f"{tag}: unlearning (plain)"):
                plain.append(unlearn_plain(base)[0])
            for mode in MODES:
                with steps.step(f"{tag}: unlearning (pipeline, {mode})"):
                    pipe_s, out = _timed(unlearn_pipeline, "default", mode)
                pipe[mode].append(pipe_s)
                parts[mode].append({"flow_s": pipe_s - sum(out["parts"].values()),
                                    **out["parts"]})
                rss.append(out["worker_max_rss_mb"])
                grads["unlearn"] = out["sample_grads"]
            with steps.step(f"{tag}: retraining (plain)"):
                plain_retrain.append(train_plain(base, "train")[0])
            with steps.step(f"{tag}: retraining (pipeline)"):
                retrain_s, out_r = _timed(retrain_pipeline, "default")
            retrain.append(retrain_s)
            grads["retrain"] = out_r["sample_grads"]
            rss.append(out_r["worker_max_rss_mb"])
            _say(f"{tag}: unlearning plain {plain[-1]:.1f} s, "
                 + ", ".join(f"pipeline ({m}) {pipe[m][-1]:.1f} s" for m in MODES)
                 + f"; retraining plain {plain_retrain[-1]:.1f} s, pipeline {retrain_s:.1f} s")
        scaling = []
        for fraction in params.perf.forget_fractions:
            # the trainable set does not depend on the forget split (splits.py draws the
            # held-out set first), so the original above is the original of every fraction
            case = draw_case(override(params, {"forget": {"kind": "sample",
                                                          "fraction": fraction}}),
                             sets, original)
            with steps.step(f"scaling: forget {fraction:.0%}"):
                unlearn_s, info = unlearn_plain(case)
                retrain_s, _, _ = train_plain(case, "train")
            scaling.append({"forget_fraction": fraction, "forget_samples": case["forget_samples"],
                            "unlearn_s": unlearn_s, "retrain_s": retrain_s,
                            "ascent_steps": info.get("steps", 0)})
            _say(f"forget {fraction:.0%} ({case['forget_samples']} samples): unlearn "
                 f"{unlearn_s:.1f} s, retrain {retrain_s:.1f} s")
    once = {"local": prefect_start_s, "workers": ray_start_s + prefect_start_s}

    def by_mode(mode: str) -> dict:
        # per stage: the pipeline's wall time less the loops' compute, i.e. what the
        # orchestration adds to each stage
        fixed = [(s - p["compute_s"]) / STAGES for s, p in zip(pipe[mode], parts[mode],
                                                                 strict=True)]
        return {
            "overhead_ratio": spread([p / q for p, q in zip(pipe[mode], plain, strict=True)]),
            "overhead_ratio_cold": spread([(p + once[mode]) / q
                                           for p, q in zip(pipe[mode], plain, strict=True)]),
            "cost_ratio": spread([p / r for p, r in zip(pipe[mode], retrain, strict=True)]),
            "fixed_overhead_s": spread(fixed),
            "pipeline_s": spread(pipe[mode]),
            "breakdown": {k: spread([p[k] for p in parts[mode]])["median"]
                          for k in ("flow_s", *JOB_PARTS)},
        }

    modes = {mode: by_mode(mode) for mode in MODES}
    default = modes[MODES[0]]
    return {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else "no GPU (CPU)", "torch": torch.__version__, "ray": ray.__version__},
        "repeats": params.perf.repeats,
        "job_mode": MODES[0],
        "overhead_ratio": default["overhead_ratio"],
        "overhead_ratio_cold": default["overhead_ratio_cold"],
        "fixed_overhead_s": default["fixed_overhead_s"],
        "overhead_ratio_retrain": spread([p / q for p, q in zip(retrain, plain_retrain,
                                                                 strict=True)]),
        "cost_ratio": default["cost_ratio"],
        "cost_ratio_plain": spread([p / r for p, r in zip(plain, plain_retrain, strict=True)]),
        # the deterministic one: sample-gradient evaluations, unlearning / retraining (the
        # same for every repeat and any machine load)
        "cost_ratio_grads": grads["unlearn"] / grads["retrain"],
        "sample_grads": grads,
        "modes": modes,
        "overhead": {"plain_s": spread(plain), "pipeline_s": default["pipeline_s"],
                     "ray_start_s": ray_start_s, "prefect_start_s": prefect_start_s,
                     "breakdown": default["breakdown"]},
        "cost": {"unlearn_pipeline_s": default["pipeline_s"],
                 "retrain_pipeline_s": spread(retrain),
                 "retrain_plain_s": spread(plain_retrain)},
        "scaling": scaling,
        "train_images_per_s": images_per_s,
        "memory": {"driver_max_rss_mb": max_rss_mb(), "worker_max_rss_mb": max(rss)},
    }


def main() -> None:
    try:
        report = bench_perf(stage_params())
    except (*USER_ERRORS, StageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    write_json(REPORT_DIR / "perf.json", report)
    (REPORT_DIR / "perf.md").write_text(to_markdown(report))
    plot_scaling(report, REPORT_DIR / "perf.png")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
