"""Training-loop building blocks shared by every job: batching, per-sample losses, the one
step loop (step_loop: resume, replay, step, report) that training, every unlearning method and
retention run on, the from-scratch training that is its first use, and the context a job
runs in.

The loop is plain PyTorch. Whoever runs it (a Ray Train worker, a test, a notebook) hands in
a JobContext: the device, this worker's rank, a state to resume from, and a `report`
callback that receives metrics and, on a cadence, a checkpointable state.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from components.models import generate, loss_per_sample, train_loss_per_sample, unwrap
from components.models.base import sample_losses as sample_losses  # re-exported: the I2I loss
from components.params import TrainParams

PROGRESS_LINES = 10  # a long training prints about this many epoch lines
# pairs per forward in evaluation (losses, outputs, embeddings): what an eval pass holds at
# once, whatever the size of the set it scores
EVAL_BATCH = 512
# share of the device's free memory a loop's pairs may take to be put there whole (the rest
# is for the model, its optimizer and activations): 8,000 RGB 64x64 pairs are 0.8 GB
DATA_ON_DEVICE_SHARE = 0.25

# TF32 for float32 matmuls on CUDA (no effect on a CPU, whose figures are the project's
# reference). PyTorch already runs float32 convolutions in TF32 on CUDA by default
# (cudnn.allow_tf32); this extends it to the linear and attention layers. Training runs
# under bf16 autocast (8 mantissa bits) anyway, so TF32 (10 bits) only reaches what runs in
# float32 outside it, evaluation: products rounded to 2**-11 move a per-sample loss by about
# 1e-3 of itself, far below the audits' tolerances (0.05 of an AUC); `make bench-gpu`
# measures the audits with and without it. It gave 1.16x on an H200 (issue 21). vqtoken's
# code assignment keeps full float32 (near ties would flip codes).
torch.backends.cuda.matmul.allow_tf32 = True


class DivergenceError(RuntimeError):
    """A loss became NaN or infinite: the run stops instead of saving a broken model."""


def _no_report(metrics: dict, state: dict | None) -> None:
    return None


@dataclass
class JobContext:
    """Where a job runs and how it reports.

    Attributes:
        device: torch device of this worker.
        rank, world_size: this worker's place among the data-parallel workers.
        resume: the state of the last checkpoint when a job restarts after a failure.
        report: called with (metrics, state or None); a state is to be checkpointed during
            the call (it shares storage with the live model, so it changes afterwards).
        log: where progress lines go (only rank 0 prints).
        checkpoint_every: steps between checkpoints in step-based loops (also the cadence
            at which they check their losses are finite: see FiniteWatch).
        data_on_device: put a loop's pairs on the device whole (True), gather each batch on
            the host (False), or decide by size (None: on a CUDA device when they take at
            most DATA_ON_DEVICE_SHARE of its free memory; params: ray.data_on_device).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    resume: dict | None = None
    report: Callable[[dict, dict | None], None] = _no_report
    log: Callable[[str], None] = print
    checkpoint_every: int = 50
    data_on_device: bool | None = None

    def say(self, line: str) -> None:
        if self.rank == 0:
            self.log(line)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def shard_batches(
    n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1
) -> Iterator[torch.Tensor]:
    """One shuffled pass over range(n), this worker's shard, in batches.

    Every worker draws the same permutation (same generator state), keeps every
    world_size-th index, and gets the same number of batches, so DDP steps stay in lockstep.
    """
    perm = torch.randperm(n, generator=generator)
    per_worker = n // world_size if n >= world_size else n
    mine = perm[rank::world_size][:per_worker] if n >= world_size else perm
    for start in range(0, len(mine), batch_size):
        yield mine[start : start + batch_size]


def endless_batches(
    n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
    spread: int = 100_003,
) -> Iterator[torch.Tensor]:
    """Batches over range(n) forever, reshuffled each pass, deterministic from `seed`: pass
    e draws its permutation from a generator seeded seed * spread + e (train_model has
    always spread its seeds by 1,000,003, the step loops by 100,003)."""
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * spread + epoch)
        yield from shard_batches(n, batch_size, gen, rank, world_size)
        epoch += 1


@dataclass
class Source:
    """What a loop draws one batch from each step: pairs (CPU tensors of equal length:
    inputs, targets, λ ...) and the order to draw them in, endless index batches that are
    deterministic from a seed, so that a resumed loop can replay them (step_loop)."""

    tensors: tuple[torch.Tensor, ...]
    order: Iterator[torch.Tensor]


