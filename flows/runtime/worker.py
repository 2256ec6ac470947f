"""What runs inside Ray's worker processes: the Ray Train worker loop and the scoring task.

Kept apart from flows.runtime.jobs on purpose: a Ray worker imports the module of the function it
runs, and flows.runtime.jobs imports Prefect and MLflow. Measured here (2 CPU cores): importing
ray + torch + Ray Train takes 4.6 s, flows.runtime.jobs with its imports 11.5 s, and every Ray Train
job starts two processes that import it (the controller and the worker). This module imports
only what a loop needs; MLflow is imported by the rank-0 worker when it first logs.
"""

from __future__ import annotations

import queue
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
from ray.train import Checkpoint
from torch import nn

from components.methods import UnlearnData, get_method
from components.methods.base import RETENTION_PLAN
from components.models import build_model, cpu_state, model_from_file
from components.params import Params, parse_params
from components.retention import retain_knowledge
from components.tasks import build_pairs
from components.training import ComputeCounter, JobContext, seed_everything, train_model

STATE_FILE = "state.pt"


def train_loop(config: dict[str, Any]) -> None:
    """Body of every Ray Train worker: fetch the payload, run the loop, report.

    Where a worker's time goes is measured and returned with the loop's figures (tools.perf
    breaks the orchestration's overhead down with it): the payload fetch, MLflow logging,
    checkpoint writes, and the wall-clock moments the worker started and finished.
    """
    started = time.time()
    ctx_ray = ray.train.get_context()
    rank, world = ctx_ray.get_world_rank(), ctx_ray.get_world_size()
    local_dir = config.get("local_dir")
    if local_dir is None:
        # where each rank landed (a multi-node cluster's placement is checked from these lines)
        print(f"[worker] rank {rank}/{world} on node {ray.get_runtime_context().get_node_id()}",
              flush=True)
    else:
        print("[worker] local mode: the loop runs in the stage's process", flush=True)
    payload = config["payload"]
    if isinstance(payload, ray.ObjectRef):
        payload = ray.get(payload)
    params = parse_params(payload["params"])
    timing = {"worker_start": started, "payload_seconds": time.time() - started,
              "log_seconds": 0.0, "checkpoint_seconds": 0.0}
    seed_everything(params.seed + rank)
    logger = _Rank0Logger(config["tracking_uri"], config["run_id"]) \
        if rank == 0 and config["run_id"] else None

    def report(metrics: dict, state: dict | None) -> None:
        t0 = time.perf_counter()
        if logger:
            logger.log(metrics)
        t1 = time.perf_counter()
        timing["log_seconds"] += t1 - t0
        if state is None:
            ray.train.report(metrics)
            return
        if local_dir is not None:
            ray.train.report(metrics, checkpoint=_local_checkpoint(Path(local_dir), state))
        else:
            with tempfile.TemporaryDirectory() as d:
                checkpoint = None
                if rank == 0:  # one copy of the weights; the other ranks only join the barrier
                    torch.save(state, Path(d) / STATE_FILE)
                    checkpoint = Checkpoint.from_directory(d)
                ray.train.report(metrics, checkpoint=checkpoint)
        timing["checkpoint_seconds"] += time.perf_counter() - t1

    try:
        _run_worker(config, payload, params, rank, world, report, timing)
    except BaseException:
        if logger:  # the job's own error is the one to see, not a logging one after it
            logger.close(check=False)
        raise
    if logger:
        logger.close()


def _run_worker(config: dict[str, Any], payload: dict[str, Any], params: Params, rank: int,
                world: int, report: Callable[[dict, dict | None], None], timing: dict) -> None:
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    if resume and "info" in resume:  # the job had finished before the restart
        report({"done": 1}, resume)
        return
    on_device = params.ray.data_on_device
    local = config.get("local_dir") is not None
    device = local_device(params) if local else ray.train.torch.get_device()
    ctx = JobContext(device=device, rank=rank, world_size=world,
                     resume=resume, report=report, log=lambda line: print(line, flush=True),
                     checkpoint_every=config["checkpoint_every"],
                     data_on_device=None if on_device == "auto" else on_device)
    if config["kind"] == "benchmark":  # its audits import scikit-learn: only here
        from components.benchmark import make_case, run_case

        case = make_case(payload["sets"], payload["eval"], payload["spec"], payload["shape"])
        info = run_case(case, params, payload["methods"], ctx)
        report({"done": 1}, {"model": {}, RETENTION_PLAN: None, "info": info})
        return
    prepare = (lambda m: m.to(device)) if local else ray.train.torch.prepare_model
    info, model = run_loop(config["kind"], payload, params, ctx, prepare)
    info.update(timing, worker_end=time.time(), worker_max_rss_mb=max_rss_mb())
    final = {"model": cpu_state(model),
             RETENTION_PLAN: info.pop(RETENTION_PLAN, None), "info": info}
    report({"done": 1, **{k: v for k, v in info.items() if isinstance(v, int | float)}}, final)


