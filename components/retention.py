"""Phase 2 of the seed method, knowledge retention: fine-tune on the retain set.

Loss: mean_r l(f(T(x_r)), y_r) + distill * mean_r ||f(T(x_r)) - f0(T(x_r))||^2 / n, where f0 is
the original model (the distillation term pulls retain quality back to the original's).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from components.models import unwrap
from components.params import FinetuneParams
from components.training import (
    JobContext,
    check_finite,
    endless_batches,
    global_mean,
    sample_losses,
)


def retain_knowledge(
    model: nn.Module,
    original: nn.Module,
    retain: tuple[torch.Tensor, torch.Tensor],
    cfg: FinetuneParams,
    ctx: JobContext,
    seed: int,
) -> dict:
    """Fine-tune all of `model` on the retain pairs for `cfg.steps` Adam steps.

    Args:
        model: the decoupled model (possibly DDP-wrapped), on ctx.device.
        original: the frozen original model (used when cfg.distill > 0).
        retain: (inputs, targets) of the retain set.
        cfg: the `unlearn.finetune` block.
        ctx: the job context (resume state, reporting).
        seed: seed of the batch order.

    Returns:
        {"steps", "final_loss", "train_seconds"}.
    """
    inputs, targets = retain
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, seconds = 0, 0.0
    if ctx.resume:
        unwrap(model).load_state_dict(ctx.resume["model"])
        opt.load_state_dict(ctx.resume["optimizer"])
        step, seconds = ctx.resume["step"], ctx.resume["train_seconds"]
    batches = endless_batches(len(inputs), cfg.batch_size, seed, ctx.rank, ctx.world_size)
    for _ in range(step):  # replay the batch order up to the resumed step
        next(batches)
    model.train()
    loss = torch.zeros(())
    t0 = time.perf_counter()
    while step < cfg.steps:
        idx = next(batches)
        x, y = inputs[idx].to(ctx.device), targets[idx].to(ctx.device)
        out = model(x)
        loss = sample_losses(out, y).mean()
        if cfg.distill > 0:
            with torch.no_grad():
                teacher = original(x)
            loss = loss + cfg.distill * sample_losses(out, teacher).mean()
        check_finite(loss, "knowledge retention", step, "lower unlearn.finetune.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % ctx.checkpoint_every == 0 or step == cfg.steps:
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            mean = global_mean(loss.detach())
            ctx.say(f"[finetune] step {step}/{cfg.steps}  retain loss {mean:.5f}")
            state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                     "step": step, "train_seconds": seconds}
            ctx.report({"step": step, "retain_loss": mean, "train_seconds": seconds}, state)
    return {"steps": step, "final_loss": global_mean(loss.detach()), "train_seconds": seconds}