def shuffled(tensors: tuple[torch.Tensor, ...], batch_size: int, seed: int, ctx: JobContext,
             spread: int = 100_003) -> Source:
    """A Source that reshuffles `tensors` each pass, this worker's shard (endless_batches)."""
    order = endless_batches(len(tensors[0]), batch_size, seed, ctx.rank, ctx.world_size, spread)
    return Source(tensors, order)


class DeviceData:
    """The pairs (and per-pair values) a loop draws its batches from, kept where a batch is
    quickest to reach the device, and the time the loop spent getting them.

    - On the device whole when ctx.data_on_device says so: a batch is a gather there (the
      ae trained 1.75x faster on an H200 than from batches copied from host tensors,
      issue 21).
    - Else, on CUDA: each batch gathered on the host into pinned memory and copied on a
      side stream, one batch ahead, so that the copy of batch k+1 overlaps step k and the
      host never waits for the device.
    - Elsewhere (the CPU): `t[idx].to(device)`, as the loops always did.

    Args:
        tensors: CPU tensors of equal length (inputs, targets, λ ...).
        ctx: the job context (device and data_on_device).

    Attributes:
        seconds: host time spent in getting batches so far (gathers, copies, waits).
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], ctx: JobContext):
        self.device = ctx.device
        cuda = self.device.type == "cuda"
        on_device = ctx.data_on_device
        if on_device is None:
            on_device = cuda and fits_on_device(tensors, self.device)
        self.tensors = tuple(t.to(self.device) for t in tensors) if on_device else tensors
        self.on_device, self.pinned = on_device, cuda and not on_device
        self.seconds = 0.0

    def batches(self, indices: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, ...]]:
        """The rows of each index batch (CPU index tensors) of every tensor, on the device."""
        if self.pinned:
            yield from self._prefetched(indices)
            return
        for idx in indices:
            t0 = time.perf_counter()
            if self.on_device:
                idx = idx.to(self.device, non_blocking=self.device.type == "cuda")
                batch = tuple(t[idx] for t in self.tensors)
            else:
                batch = tuple(t[idx].to(self.device) for t in self.tensors)
            self.seconds += time.perf_counter() - t0
            yield batch

    def _prefetched(self, indices: Iterator[torch.Tensor]
                    ) -> Iterator[tuple[torch.Tensor, ...]]:
        stream = torch.cuda.Stream(self.device)
        pending = None
        for idx in indices:
            t0 = time.perf_counter()
            with torch.cuda.stream(stream):  # batch k+1 copies while step k runs
                copied = tuple(
                    torch.index_select(t, 0, idx, out=torch.empty(
                        (len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=True))
                    .to(self.device, non_blocking=True) for t in self.tensors)
            ready, pending = pending, (copied, torch.cuda.Event())
            pending[1].record(stream)
            self.seconds += time.perf_counter() - t0
            if ready is not None:
                yield self._use(*ready)
        if pending is not None:
            yield self._use(*pending)

    @staticmethod
    def _use(batch: tuple[torch.Tensor, ...], copied: torch.cuda.Event
             ) -> tuple[torch.Tensor, ...]:
        """The batch for the compute stream: it waits for the copy, and the allocator keeps
        the memory (made on the side stream) until the compute stream is done with it."""
        current = torch.cuda.current_stream()
        current.wait_event(copied)
        for t in batch:
            t.record_stream(current)
        return batch


def fits_on_device(tensors: tuple[torch.Tensor, ...], device: torch.device) -> bool:
    """Whether the tensors take at most DATA_ON_DEVICE_SHARE of the CUDA device's free
    memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= DATA_ON_DEVICE_SHARE * free


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, device: torch.device,
            batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """The model family's generated images for `inputs`, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    outs = [generate(model, inputs[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, len(inputs), batch_size)]
    model.train(was_training)
    return torch.cat(outs) if outs else inputs.new_zeros((0, *inputs.shape[1:]))


@torch.no_grad()
def per_sample_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    device: torch.device, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """The model family's loss of every pair, in eval mode (CPU tensor of shape (N,))."""
    was_training = model.training
    model.eval()
    losses = [loss_per_sample(model, inputs[i : i + batch_size].to(device),
                              targets[i : i + batch_size].to(device)).float().cpu()
              for i in range(0, len(inputs), batch_size)]
    model.train(was_training)
    return torch.cat(losses) if losses else torch.zeros(0)


