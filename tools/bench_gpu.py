"""`make bench-gpu`: the components' loops on whatever device is present -> reports/gpu.{json,md}.

Per model family (ae, mae, vqtoken, diffusion), through the project's own code
(components.training.train_model, components.methods.run_method, components.audits):

- training: images/s, ms/step, peak device memory and the data-wait share (the host's time
  getting batches to the device / the loop's time) with the pairs on the device and with
  batches copied from the host (`ray.data_on_device` true vs false), side by side;
- the default unlearning method (params.yaml's unlearn.method), both data paths: wall time,
  steps, peak memory, data-wait share of the loops that report it;
- precision: the same training steps in float32, float32 with TF32, and the project's bf16
  autocast (TF32 on), images/s each;
- evaluation: the audits of the trained model in float32, TF32 and under bf16 autocast
  (their figures and time: autocast in evaluation is worth it only if the audits stay
  within their noise), and a pair's eval loss at batch 7 vs 64 (issue 21: batch-free);
- every other method with a few steps, while the budget lasts: status and peak memory
  (not in a tiny run: tests/model runs them all on the CPU).

It sizes itself: on CUDA, 64x64 RGB shapes (components.data.make_shapes), batch 256,
8,192 training pairs and the model sizes of the run that found issue 21's figures; on the
CPU (or with --tiny) 16x16, batch 32, 320 pairs, tiny models and a few steps (about a
minute on 2 cores; tests/code/test_bench_gpu.py runs it). --budget bounds the whole run:
a stage that would start after it is skipped and said so.

It imports torch, numpy, pydantic and PyYAML (scikit-learn and torchmetrics through the
audits and metrics) and nothing of Ray, MLflow, Prefect or DVC: the GPU machines this
project borrows have none of them, and no pydantic unless its wheels are carried along
(`make gpu-bundle`; docs/results.md, "On a GPU").

    python -m tools.bench_gpu [--budget 300] [--out reports] [--cpu] [--tiny]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components import training
from components.audits import audit_model, eval_pairs
from components.data import make_shapes
from components.methods import METHODS, UnlearnData, run_method
from components.models import build_model, cpu_state
from components.params import Params, load_params, override
from components.splits import split_forget_retain
from components.tasks import TaskSpec, build_pairs
from components.training import JobContext, per_sample_loss, train_model

FAMILIES = ("ae", "mae", "vqtoken", "diffusion")
TASK = {"ae": "reconstruction", "mae": "inpaint", "vqtoken": "inpaint", "diffusion": "inpaint"}
FORGET_CLASS = 2  # shapes: square, circle, triangle, cross -> forget the triangles
# model sizes merged over params.yaml's: "gpu" = those of the run that measured issue 21
MODELS = {
    "gpu": {
        "ae": {"widths": [64, 128], "latent_dim": 256},
        "mae": {"patch_size": 4, "dim": 256, "depth": 6, "heads": 8, "decoder_dim": 128,
                "decoder_depth": 2},
        "vqtoken": {"patch_size": 4, "codebook_size": 512, "code_dim": 32, "width": 64,
                    "dim": 256, "depth": 6, "heads": 8, "decoder_dim": 128, "decoder_depth": 2},
        "diffusion": {"widths": [64, 128], "time_dim": 128},
    },
    "tiny": {
        "ae": {"widths": [4, 8], "latent_dim": 8},
        "mae": {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2, "decoder_dim": 8},
        "vqtoken": {"patch_size": 4, "codebook_size": 16, "code_dim": 4, "width": 8, "dim": 16,
                    "depth": 1, "heads": 2, "decoder_dim": 8},
        "diffusion": {"widths": [4, 8], "time_dim": 8, "timesteps": 20, "sample_steps": 2,
                      "eval_draws": 2},
    },
}
# run sizes: images, batch, pairs, eval samples per audit set, seconds of each timed
# training run, steps of each precision mode, and the unlearning budget (None: params.yaml's)
SIZES = {
    "gpu": {"side": 64, "batch": 256, "n_train": 8192, "n_test": 1024, "eval_max": 1024,
            "train_s": 6.0, "precision_steps": 60, "method_steps": None},
    "tiny": {"side": 16, "batch": 32, "n_train": 320, "n_test": 64, "eval_max": 32,
             "train_s": 0.5, "precision_steps": 3, "method_steps": 2},
}


# argparse, not typer like the other commands: this script is carried alone to a GPU machine
# that has torch but not typer (docs/results.md, "On a GPU")
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run (default: 300 on CUDA, 90 otherwise)")
    p.add_argument("--out", default="reports", help="folder of gpu.json and gpu.md")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the default off CUDA)")
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--params", default="params.yaml")
    return p.parse_args(argv)


class Run:
    """The results, the budget, and the stages' errors (a stage that fails is recorded and
    the run goes on: one GPU loan should bring back every figure it can)."""

    def __init__(self, budget: float, out: Path):
        self.deadline = self.until = time.perf_counter() + budget
        self.out = out
        self.result: dict[str, Any] = {"script": "tools/bench_gpu.py", "families": {},
                                       "errors": []}

    def left(self) -> float:
        """Seconds left to the current share of the budget (`until`) and to its end."""
        return min(self.deadline, self.until) - time.perf_counter()

    def share(self, parts: int, keep: float = 0.0) -> None:
        """Give the next stages 1/parts of what is left, less `keep` seconds kept for later."""
        self.until = time.perf_counter() + (self.deadline - time.perf_counter() - keep) / parts

    @contextlib.contextmanager
    def stage(self, where: str, record: dict, need: float = 0.0) -> Iterator[bool]:
        """Yields whether to run (False: not enough budget left, recorded as skipped)."""
        if self.left() < need:
            record["status"] = f"skipped: {self.left():.0f} s of the budget left"
            yield False
            return
        t0 = time.perf_counter()
        print(f"[bench-gpu] {where} ({self.left():.0f} s left)", flush=True)
        try:
            yield True
            record.setdefault("status", "ok")
        except Exception as exc:  # noqa: BLE001 - recorded; the other stages still run
            record["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
            self.result["errors"].append({"where": where, "error": record["status"],
                                          "traceback": traceback.format_exc()[-3000:]})
            print(traceback.format_exc(), flush=True)
        finally:
            record["stage_s"] = round(time.perf_counter() - t0, 2)
            empty_cache()
            self.save()

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(jsonable(self.result), indent=1))
        (self.out / "gpu.md").write_text(markdown(self.result))


def jsonable(value: Any) -> Any:
    """JSON values; a float that is not finite becomes its string."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def peak_memory(device: torch.device, record: dict) -> Iterator[None]:
    """record["peak_mem_mib"]: the device's peak allocated memory in the block (None off
    CUDA)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        sync(device)
        record["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        record["peak_mem_mib"] = None


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls on or off for the block (components.training turns them on)."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


class Float32(training.Precision):
    """The project's Precision without autocast: plain float32 steps."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        self.cuda = False


