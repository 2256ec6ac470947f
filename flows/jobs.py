"""Ray wiring: connect to Ray, run a component loop as a Ray Train job, run inference as tasks.

A job's data travels once through Ray's object store (uint8 images, a few MB to ~50 MB),
each worker builds its pairs from it, runs the pure-PyTorch loop from `components/`, and
reports metrics (logged to MLflow from rank 0, as Ray Train V2 wants) and checkpoints
(to `ray.storage_path`, local or s3://). A restarted worker resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from components.benchmark import make_case, run_case
from components.methods import UnlearnData, get_method
from components.methods.base import THRESHOLDS
from components.models import build_model
from components.params import Params, parse_params
from components.retention import retain_knowledge
from components.tasks import build_pairs
from components.training import DivergenceError, JobContext, seed_everything, train_model
from flows.common import model_from_file, task_spec
from flows.tracking import tracking_uri

STATE_FILE = "state.pt"


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
                         resources_per_worker={"CPU": cpus, **({"GPU": 1} if gpu else {})})


def _root_cause(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (WorkerGroupError -> RayTaskError -> ...)."""
    for failure in getattr(exc, "worker_failures", {}).values():
        return _root_cause(failure)
    cause = getattr(exc, "cause", None) or exc.__cause__
    return _root_cause(cause) if isinstance(cause, BaseException) else exc