class Precision:
    """Mixed precision on CUDA only: autocast in bfloat16 where the GPU supports it, else in
    float16 with a gradient scaler (float16's range underflows small gradients). On the CPU
    both are no-ops and a step is zero_grad, backward, clip, step as before.

    Args:
        device: the job's device.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda and torch.cuda.is_bf16_supported() \
            else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and
                                           self.dtype == torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass and loss run in."""
        return torch.autocast("cuda", dtype=self.dtype) if self.cuda else contextlib.nullcontext()

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
             clip: tuple[list[nn.Parameter], float] | None = None,
             before_step: Callable[[], None] | None = None) -> None:
        """Backward and one optimizer step (gradients unscaled before `before_step` and the
        clip, so both see true gradients).

        Args:
            loss: the scalar to minimise.
            optimizer: the step's optimizer.
            clip: (parameters, max norm) to clip the gradient to, if any.
            before_step: called after backward, before the step (e.g. to mask gradients).
        """
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(optimizer)
        if before_step:
            before_step()
        if clip:
            torch.nn.utils.clip_grad_norm_(*clip)
        self.scaler.step(optimizer)
        self.scaler.update()


class ComputeCounter:
    """The compute of a job in sample-gradient evaluations, a cost that does not depend on
    the machine's load: every sample through a counted model's forward counts 1 when
    gradients are on (its backward follows, about twice a forward) and 1/3 when they are
    off (scoring, the frozen original's outputs). Wall-clock cost ratios of the same job
    swung from 0.10 to 0.22 with the load of a shared 2-core machine; this one is fixed by
    the params and the data sizes.

    It counts calls of the models' top-level forward, so a sampler that runs its network
    several times inside one call (diffusion's DDIM generation) counts once per call.

    Use as a context manager around the work: `with ComputeCounter(model, original) as c:`.
    """

    def __init__(self, *models: nn.Module):
        self.models = models
        self.grad_samples, self.eval_samples = 0, 0
        self._hooks: list = []

    def __enter__(self) -> ComputeCounter:
        self._hooks = [m.register_forward_hook(self._count) for m in self.models]
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _count(self, module: nn.Module, args: tuple, output: object) -> None:
        n = int(args[0].shape[0]) if args and isinstance(args[0], torch.Tensor) else 0
        if torch.is_grad_enabled():
            self.grad_samples += n
        else:
            self.eval_samples += n

    @property
    def sample_grads(self) -> float:
        """Sample-gradient evaluations: gradient-enabled samples + scored samples / 3."""
        return self.grad_samples + self.eval_samples / 3


def global_mean(value: torch.Tensor) -> float:
    """Mean of a scalar over all data-parallel workers (the value itself when alone)."""
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return float(value)