def run_loop(kind: str, payload: dict[str, Any], params: Params, ctx: JobContext,
             prepare: Callable[[nn.Module], nn.Module]) -> tuple[dict, nn.Module]:
    """The loop of a job, wherever it runs: a Ray Train worker, or one process (tools.perf).

    Args:
        kind: "train", "forget" or "retain".
        payload: what run_job sends (params tree, shape, sets, spec, init, original, plan).
        params: the parsed params.
        ctx: the job context (device, rank, report callback).
        prepare: puts the model on the device (Ray Train's prepare_model wraps it for DDP).

    Returns:
        (info, model): the loop's figures (job_seconds: its wall time, building the pairs
        included; sample_grads: its compute in sample-gradient evaluations, all workers) and
        the trained model (possibly wrapped).
    """
    t0 = time.perf_counter()
    c, side = payload["shape"]
    model = build_model(params.model, c, side)
    if payload["init"] is not None:
        model.load_state_dict(payload["init"])
    model = prepare(model)
    pairs = {k: build_pairs(v["images"], v["poisoned"], payload["spec"])
             for k, v in payload["sets"].items()}
    original = None
    if kind != "train":
        original = build_model(params.model, c, side)
        original.load_state_dict(payload["original"])
        original.to(ctx.device).eval().requires_grad_(False)
    counted = (model,) if original is None else (model, original)
    with ComputeCounter(*counted) as compute:
        if kind == "train":
            info = train_model(model, *pairs["train"], params.train, ctx, params.seed,
                               label=payload["label"])
        elif kind == "forget":
            data = UnlearnData(pairs["forget"], pairs["retain"], pairs["heldout"], original)
            info = get_method(params.unlearn.method).forget(model, data, params, ctx)
        else:  # retention; with a plan, it keeps the forget set decoupled
            keep = {}
            if payload["plan"] is not None:
                keep = {"forget": pairs["forget"], **payload["plan"]}
            info = retain_knowledge(model, original, pairs["retain"], params.unlearn.finetune,
                                    ctx, params.seed, retrain=params.train, **keep)
    # each data-parallel worker computes its shard: the job's compute is world_size times this
    info["sample_grads"] = compute.sample_grads * ctx.world_size
    info["job_seconds"] = time.perf_counter() - t0
    return info, model


def local_device(params: Params) -> torch.device:
    """The device of a loop that runs in this process (local mode): its GPU unless
    ray.use_gpu is false (Ray assigns no GPU to a process it did not start)."""
    gpu = params.ray.use_gpu is not False and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def _local_checkpoint(run_dir: Path, state: dict, keep: int = 2) -> Checkpoint:
    """A local-mode job's checkpoint, where a Ray Train job keeps its own
    (<storage_path>/<run>/checkpoint_<n>), the last `keep` of them kept, as CheckpointConfig
    does for the workers' jobs. Written to a temporary name, then renamed: a crash never
    leaves a half-written checkpoint under the final name."""
    run_dir.mkdir(parents=True, exist_ok=True)
    done = sorted(run_dir.glob("checkpoint_*"))
    number = int(done[-1].name.split("_")[1]) + 1 if done else 0
    target = run_dir / f"checkpoint_{number:06d}"
    tmp = run_dir / f".{target.name}.tmp"
    tmp.mkdir()
    torch.save(state, tmp / STATE_FILE)
    tmp.rename(target)
    for old in done[:max(0, len(done) + 1 - keep)]:
        shutil.rmtree(old)
    return Checkpoint.from_directory(str(target))


def max_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Rank0Logger:
    """Logs a job's metrics to its MLflow run from the rank-0 worker (Train V2 has no MLflow
    callback), off the loop's path: a thread imports MLflow (2.7 s here) and writes each
    report as one batch while the loop goes on; close() waits for it and raises what it hit.
    The step is the report count."""

    def __init__(self, uri: str, run_id: str):
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.step = 0
        self.thread = threading.Thread(target=self._write, args=(uri, run_id), daemon=True)
        self.thread.start()

    def log(self, metrics: dict) -> None:
        now = int(time.time() * 1000)
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool)}
        self.queue.put((self.step, now, numbers))
        self.step += 1

    def close(self, check: bool = True) -> None:
        self.queue.put(None)
        self.thread.join()
        if check and self.error is not None:
            raise RuntimeError(f"logging metrics to MLflow failed: {self.error}") from self.error

    def _write(self, uri: str, run_id: str) -> None:
        try:
            from mlflow.entities import Metric
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            while (item := self.queue.get()) is not None:
                step, now, metrics = item
                client.log_batch(run_id, metrics=[Metric(k, v, now, step)
                                                  for k, v in metrics.items()])
        except BaseException as exc:  # handed to close(), in the worker's own thread
            self.error = exc


@ray.remote
def score_model(fn: Any, blob: dict[str, Any], shared: tuple) -> Any:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return fn(model_from_file(blob), *shared, device)
