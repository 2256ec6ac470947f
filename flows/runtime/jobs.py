"""Ray wiring: connect to Ray, run a component loop as a Ray Train job, run inference as tasks.

A job runs one of two ways (`ray.job_mode`), the same loop function either way:
- workers: a TorchTrainer job with its own worker processes. The data travels once through
  Ray's object store (uint8 images, a few MB to ~50 MB), each worker builds its pairs from
  it, runs the pure-PyTorch loop from `components/`, and reports metrics (logged to MLflow
  from rank 0, as Ray Train V2 wants) and checkpoints (to `ray.storage_path`, local or
  s3://). A restarted worker resumes from the last checkpoint. Starting the controller, its
  helper actors and the worker costs ~13 s per job here (reports/perf.md), whatever it
  computes: right for training (minutes to hours, restarts wanted), not for an unlearning
  job that computes for a few seconds.
- local: Ray Train V2's local mode (ScalingConfig(num_workers=0)): the same train_loop in
  the stage's own process, no Ray started at all, checkpoints written to the same place.
  No restarts (a failed stage is rerun by `dvc repro`). `auto` picks it for one-worker
  unlearning jobs on this machine.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from components.methods.base import RETENTION_PLAN
from components.models import model_from_file
from components.params import Params
from components.training import DivergenceError
from flows.runtime.common import task_spec
from flows.runtime.tracking import tracking_uri
from flows.runtime.worker import STATE_FILE, local_device, score_model, train_loop


def connect(params: Params) -> None:
    """Start or join Ray: RAY_ADDRESS / ray.address for a cluster, else a local Ray."""
    if ray.is_initialized():
        return
    address = params.ray.address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, log_to_driver=True,
             logging_level=logging.WARNING,
             # Ray Train's controller actors warn when the state API is slow to answer on a
             # busy 2-core machine; those warnings are noise, our progress lines are prints
             logging_config=ray.LoggingConfig(log_level="ERROR"))


# what auto runs locally: the jobs that unlearn (seconds of compute, the ones a deletion
# cycle waits for) and the audits' scoring of a few models (map_models)
LOCAL_KINDS = ("forget", "retain", "score")


def job_mode(kind: str, params: Params) -> str:
    """'local' (the loop in this process, Ray Train's local mode) or 'workers' (a Ray Train
    job with its own processes) for a job of this kind, per `ray.job_mode`.

    auto runs locally what a Ray on this machine would run here anyway: one worker, local
    checkpoints, and no cluster address other than this machine's (a remote cluster may
    hold the GPUs this process lacks).
    """
    if params.ray.job_mode != "auto":
        return params.ray.job_mode
    address = params.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
    host = address.split("://")[-1].rsplit(":", 1)[0]
    here = host in ("auto", "local", "127.0.0.1", "localhost") \
        and "://" not in params.ray.storage_path
    one = params.ray.num_workers == 1
    return "local" if kind in LOCAL_KINDS and one and here else "workers"


def _use_gpu(params: Params) -> bool:
    if params.ray.use_gpu == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return bool(params.ray.use_gpu)


def _scaling(params: Params) -> ScalingConfig:
    cpus = params.ray.cpus_per_worker
    if cpus is None:  # share the CPUs Ray sees among the workers
        cpus = max(1.0, ray.cluster_resources().get("CPU", 1) // params.ray.num_workers)
    gpu = _use_gpu(params)
    return ScalingConfig(num_workers=params.ray.num_workers, use_gpu=gpu,
                         resources_per_worker={"CPU": cpus, **({"GPU": 1} if gpu else {})},
                         placement_strategy=params.ray.placement_strategy)


def _root_cause(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (WorkerGroupError -> RayTaskError -> ...)."""
    for failure in getattr(exc, "worker_failures", {}).values():
        return _root_cause(failure)
    cause = getattr(exc, "cause", None) or exc.__cause__
    return _root_cause(cause) if isinstance(cause, BaseException) else exc