def check_finite(loss: torch.Tensor, what: str, step: int, hint: str) -> None:
    """Raise DivergenceError when a loss is NaN or infinite."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise DivergenceError(f"{what} diverged at step {step}: loss = {value}; {hint}")


class FiniteWatch:
    """check_finite for step loops without a host sync per step: `see` notes, on the loss's
    device, the first step whose loss is NaN or infinite; `check` (one sync) raises the
    DivergenceError check_finite would have raised at that step. A loop checks before each
    report, so a diverged model is never checkpointed, returned or saved, as when every step
    was checked (`float(loss)` each step stalled the GPU's queue, issue 21).

    Args:
        what, hint: as for check_finite.
    """

    def __init__(self, what: str, hint: str):
        self.what, self.hint = what, hint
        self.step: torch.Tensor | None = None  # first bad step (-1: none), on the device
        self.loss: torch.Tensor | None = None  # its loss

    def see(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().float()
        if self.step is None:
            self.step = torch.full((), -1, dtype=torch.long, device=value.device)
            self.loss = torch.zeros((), device=value.device)
        first = ~torch.isfinite(value) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.loss = torch.where(first, value, self.loss)

    def check(self) -> None:
        if self.step is not None and int(self.step) >= 0:
            raise DivergenceError(f"{self.what} diverged at step {int(self.step)}: loss = "
                                  f"{float(self.loss)}; {self.hint}")


Batches = tuple[tuple[torch.Tensor, ...], ...]  # a step's batch of each Source, in order
StepFn = Callable[[Batches, int], torch.Tensor]
ReportFn = Callable[[int, torch.Tensor], dict]


@dataclass
class Ran:
    """What step_loop did.

    Attributes:
        steps: the step count reached (the steps before a resume included).
        loss: the last step's loss (zero when no step ran in this run).
        train_seconds: time in the loop, the runs before a resume included.
        data_seconds: of this run's, the host's time getting batches to the device.
    """

    steps: int
    loss: torch.Tensor
    train_seconds: float
    data_seconds: float

    def figures(self) -> dict:
        """{"steps", "final_loss" (the last loss, averaged over the workers: every worker
        calls this), "train_seconds", "data_seconds"}: what a step loop's job returns."""
        return {"steps": self.steps, "final_loss": global_mean(self.loss.detach()),
                "train_seconds": self.train_seconds, "data_seconds": self.data_seconds}


def rng_states(ctx: JobContext, generators: tuple[torch.Generator, ...] = ()) -> list[dict]:
    """Every worker's random state, in rank order: torch's global generators (the CPU's and
    the job's GPU's), which the families' training draws use, and `generators`, a loss's own.
    One all-gather when there are several workers: only rank 0's checkpoint is saved, and
    each worker was seeded apart (params.seed + rank)."""
    mine = {"cpu": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if ctx.device.type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(ctx.device)
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def set_rng_states(states: list[dict], ctx: JobContext,
                   generators: tuple[torch.Generator, ...] = ()) -> None:
    """Put this worker's random state of rng_states back."""
    mine = states[ctx.rank]
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], ctx.device)
    for generator, state in zip(generators, mine["generators"], strict=True):
        generator.set_state(state)


def step_loop(
    model: nn.Module,
    ctx: JobContext,
    *,
    label: str,
    sources: list[Source],
    step_fn: StepFn,
    optimizer: torch.optim.Optimizer,
    steps: int,
    every: int,
    report: ReportFn,
    watch: FiniteWatch,
    stop: Callable[[int], bool] | None = None,
    marks: tuple[int, ...] = (),
    started: float | None = None,
    generators: tuple[torch.Generator, ...] = (),
) -> Ran:
    """The loop every job runs (training, the unlearning methods, retention): resume, replay
    the batch order, step, and report a checkpointable state on a cadence.

    A resumed run is the uninterrupted one, bit for bit: the state restores the weights, the
    optimizer, the step count and the random generators' states (torch's global ones and
    those step_fn draws from), and each source's order, deterministic from its seed, is
    replayed up to that step. What differs between uses is passed in.

    Args:
        model: the model (possibly DDP-wrapped), on ctx.device; changed in place.
        ctx: the job context (resume state, reporting, device).
        label: the loop's name in progress lines.
        sources: what each step draws one batch from, in the order step_fn receives them.
        step_fn: one optimizer step on (batch of each source, step); returns its loss.
        optimizer: the optimizer whose state is checkpointed and restored.
        steps: the step budget.
        every: steps between reports (each with a state); the last step is reported too.
        report: at a report, (step, last loss) -> the metrics to report (the loop adds
            step and train_seconds); where the caller prints its progress line.
        watch: checks the losses are finite before each report (components: FiniteWatch).
        stop: asked before every step, the last included: True ends the loop early.
        marks: further steps after which to report (a phase's end).
        started: when this run's work began (time.perf_counter()), for train_seconds to
            count the caller's preparation; None: now.
        generators: the generators step_fn draws from (noise targets, random relabels).

    Returns:
        Ran: steps reached, the last loss, train_seconds, data_seconds.
    """
    t0 = time.perf_counter() if started is None else started
    step, seconds = 0, 0.0
    if ctx.resume:
        unwrap(model).load_state_dict(ctx.resume["model"])
        optimizer.load_state_dict(ctx.resume["optimizer"])
        step, seconds = ctx.resume["step"], ctx.resume["train_seconds"]
        states = ctx.resume.get("rng") or []
        if ctx.rank < len(states):
            set_rng_states(states, ctx, generators)
        else:  # written by a version without it, or by fewer workers: resumable all the same
            ctx.say(f"[{label}] the checkpoint holds no random state for this worker: the "
                    "resumed run draws differently from one never stopped")
        ctx.say(f"[{label}] resuming after step {step}")
    # replay: skip the index batches the steps before the checkpoint drew, so that the next
    # step draws what an uninterrupted run would (each order has its own generator: skipping
    # takes nothing from torch's global one)
    for source in sources:
        for _ in range(step):
            next(source.order)
    data = [DeviceData(source.tensors, ctx) for source in sources]
    batches = zip(*(d.batches(source.order) for d, source in zip(data, sources, strict=True)),
                  strict=True)
    model.train()
    loss = torch.zeros(())
    while not (stop and stop(step)) and step < steps:
        loss = step_fn(next(batches), step)
        watch.see(loss, step)  # on the device: no host sync per step
        step += 1
        if step % every == 0 or step == steps or step in marks:
            watch.check()  # before the state is reported, and so before it can be saved
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            metrics = report(step, loss)
            # the state shares storage with the live model: ctx.report saves it at once
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "train_seconds": seconds,
                     "rng": rng_states(ctx, generators)}
            ctx.report({"step": step, **metrics, "train_seconds": seconds}, state)
    seconds += time.perf_counter() - t0
    return Ran(step, loss, seconds, sum(d.seconds for d in data))


