"""The step loop the joint baselines share: batches of retain and forget pairs, one loss,
one optimizer, with resume, progress lines, checkpoints and a divergence check (on the
checkpoint cadence, before every report: components.training.FiniteWatch)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from components.methods.base import UnlearnData
from components.models import unwrap
from components.training import (
    DeviceData,
    FiniteWatch,
    JobContext,
    Precision,
    endless_batches,
    global_mean,
)

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch, Batch, int], torch.Tensor]


def run_steps(
    model: nn.Module,
    data: UnlearnData,
    ctx: JobContext,
    *,
    label: str,
    steps: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    seed: int,
    batch_size: int = 128,
    clip: tuple[list[nn.Parameter], float] | None = None,
    before_step: Callable[[], None] | None = None,
) -> dict:
    """Run `steps` optimizer steps of loss_fn(model, retain_batch, forget_batch, step).

    Args:
        model: the model (possibly DDP-wrapped), on ctx.device; changed in place.
        data: the unlearning data (retain and forget pairs are batched here).
        ctx: the job context.
        label: the method's name in progress lines.
        steps: number of optimizer steps.
        optimizer: over the parameters the method may change.
        loss_fn: the objective to minimise for one pair of batches.
        seed: seed of the batch order.
        batch_size: size of both batches.
        clip: (parameters, max norm) to clip the gradient to, if any.
        before_step: called after backward, before the step (e.g. to mask gradients).

    Returns:
        {"steps", "final_loss", "train_seconds", "data_seconds" (the host's time getting
        batches to the device, in this run)}.
    """
    step, seconds = 0, 0.0
    if ctx.resume:
        unwrap(model).load_state_dict(ctx.resume["model"])
        optimizer.load_state_dict(ctx.resume["optimizer"])
        step, seconds = ctx.resume["step"], ctx.resume["train_seconds"]
    r_batches = endless_batches(len(data.retain[0]), batch_size, seed, ctx.rank, ctx.world_size)
    f_batches = endless_batches(len(data.forget[0]), batch_size, seed + 1, ctx.rank,
                                ctx.world_size)
    for _ in range(step):
        next(r_batches), next(f_batches)
    model.train()
    precision = Precision(ctx.device)
    retain, forget = DeviceData(data.retain, ctx), DeviceData(data.forget, ctx)
    r_batches, f_batches = retain.batches(r_batches), forget.batches(f_batches)
    finite = FiniteWatch(label, f"lower unlearn.{label}.lr")
    loss = torch.zeros(())
    t0 = time.perf_counter()
    while step < steps:
        rb, fb = next(r_batches), next(f_batches)
        with precision.autocast():
            loss = loss_fn(model, rb, fb, step)
        finite.see(loss, step)
        precision.step(loss, optimizer, clip, before_step)
        step += 1
        if step % ctx.checkpoint_every == 0 or step == steps:
            finite.check()  # before the state is reported, and so before it can be saved
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            mean = global_mean(loss.detach())
            ctx.say(f"[{label}] step {step}/{steps}  loss {mean:.5f}")
            state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "train_seconds": seconds}
            ctx.report({"step": step, "loss": mean, "train_seconds": seconds}, state)
    return {"steps": step, "final_loss": global_mean(loss.detach()), "train_seconds": seconds,
            "data_seconds": retain.seconds + forget.seconds}


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average gradients over the data-parallel workers (nothing when alone). For methods
    whose loss bypasses the DDP wrapper (encoder embeddings), which DDP does not sync."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
