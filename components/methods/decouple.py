"""The seed method's phase 1, decoupling (Varshney & Torra 2026; docs/science.md).

Clipped SGD *ascends* the I2I loss on the forget set, on one parameter group, until the
forget samples look never-seen: their loss reaches λ (components.ood). Phase 2 (the
`finetune` stage, components.retention) then restores retain quality while keeping every
forget sample's loss at or above its λ.

Two readings, both selectable (`unlearn.decouple.threshold`, `.stop`, and
`unlearn.finetune.keep_decoupled`):
- default: a λ_i per pair (the estimated loss of a never-seen model on that pair), a
  per-sample stop rule (a sample leaves the ascent once its loss reaches its λ_i), and a
  retention phase that keeps each forget sample at or above its λ_i;
- `decouple_literal` (the paper read literally): one λ = the held-out loss quantile, stop
  when the *mean* forget loss reaches it, then plain fine-tuning. On Fashion-MNIST it leaves
  the planted backdoor in place (reports/benchmark.md).

Optional Gaussian noise on the released weights gives the (ε, δ) bound of
components.privacy, with the step budget T as the sensitivity's step count; the noise is
drawn from the OS's entropy, and what was applied is recorded for the certificate.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from components.certificate import ascent_record
from components.methods.base import RETENTION_PLAN, Method, UnlearnData, register
from components.models import loss_per_sample, parameter_group
from components.ood import decoupling_thresholds, memorised_residual
from components.params import DecoupleParams, Params
from components.privacy import ascent_sensitivity, gaussian_sigma, noise_generator
from components.training import (
    FiniteWatch,
    JobContext,
    Precision,
    check_finite,
    per_sample_loss,
    shuffled,
    step_loop,
)


def thresholds(data: UnlearnData, cfg: DecoupleParams, device: torch.device
               ) -> tuple[torch.Tensor, dict]:
    """λ_i of every forget pair for this config."""
    return decoupling_thresholds(data.original, data.forget, data.heldout, cfg.threshold,
                                 cfg.quantile, device, cfg.pool_size)


def ascend(model: nn.Module, data: UnlearnData, cfg: DecoupleParams, seed: int,
           ctx: JobContext, retention_continues: bool = False,
           find_residual: bool = False) -> dict:
    """Clipped gradient ascent on the forget set until the stop rule holds or T steps pass.

    Args:
        model: the model to unlearn (possibly DDP-wrapped), on ctx.device; changed in place.
        data: forget / retain / held-out pairs and the frozen original.
        cfg: the decoupling block (threshold rule, stop rule, step, clip, budget, noise).
        seed: seed of the batch order and the probe (the noise has its own, from the OS).
        ctx: the job context.
        retention_continues: the retention phase keeps pushing samples below their λ, so a
            spent budget is expected rather than a warning.
        find_residual: look for what the memorised forget pairs share, for the retention
            phase to transplant (components.ood.memorised_residual).

    Returns:
        lambda (mean λ), steps, reached (the stop rule was met), forget_loss (last probe),
        below (share of probe samples still under their λ), sigma (0 without noise),
        train_seconds, data_seconds (of those, getting batches to the device), `privacy`
        (with noise: what the certificate is written from), and
        memorised / coherent_pixels (with find_residual: the forget pairs the original
        memorised and the pixels their shared residual holds), and RETENTION_PLAN: the λ_i
        the retention phase keeps and that residual.
    """
    t0 = time.perf_counter()
    inputs, targets = data.forget
    lam, figures = thresholds(data, cfg, ctx.device)
    residual = None
    if find_residual:  # computed from the original, before the ascent moves anything
        residual, found = memorised_residual(data.original, data.forget, data.heldout, lam,
                                             ctx.device, cfg.memorised_ratio, cfg.coherence,
                                             cfg.pool_size)
        figures.update(found)
        ctx.say(f"[decouple] {found['memorised']} memorised forget pairs; their shared "
                f"residual holds {found['coherent_pixels']} pixels")
    group = parameter_group(model, cfg.params)
    opt = torch.optim.SGD(group, lr=cfg.lr)
    precision = Precision(ctx.device)
    # the same probe subset on every worker, so that every worker takes the same stop decision
    probe = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    probe = probe[: cfg.probe_size]
    hint = "lower unlearn.decouple.lr or unlearn.decouple.clip_norm"
    reached, probe_loss, below = False, float("nan"), 1.0

    def stop_rule(step: int) -> bool:
        """Probe the forget loss on the check cadence and at the budget's end; True once the
        stop rule holds."""
        nonlocal reached, probe_loss, below
        if step % cfg.check_every == 0 or step >= cfg.max_steps:
            losses = per_sample_loss(model, inputs[probe], targets[probe], ctx.device)
            check_finite(losses.mean(), "decoupling (gradient ascent)", step, hint)
            probe_loss, below = float(losses.mean()), float((losses < lam[probe]).float().mean())
            reached = probe_loss >= float(lam[probe].mean()) if cfg.stop == "mean" else below == 0
        return reached

    def ascent_step(batches: tuple, step: int) -> torch.Tensor:
        [(x, y, lam_batch)] = batches
        with precision.autocast():
            per_sample = loss_per_sample(model, x, y)
        if cfg.stop == "sample":  # samples already at their λ_i leave the ascent
            per_sample = per_sample * (per_sample.detach() < lam_batch)
        loss = -per_sample.mean()
        precision.step(loss, opt, clip=(group, cfg.clip_norm))
        return loss

    def progress(step: int, loss: torch.Tensor) -> dict:
        ctx.say(f"[decouple] step {step}/{cfg.max_steps}  forget loss {probe_loss:.5f} "
                f"(mean λ {figures['lambda']:.5f}, {below:.0%} of samples below theirs)")
        return {"forget_loss": probe_loss, "below": below}

    ran = step_loop(model, ctx, label="decouple",
                    sources=[shuffled((inputs, targets, lam), cfg.batch_size, seed, ctx)],
                    step_fn=ascent_step, optimizer=opt, steps=cfg.max_steps,
                    every=ctx.checkpoint_every, report=progress,
                    watch=FiniteWatch("decoupling (gradient ascent)", hint), stop=stop_rule,
                    started=t0)
    step = ran.steps
    if reached:
        ctx.say(f"[decouple] stop rule ({cfg.stop}) met after {step} steps: forget loss "
                f"{probe_loss:.5f}, mean λ {figures['lambda']:.5f}")
    elif retention_continues:
        ctx.say(f"[decouple] budget of {cfg.max_steps} steps spent: {below:.0%} of the probe is "
                f"still below its λ (forget loss {probe_loss:.5f}); retention keeps pushing them")
    else:
        ctx.say(f"[decouple] WARNING: the budget of {cfg.max_steps} steps ended before the stop "
                f"rule ({cfg.stop}) held: {below:.0%} of the probe is still below its λ "
                f"(forget loss {probe_loss:.5f}, mean λ {figures['lambda']:.5f}); raise "
                "unlearn.decouple.max_steps or lr")
    t0 = time.perf_counter()
    sigma = add_noise(group, cfg, ctx)
    seconds = ran.train_seconds + time.perf_counter() - t0
    return {**figures, "steps": step, "reached": reached, "forget_loss": probe_loss,
            "below": below, "sigma": sigma, "train_seconds": seconds,
            "data_seconds": ran.data_seconds, **ascent_record(cfg, sigma, step),
            RETENTION_PLAN: {"thresholds": lam, "residual": residual}}


def add_noise(group: list[nn.Parameter], cfg: DecoupleParams, ctx: JobContext) -> float:
    """Add N(0, σ²) to the moved weights for the (ε, δ) bound; returns σ (0: no noise asked).

    σ is the analytic Gaussian mechanism's for Δ = η·T·C with the budget T in force (the
    steps taken depend on the forget set, so they cannot bound it). The generator's seed
    comes from the OS, the same on every worker, and is never logged or saved."""
    if cfg.noise.epsilon is None:
        return 0.0
    sens = ascent_sensitivity(cfg.lr, cfg.max_steps, cfg.clip_norm)
    sigma = gaussian_sigma(cfg.noise.epsilon, cfg.noise.delta, sens)
    gen = noise_generator(ctx.device)
    with torch.no_grad():
        for p in group:
            p.add_(torch.randn(p.shape, generator=gen).to(p) * sigma)
    ctx.say(f"[decouple] Gaussian noise σ = {sigma:.3g} for (ε={cfg.noise.epsilon}, "
            f"δ={cfg.noise.delta}, Δ = η·T·C = {sens:.3g})")
    return sigma


def decouple(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """The `decouple` method's forgetting phase (per-pair λ, per-sample stop by default) and
    what its retention phase needs: λ_i, and the memorised residual to transplant."""
    retention = params.unlearn.finetune
    return ascend(model, data, params.unlearn.decouple, params.seed, ctx,
                  retention_continues=retention.keep_decoupled > 0 or retention.transplant > 0,
                  find_residual=retention.transplant > 0)


def decouple_literal(model: nn.Module, data: UnlearnData, params: Params,
                     ctx: JobContext) -> dict:
    """The literal reading: one held-out-quantile λ, stop when the mean forget loss reaches it."""
    cfg = params.unlearn.decouple.model_copy(
        update={"threshold": "quantile", "stop": "mean",
                "quantile": params.unlearn.decouple_literal.quantile,
                "max_steps": params.unlearn.decouple_literal.max_steps})
    return ascend(model, data, cfg, params.seed, ctx)


METHOD = Method(
    name="decouple",
    forget=decouple,
    retention=True,
    keeps_decoupling=True,
    summary="seed method: ascend each forget pair to the loss a never-seen pair would have, "
            "then retain knowledge while keeping every forget pair there",
)
LITERAL = Method(
    name="decouple_literal",
    forget=decouple_literal,
    retention=True,
    keeps_decoupling=False,
    summary="seed method read literally: ascend until the mean forget loss reaches the held-out "
            "quantile, then fine-tune on the retain set",
)
register(METHOD)
register(LITERAL)