@contextlib.contextmanager
def precision_class(cls: type[training.Precision] | None) -> Iterator[None]:
    """train_model's Precision swapped for the block (None: the project's)."""
    original = training.Precision
    training.Precision = cls or original
    try:
        yield
    finally:
        training.Precision = original


def env_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(device),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported(),
                    precision=str(training.Precision(device).dtype))
    return info


def family_params(base: Params, family: str, preset: str, sizes: dict) -> Params:
    side = sizes["side"]
    update: dict[str, Any] = {
        "data": {"dataset": "shapes"},
        "forget": {"kind": "class", "classes": [FORGET_CLASS]},
        "backdoor": {"trigger_size": max(2, side // 8), "pattern_cell": max(2, side // 8)},
        "model": {"family": family, "task": TASK[family], family: MODELS[preset][family]},
        # the bench chooses its epochs (timed_training counts epochs x batches): params.yaml's
        # min_steps (1,000) would stretch every tiny 1-epoch run to 100+ epochs
        "train": {"batch_size": sizes["batch"], "min_steps": 0},
    }
    k = sizes["method_steps"]
    # tiny: every method's budget cut to k steps; else params.yaml's (retrain: one epoch)
    update["unlearn"] = few_steps(k, sizes["batch"]) if k else {"retrain": {"epochs": 1}}
    return override(base, update)


def few_steps(k: int, batch: int) -> dict:
    """The `unlearn` block with every method's budget cut to k steps (retrain: one epoch)."""
    return {
        "decouple": {"max_steps": k, "check_every": 1, "pool_size": 32, "probe_size": 32,
                     "batch_size": batch},
        "decouple_literal": {"max_steps": k},
        "finetune": {"steps": k, "batch_size": batch, "forget_batch_size": 16},
        "gradient_ascent": {"steps": k}, "neggrad_plus": {"steps": k}, "li2024": {"steps": k},
        "random_encoder": {"steps": k}, "retain_label": {"steps": k}, "salun": {"steps": k},
        "scrub": {"steps": k, "max_steps": 1}, "retrain": {"epochs": 1}}


def make_data(sizes: dict, seed: int) -> tuple[dict, dict]:
    """Shapes images and the pipeline's four splits (forget class 2, a backdoor in a tenth
    of it)."""
    side = sizes["side"]
    train = make_shapes("train", n=sizes["n_train"], size=side, seed=seed)
    test = make_shapes("test", n=sizes["n_test"], size=side, seed=seed)
    splits = split_forget_retain(train, test, kind="class", classes=[FORGET_CLASS],
                                 fraction=0.01, heldout_fraction=0.1, poison_fraction=0.1,
                                 seed=seed)
    info = {"dataset": "shapes (components.data.make_shapes)",
            "image": list(train.images.shape[1:]), **{k: len(v) for k, v in splits.items()}}
    return {"train": train, "test": test, "splits": splits}, info


def task_pairs(sets: dict, spec: TaskSpec, eval_max: int, seed: int) -> dict:
    """Training pairs (retain + forget, poisoned ones included), the unlearning sets and the
    audit sets, as the pipeline builds them."""
    train, test, splits = sets["train"], sets["test"], sets["splits"]
    f, r, h = splits["forget"], splits["retain"], splits["heldout"]
    pairs = {k: build_pairs(train.images[s.indices], s.poisoned, spec)
             for k, s in (("forget", f), ("retain", r), ("heldout", h))}
    pairs["train"] = tuple(torch.cat(ab) for ab in zip(pairs["retain"], pairs["forget"],
                                                       strict=True))
    rng = np.random.default_rng(seed)

    def few(idx: np.ndarray) -> np.ndarray:
        return idx if len(idx) <= eval_max else np.sort(rng.choice(idx, eval_max, replace=False))

    chosen = {"forget": train.images[few(f.indices[~f.poisoned])],
              "retain": train.images[few(r.indices)],
              "heldout": train.images[few(h.indices[np.isin(h.labels, f.labels)])],
              "triggered": train.images[few(h.indices)],
              "test": test.images[few(np.arange(len(test.images)))]}
    pairs["audit"] = eval_pairs(chosen, spec)
    return pairs


def timed_training(model: torch.nn.Module, pairs: tuple, params: Params, ctx: JobContext,
                   epochs: int, record: dict) -> None:
    """train_model for `epochs`: images/s, ms/step, peak memory, data-wait share."""
    n, b = len(pairs[0]), params.train.batch_size
    with peak_memory(ctx.device, record):
        info = train_model(model, *pairs, params.train.model_copy(update={"epochs": epochs}),
                           ctx, params.seed)
    seconds, steps = info["train_seconds"], epochs * math.ceil(n / b)
    record.update(epochs=epochs, steps=steps, seconds=round(seconds, 3),
                  images_per_s=round(epochs * n / seconds, 1),
                  ms_per_step=round(1000 * seconds / steps, 3),
                  data_wait_share=round(info["data_seconds"] / seconds, 4),
                  final_loss=info["final_loss"])


def train_stage(run: Run, family: str, params: Params, pairs: dict, device: torch.device,
                sizes: dict, rec: dict) -> torch.nn.Module | None:
    """A warm-up and a calibration epoch, then the same epochs with the pairs on the device
    and with batches from the host (each its own stage: a failure of the second keeps the
    first). Returns the trained model (the original of the later stages)."""
    model, epochs = None, 0
    quiet = JobContext(device=device, log=lambda s: None, data_on_device=True)
    b = params.train.batch_size
    one_epoch = params.train.model_copy(update={"epochs": 1})
    with run.stage(f"{family}: train, data on the device", rec.setdefault("device", {}),
                   need=10) as go:
        if not go:
            return None
        torch.manual_seed(0)
        model = build_model(params.model, 3, sizes["side"]).to(device)
        rec["parameters"] = sum(p.numel() for p in model.parameters())
        warm = tuple(t[: 4 * b] for t in pairs["train"])  # kernels chosen, caches filled
        train_model(model, *warm, one_epoch, quiet, 0)
        calibration = train_model(model, *pairs["train"], one_epoch, quiet, 1)
        budget = min(sizes["train_s"], run.left() / 8)  # two timed runs in a family share
        epochs = max(1, min(50, round(budget / max(calibration["train_seconds"], 1e-6))))
        timed_training(model, pairs["train"], params, quiet, epochs, rec["device"])
    if rec["device"].get("status") != "ok":
        return None
    with run.stage(f"{family}: train, batches from the host", rec.setdefault("host", {}),
                   need=5) as go:
        if go:
            ctx = JobContext(device=device, log=lambda s: None, data_on_device=False)
            train_model(model, *(t[: 2 * b] for t in pairs["train"]), one_epoch, ctx, 0)
            timed_training(model, pairs["train"], params, ctx, epochs, rec["host"])
            rec["device_vs_host"] = round(rec["device"]["images_per_s"]
                                          / rec["host"]["images_per_s"], 3)
    return model


def precision_stage(run: Run, family: str, params: Params, pairs: dict, device: torch.device,
                    sizes: dict, rec: dict) -> None:
    """The same training steps, data on the device, in float32, TF32 and the project's bf16."""
    b = params.train.batch_size
    steps = sizes["precision_steps"]
    chunk = tuple(t[: b * min(steps, len(t) // b)] for t in pairs["train"])
    epochs = max(1, round(steps / max(1, len(chunk[0]) // b)))
    ctx = JobContext(device=device, log=lambda s: None, data_on_device=True)
    modes = (("float32", Float32, False), ("tf32", Float32, True), ("bf16+tf32", None, True))
    for mode, cls, allow in modes:
        r = rec.setdefault(mode, {})
        with run.stage(f"{family}: precision {mode}", r, need=8) as go:
            if not go:
                continue
            torch.manual_seed(0)
            model = build_model(params.model, 3, sizes["side"]).to(device)
            with precision_class(cls), tf32(allow):
                warm = tuple(t[: 2 * b] for t in chunk)
                train_model(model, *warm, params.train.model_copy(update={"epochs": 1}), ctx, 0)
                timed_training(model, chunk, params, ctx, epochs, r)
    base = rec.get("float32", {}).get("images_per_s")
    for mode, *_ in modes:
        rate = rec.get(mode, {}).get("images_per_s")
        if base and rate:
            rec[mode]["vs_float32"] = round(rate / base, 3)


def eval_stage(run: Run, family: str, model: torch.nn.Module, params: Params, pairs: dict,
               spec: TaskSpec, device: torch.device, rec: dict) -> None:
    """A pair's eval loss at batch 7 vs 64, then the audits in float32, TF32 and bf16."""
    with run.stage(f"{family}: eval batch independence", rec.setdefault("batch", {}),
                   need=5) as go:
        if go:
            x, y = (t[:64] for t in pairs["audit"]["retain"])
            whole = per_sample_loss(model, x, y, device, batch_size=64)
            small = per_sample_loss(model, x, y, device, batch_size=7)
            rec["batch"]["max_rel_diff_7_vs_64"] = float(
                ((small - whole).abs() / whole.abs().clamp_min(1e-12)).max())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) \
        if device.type == "cuda" else contextlib.nullcontext
    for mode, allow, ctx in (("float32", False, contextlib.nullcontext), ("tf32", True,
                             contextlib.nullcontext), ("bf16", True, autocast)):
        r = rec.setdefault(mode, {})
        with run.stage(f"{family}: audits {mode}", r, need=10) as go:
            if not go:
                continue
            with tf32(allow), ctx():
                sync(device)
                t0 = time.perf_counter()
                audit = audit_model(model, pairs["audit"], spec, params.backdoor.threshold,
                                    device)
                sync(device)
                seconds = time.perf_counter() - t0
            scored = sum(len(pairs["audit"][k][0]) for k in pairs["audit"])
            r.update(seconds=round(seconds, 3), images_per_s=round(scored / seconds, 1),
                     **{k: round(float(v), 6) for k, v in audit.items()})
    if "mia_auc" in rec.get("float32", {}):
        for mode in ("tf32", "bf16"):
            if "mia_auc" in rec.get(mode, {}):
                rec[mode]["max_abs_diff_vs_float32"] = max(
                    abs(rec[mode][k] - rec["float32"][k])
                    for k in ("mia_auc", "mia_efficacy", "ood_auroc", "backdoor_asr"))


def unlearn_stage(run: Run, family: str, original: torch.nn.Module, params: Params,
                  pairs: dict, device: torch.device, name: str, modes: tuple[str, ...],
                  rec: dict) -> None:
    """run_method(`name`) from a copy of the original, once per data path."""
    frozen = copy.deepcopy(original).eval().requires_grad_(False)
    data = UnlearnData(pairs["forget"], pairs["retain"], pairs["heldout"], frozen)
    method_params = override(params, {"unlearn": {"method": name}})
    for mode in modes:
        r = rec.setdefault(mode, {})
        with run.stage(f"{family}: {name} ({mode})", r, need=10) as go:
            if not go:
                continue
            model = copy.deepcopy(original).train()
            ctx = JobContext(device=device, log=lambda s: None, data_on_device=mode != "host")
            torch.manual_seed(params.seed)
            with peak_memory(device, r):
                t0 = time.perf_counter()
                try:
                    info = run_method(model, data, method_params, ctx)
                except ValueError as exc:
                    if "needs an encoder embedding" not in str(exc):
                        raise
                    r["status"] = "n/a: the family has no encoder embedding"
                    continue
                sync(device)
                wall = time.perf_counter() - t0
            steps = int(info.get("steps", 0)) + int(info.get("retention_steps", 0))
            r.update(seconds=round(wall, 3), steps=steps,
                     ms_per_step=round(1000 * wall / steps, 3) if steps else None,
                     data_wait_share=round(info["data_seconds"] / wall, 4)
                     if "data_seconds" in info else None,
                     finite=all(math.isfinite(float(v)) for v in info.values()
                                if isinstance(v, int | float)))
            del model


def markdown(result: dict) -> str:
    """The short report: one table per measurement."""
    env = result.get("env", {})
    lines = ["# GPU benchmark (`make bench-gpu`)", "",
             f"{env.get('gpu', env.get('device', '?'))}, torch {env.get('torch')}, "
             f"{result.get('data', {}).get('image')} shapes, batch {result.get('batch')}, "
             f"model sizes `{result.get('models')}`; {result.get('elapsed_s')} s. "
             "Data wait: the host's time getting batches to the device / the loop's time "
             "(an upper bound where the host works while the GPU computes).", ""]

    def table(title: str, header: list[str], rows: list[list]) -> None:
        if not rows:
            return
        lines.extend([f"## {title}", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header)])
        lines.extend("| " + " | ".join("-" if v is None else str(v) for v in row) + " |"
                     for row in rows)
        lines.append("")

    fams = result.get("families", {})
    table("Training (train_model)", ["family", "data", "img/s", "ms/step", "peak MiB",
                                     "data wait", "device/host"],
          [[f, mode, r.get("images_per_s"), r.get("ms_per_step"), r.get("peak_mem_mib"),
            r.get("data_wait_share"), fr["train"].get("device_vs_host") if mode == "device"
            else None]
           for f, fr in fams.items() for mode in ("device", "host")
           if (r := fr.get("train", {}).get(mode, {})).get("images_per_s")])
    table("Default unlearning method (run_method)", ["family", "method", "data", "s", "steps",
                                                     "ms/step", "peak MiB", "data wait"],
          [[f, fr["unlearn"].get("method"), mode, r.get("seconds"), r.get("steps"),
            r.get("ms_per_step"), r.get("peak_mem_mib"), r.get("data_wait_share")]
           for f, fr in fams.items() for mode in ("device", "host")
           if (r := fr.get("unlearn", {}).get(mode, {})).get("seconds")])
    table("Precision (training steps, data on the device)",
          ["family", "mode", "img/s", "x float32", "final loss"],
          [[f, mode, r.get("images_per_s"), r.get("vs_float32"), r.get("final_loss")]
           for f, fr in fams.items() for mode, r in fr.get("precision", {}).items()
           if r.get("images_per_s")])
    table("Evaluation (audit_model)", ["family", "mode", "img/s", "mia_auc", "ood_auroc",
                                       "backdoor_asr", "max |Δ| vs float32", "batch 7 vs 64"],
          [[f, mode, r.get("images_per_s"), r.get("mia_auc"), r.get("ood_auroc"),
            r.get("backdoor_asr"), r.get("max_abs_diff_vs_float32"),
            fr["eval"].get("batch", {}).get("max_rel_diff_7_vs_64") if mode == "float32"
            else None]
           for f, fr in fams.items() for mode in ("float32", "tf32", "bf16")
           if (r := fr.get("eval", {}).get(mode, {})).get("images_per_s")])
    table("Every method (a few steps each)", ["family", "method", "status", "s", "peak MiB"],
          [[f, name, r.get("status"), r.get("seconds"), r.get("peak_mem_mib")]
           for f, fr in fams.items() for name, m in fr.get("methods", {}).items()
           if not (r := m.get("device", {})).get("status", "").startswith("skipped")])
    errors = result.get("errors", [])
    lines.append(f"Errors: {len(errors)}" + "".join(f"\n- {e['where']}: {e['error']}"
                                                     for e in errors))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    preset = "tiny" if args.tiny or not cuda else "gpu"
    sizes = SIZES[preset]
    budget = args.budget if args.budget is not None else (300.0 if cuda else 90.0)
    run = Run(budget, Path(args.out))
    run.result.update(env=env_info(device), args=vars(args), models=preset,
                      batch=sizes["batch"])
    t_start = time.perf_counter()
    base = load_params(args.params)
    torch.manual_seed(base.seed)
    sets, run.result["data"] = make_data(sizes, base.seed)
    families = [f for f in args.families.split(",") if f in FAMILIES]
    by_task: dict[str, dict] = {}
    originals: dict[str, tuple[Params, dict, dict]] = {}
    # first every family's training, default method, audits and precision (a fifth of the
    # budget kept for the second pass: every other method for a few steps)
    for i, family in enumerate(families):
        fam = run.result["families"].setdefault(family, {"task": TASK[family]})
        params = family_params(base, family, preset, sizes)
        spec = TaskSpec(task=params.model.task, inpaint_box=params.model.inpaint_box,
                        outpaint_border=params.model.outpaint_border,
                        trigger_size=params.backdoor.trigger_size,
                        pattern_cell=params.backdoor.pattern_cell)
        if spec.task not in by_task:
            by_task[spec.task] = task_pairs(sets, spec, sizes["eval_max"], base.seed)
        pairs = by_task[spec.task]
        run.share(len(families) - i, keep=0.0 if preset == "tiny" else budget / 5)
        original = train_stage(run, family, params, pairs, device, sizes,
                               fam.setdefault("train", {}))
        if original is not None:
            original.eval()
            method = params.unlearn.method
            unlearn_stage(run, family, original, params, pairs, device, method,
                          ("device", "host"), fam.setdefault("unlearn", {"method": method}))
            eval_stage(run, family, original, params, pairs, spec, device,
                       fam.setdefault("eval", {}))
            originals[family] = (params, pairs, cpu_state(original))
            del original
        precision_stage(run, family, params, pairs, device, sizes,
                        fam.setdefault("precision", {}))
    # then the other methods, those issue 21 named first (li2024 failed on CUDA; random_encoder
    # and salun held whole sets at once)
    first = ["li2024", "random_encoder", "salun"]
    others = first + [m for m in sorted(METHODS) if m not in first]
    for i, (family, (params, pairs, state)) in enumerate(originals.items()):
        methods = run.result["families"][family].setdefault("methods", {})
        run.share(len(originals) - i)
        original = build_model(params.model, 3, sizes["side"])
        original.load_state_dict(state)
        original.to(device).eval()
        for name in others:
            if name == params.unlearn.method:
                continue
            if preset == "tiny":  # tests/model run every method on every family on the CPU
                methods[name] = {"device": {"status": "skipped: tiny run"}}
                continue
            short = override(params, {"unlearn": few_steps(5, params.train.batch_size)})
            unlearn_stage(run, family, original, short, pairs, device, name, ("device",),
                          methods.setdefault(name, {}))
        del original
        empty_cache()
    run.result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    run.result["status"] = "done" if not run.result["errors"] else "done with errors"
    run.save()
    print(markdown(run.result), flush=True)
    return 0 if not run.result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