@task(name="ray-train-job", cache_policy=NO_CACHE)
def run_job(kind: str, label: str, params: Params, shape: tuple[int, int],
            sets: dict[str, dict[str, np.ndarray]], run_id: str | None,
            init: dict | None = None, original: dict | None = None,
            thresholds: torch.Tensor | None = None, **extra: Any) -> tuple[dict, dict]:
    """Run one component loop as a Ray Train TorchTrainer job (a Prefect task).

    Args:
        kind: "train", "forget" or "retain" (which loop the workers run).
        label: the job's name in progress lines; with a timestamp, its Ray run name
            (checkpoints go to <storage_path>/<label>-<timestamp>).
        params: all params (the loop's knobs, scaling, storage, failures).
        shape: (channels, side) of the images.
        sets: named image sets with poisoned flags (flows.common.job_sets).
        run_id: the MLflow run the rank-0 worker logs metrics to.
        init: weights to start from (None: a fresh model).
        original: the original model's weights (the frozen θ0 of unlearning loops).
        thresholds: λ_i of every forget pair, for a retention that keeps them decoupled.
        extra: further payload entries (a benchmark case's eval images and methods).

    Returns:
        (info, state_dict): the loop's returned figures (with the λ_i tensor under
        THRESHOLDS if the loop produced one) and the final weights.
    """
    connect(params)
    payload = {"params": params.model_dump(mode="json"), "shape": shape, "sets": sets,
               "spec": task_spec(params), "init": init, "original": original,
               "thresholds": thresholds, "label": label, **extra}
    storage = params.ray.storage_path
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    config = {"kind": kind, "payload": ray.put(payload), "run_id": run_id,
              "tracking_uri": tracking_uri(),
              "checkpoint_every": params.ray.checkpoint_every}
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=config, scaling_config=_scaling(params),
        run_config=RunConfig(
            name=f"{label}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
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
    if final["thresholds"] is not None:
        final["info"][THRESHOLDS] = final["thresholds"]
    return final["info"], final["model"]


def _worker_loop(config: dict[str, Any]) -> None:
    """Body of every Ray Train worker: build pairs and models, run the loop, report."""
    ctx_ray = ray.train.get_context()
    rank, world = ctx_ray.get_world_rank(), ctx_ray.get_world_size()
    payload = ray.get(config["payload"])
    params = parse_params(payload["params"])
    seed_everything(params.seed + rank)
    device = ray.train.torch.get_device()
    logger = _Rank0Logger(config["tracking_uri"], config["run_id"]) if rank == 0 else None

    def report(metrics: dict, state: dict | None) -> None:
        if logger:
            logger.log(metrics)
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:  # one copy of the weights; the other ranks only join the barrier
                torch.save(state, Path(d) / STATE_FILE)
                checkpoint = Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    if resume and "info" in resume:  # the job had finished before the restart
        report({"done": 1}, resume)
        return
    if config["kind"] == "benchmark":
        ctx = JobContext(device=device, rank=rank, world_size=world, resume=resume,
                         report=report, log=lambda line: print(line, flush=True))
        case = make_case(payload["sets"], payload["eval"], payload["spec"], payload["shape"])
        info = run_case(case, params, payload["methods"], ctx)
        report({"done": 1}, {"model": {}, THRESHOLDS: None, "info": info})
        return
    c, side = payload["shape"]
    model = build_model(params.model, c, side)
    if payload["init"] is not None:
        model.load_state_dict(payload["init"])
    model = ray.train.torch.prepare_model(model)
    ctx = JobContext(device=device, rank=rank, world_size=world, resume=resume, report=report,
                     log=lambda line: print(line, flush=True),
                     checkpoint_every=config["checkpoint_every"])
    pairs = {k: build_pairs(v["images"], v["poisoned"], payload["spec"])
             for k, v in payload["sets"].items()}
    t0 = time.perf_counter()
    if config["kind"] == "train":
        info = train_model(model, *pairs["train"], params.train, ctx, params.seed,
                           label=payload["label"])
    else:
        original = build_model(params.model, c, side)
        original.load_state_dict(payload["original"])
        original.to(device).eval().requires_grad_(False)
        if config["kind"] == "forget":
            data = UnlearnData(pairs["forget"], pairs["retain"], pairs["heldout"], original)
            info = get_method(params.unlearn.method).forget(model, data, params, ctx)
        else:  # retention; with thresholds, it keeps each forget pair at its λ_i
            keep = {}
            if payload["thresholds"] is not None:
                keep = {"forget": pairs["forget"], THRESHOLDS: payload["thresholds"]}
            info = retain_knowledge(model, original, pairs["retain"], params.unlearn.finetune,
                                    ctx, params.seed, **keep)
    info["job_seconds"] = time.perf_counter() - t0
    core = getattr(model, "module", model)
    final = {"model": {k: v.cpu() for k, v in core.state_dict().items()},
             "thresholds": info.pop(THRESHOLDS, None), "info": info}
    report({"done": 1, **{k: v for k, v in info.items() if isinstance(v, int | float)}}, final)


class _Rank0Logger:
    """Logs a job's metrics to its MLflow run from the rank-0 worker (Train V2 has no
    MLflow callback); the step is the report count."""

    def __init__(self, uri: str, run_id: str | None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri) if run_id else None
        self.run_id, self.step = run_id, 0

    def log(self, metrics: dict) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, self.step) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=batch)
        self.step += 1


@ray.remote
def _score(fn: Any, blob: dict[str, Any], shared: tuple) -> Any:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return fn(model_from_file(blob), *shared, device)


def map_models(fn: Any, blobs: dict[str, dict[str, Any]], shared: tuple,
               params: Params) -> dict[str, Any]:
    """fn(model, *shared, device) for every model, each as a Ray task (1 CPU, or a GPU).

    Args:
        fn: a component function taking (model, *shared, device).
        blobs: model name -> model file content (flows.common.read_model_file).
        shared: the arguments every call shares (put once into the object store).
        params: all params (Ray address, GPU use).

    Returns:
        model name -> fn's result.
    """
    connect(params)
    opts = {"num_gpus": 1} if _use_gpu(params) else {"num_cpus": 1}
    shared_ref = ray.put(shared)
    futures = {n: _score.options(**opts).remote(fn, b, shared_ref) for n, b in blobs.items()}
    return {n: ray.get(f) for n, f in futures.items()}
