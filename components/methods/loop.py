"""The joint baselines' use of the step loop (components.training.step_loop): a batch of
retain and a batch of forget pairs each step, one loss, one optimizer."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from components.methods.base import UnlearnData
from components.training import FiniteWatch, JobContext, Precision, global_mean, shuffled, step_loop

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
    generators: tuple[torch.Generator, ...] = (),
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
        generators: the generators loss_fn draws from, checkpointed with the loop's state.

    Returns:
        {"steps", "final_loss", "train_seconds", "data_seconds" (the host's time getting
        batches to the device, in this run)}.
    """
    precision = Precision(ctx.device)

    def joint_step(batches: tuple, step: int) -> torch.Tensor:
        retain, forget = batches
        with precision.autocast():
            loss = loss_fn(model, retain, forget, step)
        precision.step(loss, optimizer, clip, before_step)
        return loss

    def progress(step: int, loss: torch.Tensor) -> dict:
        mean = global_mean(loss.detach())
        ctx.say(f"[{label}] step {step}/{steps}  loss {mean:.5f}")
        return {"loss": mean}

    ran = step_loop(model, ctx, label=label,
                    sources=[shuffled(data.retain, batch_size, seed, ctx),
                             shuffled(data.forget, batch_size, seed + 1, ctx)],
                    step_fn=joint_step, optimizer=optimizer, steps=steps,
                    every=ctx.checkpoint_every, report=progress,
                    watch=FiniteWatch(label, f"lower unlearn.{label}.lr"),
                    generators=generators)
    return ran.figures()


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Average gradients over the data-parallel workers (nothing when alone). For methods
    whose loss bypasses the DDP wrapper (encoder embeddings), which DDP does not sync."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()
