"""The seed method's phase 1, decoupling (Varshney & Torra 2026; DESIGN.md §2.1).

λ is the q-quantile of the original model's per-sample loss on held-out data: the loss
level at which a sample looks out-of-distribution to this model. Clipped SGD *ascends*
the I2I loss on the forget set, on one parameter group, until the mean forget loss
reaches λ (or the step budget ends, which is reported loudly). Optional Gaussian noise
on the released weights gives the (ε, δ) bound of components.privacy.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from components.methods.base import Method, UnlearnData
from components.models import parameter_group, unwrap
from components.params import Params
from components.privacy import ascent_sensitivity, gaussian_sigma
from components.training import (
    JobContext,
    check_finite,
    endless_batches,
    per_sample_loss,
    sample_losses,
)


def calibrate_lambda(original: nn.Module, heldout: tuple[torch.Tensor, torch.Tensor],
                     quantile: float, device: torch.device) -> float:
    """λ = the `quantile` of the original model's per-sample loss on held-out pairs."""
    losses = per_sample_loss(original, heldout[0], heldout[1], device)
    return float(torch.quantile(losses, quantile))


def decouple(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Ascend the forget loss on one parameter group until its mean reaches λ.

    Args:
        model: the model to unlearn (possibly DDP-wrapped), on ctx.device; changed in place.
        data: forget / retain / held-out pairs and the frozen original.
        params: all params (reads `unlearn.decouple` and `seed`).
        ctx: the job context.

    Returns:
        Figures of the phase: lambda, steps, reached (the stop rule was met),
        forget_loss (the last probe), sigma (0 without noise), train_seconds.
    """
    cfg = params.unlearn.decouple
    inputs, targets = data.forget
    step, seconds = 0, 0.0
    if ctx.resume:
        unwrap(model).load_state_dict(ctx.resume["model"])
        step, seconds, lam = ctx.resume["step"], ctx.resume["train_seconds"], ctx.resume["lambda"]
    else:
        lam = calibrate_lambda(data.original, data.heldout, cfg.quantile, ctx.device)
    group = parameter_group(model, cfg.params)
    opt = torch.optim.SGD(group, lr=cfg.lr)
    # the same probe subset on every worker, so that every worker takes the same stop decision
    probe = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(params.seed))
    probe = probe[: cfg.probe_size]
    batches = endless_batches(len(inputs), cfg.batch_size, params.seed, ctx.rank, ctx.world_size)
    for _ in range(step):
        next(batches)
    model.train()
    t0 = time.perf_counter()
    hint = "lower unlearn.decouple.lr or unlearn.decouple.clip_norm"
    while True:
        probe_loss = float(per_sample_loss(model, inputs[probe], targets[probe], ctx.device).mean())
        check_finite(torch.tensor(probe_loss), "decoupling (gradient ascent)", step, hint)
        reached = probe_loss >= lam
        if reached or step >= cfg.max_steps:
            break
        idx = next(batches)
        x, y = inputs[idx].to(ctx.device), targets[idx].to(ctx.device)
        loss = sample_losses(model(x), y).mean()
        opt.zero_grad(set_to_none=True)
        (-loss).backward()
        torch.nn.utils.clip_grad_norm_(group, cfg.clip_norm)
        opt.step()
        step += 1
        if step % ctx.checkpoint_every == 0:
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            ctx.say(f"[decouple] step {step}/{cfg.max_steps}  forget loss {probe_loss:.5f} "
                    f"(λ = {lam:.5f})")
            state = {"model": unwrap(model).state_dict(), "step": step,
                     "train_seconds": seconds, "lambda": lam}
            ctx.report({"step": step, "forget_loss": probe_loss, "lambda": lam}, state)
    seconds += time.perf_counter() - t0
    if reached:
        ctx.say(f"[decouple] stop rule met after {step} steps: forget loss {probe_loss:.5f} "
                f">= λ {lam:.5f}")
    else:
        ctx.say(f"[decouple] WARNING: step budget of {cfg.max_steps} spent before the forget loss "
                f"reached λ ({probe_loss:.5f} < {lam:.5f}); raise unlearn.decouple.max_steps or lr")
    sigma = 0.0
    if cfg.noise.epsilon is not None:
        sens = ascent_sensitivity(cfg.lr, cfg.max_steps, cfg.clip_norm)
        sigma = gaussian_sigma(cfg.noise.epsilon, cfg.noise.delta, sens)
        gen = torch.Generator().manual_seed(params.seed + 1)  # identical noise on every worker
        with torch.no_grad():
            for p in group:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * sigma)
        ctx.say(f"[decouple] Gaussian noise σ = {sigma:.3g} for (ε={cfg.noise.epsilon}, "
                f"δ={cfg.noise.delta})")
    return {"lambda": lam, "steps": step, "reached": reached, "forget_loss": probe_loss,
            "sigma": sigma, "train_seconds": seconds}


METHOD = Method(
    name="decouple",
    forget=decouple,
    retention=True,
    summary="seed method: clipped gradient ascent on the forget set until its loss reaches the "
            "held-out quantile λ, then knowledge retention on the retain set",
)