def job_payload(label: str, params: Params, shape: tuple[int, int],
                sets: dict[str, dict[str, np.ndarray]], init: dict | None = None,
                original: dict | None = None, plan: dict | None = None,
                **extra: Any) -> dict[str, Any]:
    """What a job's loop receives (run_job's arguments of the same names; run_loop reads it)."""
    return {"params": params.model_dump(mode="json"), "shape": shape, "sets": sets,
            "spec": task_spec(params), "init": init, "original": original,
            "plan": plan, "label": label, **extra}


@task(name="ray-train-job", cache_policy=NO_CACHE)
def run_job(kind: str, label: str, params: Params, shape: tuple[int, int],
            sets: dict[str, dict[str, np.ndarray]], run_id: str | None,
            init: dict | None = None, original: dict | None = None,
            plan: dict | None = None, **extra: Any) -> tuple[dict, dict]:
    """Run one component loop as a Ray Train TorchTrainer job (a Prefect task).

    Args:
        kind: "train", "forget" or "retain" (which loop the workers run); with
            `ray.job_mode` it decides where the loop runs (job_mode).
        label: the job's name in progress lines; with a timestamp, its Ray run name
            (checkpoints go to <storage_path>/<label>-<timestamp>).
        params: all params (the loop's knobs, scaling, storage, failures).
        shape: (channels, side) of the images.
        sets: named image sets with poisoned flags (flows.runtime.common.job_sets).
        run_id: the MLflow run the rank-0 worker logs metrics to.
        init: weights to start from (None: a fresh model).
        original: the original model's weights (the frozen θ0 of unlearning loops).
        plan: the retention plan of a decoupling (its λ_i and memorised residual), for a
            retention that keeps the forget set decoupled.
        extra: further payload entries (a benchmark case's eval images and methods).

    Returns:
        (info, state_dict): the loop's returned figures (with the retention plan under
        RETENTION_PLAN if the loop produced one) and the final weights.
    """
    local = job_mode(kind, params) == "local"
    if local:  # else Ray Train prints a line per report into the stage's log
        logging.getLogger("ray.train").setLevel(logging.WARNING)
    else:
        connect(params)
    payload = job_payload(label, params, shape, sets, init, original, plan, **extra)
    storage = params.ray.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    name = f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = {"kind": kind, "payload": payload if local else ray.put(payload), "run_id": run_id,
              "tracking_uri": tracking_uri(),
              "checkpoint_every": params.ray.checkpoint_every,
              # local mode keeps no checkpoint of its own: the loop writes them where Ray would
              "local_dir": str(Path(storage) / name) if local else None}
    trainer = TorchTrainer(
        train_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=0) if local else _scaling(params),
        run_config=RunConfig(
            name=name, storage_path=storage,
            failure_config=FailureConfig(max_failures=params.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; surface a divergence as itself
        root = _root_cause(exc)
        if isinstance(root, DivergenceError):
            raise DivergenceError(str(root)) from None
        raise
    with result.checkpoint.as_directory() as d:
        final = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    if final.get(RETENTION_PLAN) is not None:
        final["info"][RETENTION_PLAN] = final[RETENTION_PLAN]
    return final["info"], final["model"]


def map_models(fn: Any, blobs: dict[str, dict[str, Any]], shared: tuple,
               params: Params) -> dict[str, Any]:
    """fn(model, *shared, device) for every model, each as a Ray task (1 CPU, or a GPU), or
    one after the other in this process when `ray.job_mode` makes scoring local.

    Args:
        fn: a component function taking (model, *shared, device).
        blobs: model name -> model file content (flows.runtime.common.read_model_file).
        shared: the arguments every call shares (put once into the object store).
        params: all params (Ray address, GPU use).

    Returns:
        model name -> fn's result.
    """
    if job_mode("score", params) == "local":
        device = local_device(params)
        return {n: fn(model_from_file(b), *shared, device) for n, b in blobs.items()}
    connect(params)
    opts = {"num_gpus": 1} if _use_gpu(params) else {"num_cpus": 1}
    shared_ref = ray.put(shared)
    futures = {n: score_model.options(**opts).remote(fn, b, shared_ref) for n, b in blobs.items()}
    return {n: ray.get(f) for n, f in futures.items()}