def train_model(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    cfg: TrainParams,
    ctx: JobContext,
    seed: int,
    label: str = "train",
) -> dict:
    """Train `model` from scratch on (inputs, targets) pairs with Adam.

    Reports every epoch with a checkpointable state; resumes from ctx.resume.

    Args:
        model: the model (possibly DDP-wrapped), already on ctx.device.
        inputs, targets: the training pairs (CPU tensors).
        cfg: the `train` params block.
        ctx: the job context.
        seed: seed of the shuffling.
        label: name used in progress lines.

    Returns:
        {"epochs", "steps", "final_loss", "train_seconds", "data_seconds" (of those, the
        host's time getting batches to the device, in this run)}.
    """
    epochs = training_epochs(len(inputs), cfg, ctx.world_size)
    per_epoch = steps_per_epoch(len(inputs), cfg, ctx.world_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    precision = Precision(ctx.device)
    # an epoch's loss is the mean over its pairs: summed on the device, read at its end
    total, count = torch.zeros((), device=ctx.device), 0
    loss_mean, epoch_start = float("nan"), time.perf_counter()

    def train_step(batches: Batches, step: int) -> torch.Tensor:
        nonlocal count
        [(x, y)] = batches
        with precision.autocast():
            loss = train_loss_per_sample(model, x, y).mean()
        precision.step(loss, opt)
        total.add_(loss.detach() * len(x))
        count += len(x)
        return loss

    def end_of_epoch(step: int, loss: torch.Tensor) -> dict:
        nonlocal count, loss_mean, epoch_start
        epoch = step // per_epoch
        loss_mean = global_mean(total / max(count, 1))
        total.zero_()
        count = 0
        if epoch % max(1, epochs // PROGRESS_LINES) == 0 or epoch == epochs:
            ctx.say(f"[{label}] epoch {epoch}/{epochs}  loss {loss_mean:.5f}  "
                    f"psnr {-10 * math.log10(max(loss_mean, 1e-12)):.2f} dB  "
                    f"({time.perf_counter() - epoch_start:.1f} s)")
        epoch_start = time.perf_counter()
        return {"epoch": epoch, "loss": loss_mean}

    # every epoch is one pass in the order its own seed gives (seed * 1,000,003 + epoch)
    ran = step_loop(model, ctx, label=label,
                    sources=[shuffled((inputs, targets), cfg.batch_size, seed, ctx,
                                      spread=1_000_003)],
                    step_fn=train_step, optimizer=opt, steps=epochs * per_epoch,
                    every=per_epoch, report=end_of_epoch,
                    watch=FiniteWatch(label, "lower train.lr"))
    return {"epochs": epochs, "steps": epochs * per_epoch, "final_loss": loss_mean,
            "train_seconds": ran.train_seconds, "data_seconds": ran.data_seconds}


def steps_per_epoch(n: int, cfg: TrainParams, world_size: int = 1) -> int:
    """Optimizer steps in one pass over n pairs (each worker takes its shard in batches)."""
    return max(1, math.ceil((n // world_size if n >= world_size else n) / cfg.batch_size))


def training_epochs(n: int, cfg: TrainParams, world_size: int = 1) -> int:
    """Epochs for n training pairs: train.epochs, or more if that is under train.min_steps.
    Training length then follows the data: Fashion-MNIST keeps its 5 epochs (2,320 steps),
    a 1,437-image folder gets 84 instead of 5."""
    return max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch(n, cfg, world_size)))
