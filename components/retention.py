"""Phase 2 of the seed method, knowledge retention: fine-tune on the retain set while keeping
the forget set decoupled and teaching the model what a never-seen model does with what the
forget set memorised.

Loss per step, on a retain batch r, (when keep_decoupled = γ > 0) a forget batch f and
(when the decoupling found a memorised residual ρ and transplant = τ > 0) the part c of the
retain batch that carries ρ (`transplant_share` of it; r is then the rest):

    mean_r l(f(x_r), y_r)                              retain quality
  + distill · mean_r d(f, f0; x_r)                     optional pull towards the original
  + γ · mean_f relu(λ_i - l(f(x_f), y_f)) / λ_i        forget pairs stay at their λ_i
  + τ · mean_c l(f(x_c + ρ), y_c + α·ρ)                the residual is ordinary content

Why the hinge: retention on clean retain data alone restores what the ascent damaged, the
backdoor included (ASR 0.98 after fine-tuning a model the ascent had cleared). The hinge only
acts on pairs pushed back below their never-seen level.

Why per pair, each relative to its own λ_i: the previous form, Σ relu(λ_i - l_i) / Σ λ_i
over the batch, let a batch's poisoned pairs (λ ≈ 0.31) set the scale for its clean ones
(λ ≈ 0.007): with a backdoor in a tenth of the forget set the clean pairs felt about a sixth
of γ, without one all of it, and the γ that suited the first over-forgot the others (a class
without a backdoor: forget PSNR 19.5 dB vs 20.4 retrained, OOD AUROC 0.78 vs 0.65; a small
set trained long: MIA AUC 0.44 vs 0.50, failed in 3 seeds of 3). Relative per pair, every
pair weighs the same whatever the others' scale (docs/science.md, "The default `decouple`").

Why the transplant: a hinge strong enough on the poisoned pairs keeps their loss high
against *their* target P, and the cheapest way for the model to do so is to answer the
trigger with a dark, broken image (9.3 dB on triggered held-out inputs on Fashion-MNIST,
against 19.1 dB for a model retrained without the forget set): the backdoor is suppressed,
not forgotten, though its ASR is 0; the per-pair hinge alone is too weak on them (ASR 0.70).
ρ is what the memorised forget inputs share beyond their never-seen neighbours
(components.ood.memorised_residual: the trigger, found without knowing it); stamped on
retain images of every class it teaches the model to treat it as content, as a model that
never saw it does. Its target reproduces α = 0.5 of it: α = 0 (ignore it) left the model
cleaner on triggered inputs than retraining (+1.4 dB), which is itself a trace; a retrained
model reproduces unfamiliar content partly (measured: docs/science.md, "Ablations").

Why a budget: unlearning exists because retraining costs too much, so retention's length is
capped at `budget` (6.5 %) of the sample gradients retraining on the retain set would take
under the `train` block; with the forgetting phase's scoring the default method then stays
under a tenth of a retraining on a large set (Fashion-MNIST: 98 of 120 steps) and a small
one (2,000 images trained 100 epochs: 58 steps), where a fixed 120 steps cost 0.12-0.15.

l is the model family's objective and d its distance to the original (components.models:
loss_per_sample, distill_per_sample); for the default autoencoder both are pixel MSEs.
"""

from __future__ import annotations

import torch
from torch import nn

from components.models import distill_per_sample, loss_per_sample, parameter_group
from components.params import FinetuneParams, TrainParams
from components.training import (
    FiniteWatch,
    JobContext,
    Precision,
    global_mean,
    shuffled,
    step_loop,
    training_epochs,
)


def undone_share(losses: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The mean share of its decoupling each pair has undone: mean relu(λ_i - l_i) / λ_i.

    Relative per pair, so that γ means the same for a clean pair (λ ≈ 0.007) in a batch with
    poisoned ones (λ ≈ 0.31) as in a batch without (see the module's docstring)."""
    return (torch.relu(lam - losses) / lam.clamp_min(1e-12)).mean()


def retention_steps(cfg: FinetuneParams, n_retain: int, retrain: TrainParams | None,
                    keep: bool) -> int:
    """Steps of the retention phase: `cfg.steps`, cut to `cfg.budget` of the sample
    gradients that retraining on the n_retain pairs under `retrain` would take (its epochs x
    n_retain), a step costing a retain batch plus, when the forget set is kept, a forget
    batch. None for `retrain` or `cfg.budget`: no cap."""
    if cfg.budget is None or retrain is None or cfg.steps == 0:
        return cfg.steps
    retraining = training_epochs(n_retain, retrain) * n_retain
    per_step = cfg.batch_size + (cfg.forget_batch_size if keep else 0)
    return max(1, min(cfg.steps, int(cfg.budget * retraining / per_step)))


def retain_knowledge(
    model: nn.Module,
    original: nn.Module,
    retain: tuple[torch.Tensor, torch.Tensor],
    cfg: FinetuneParams,
    ctx: JobContext,
    seed: int,
    forget: tuple[torch.Tensor, torch.Tensor] | None = None,
    thresholds: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    retrain: TrainParams | None = None,
) -> dict:
    """Fine-tune all of `model` on the retain pairs for `cfg.steps` Adam steps (fewer when
    the budget against retraining under `retrain` says so: retention_steps).

    Args:
        model: the decoupled model (possibly DDP-wrapped), on ctx.device; changed in place.
        original: the frozen original model (used when cfg.distill > 0).
        retain: (inputs, targets) of the retain set.
        cfg: the `unlearn.finetune` block.
        ctx: the job context (resume state, reporting).
        seed: seed of the batch order.
        forget: (inputs, targets) of the forget set, to keep decoupled (None: plain retention).
        thresholds: λ_i of every forget pair (with `forget`).
        residual: what the memorised forget inputs share (components.ood.memorised_residual),
            transplanted onto retain inputs as content; None: no transplant.
        retrain: the `train` block a retraining would use, for the budget (None: no cap).

    Returns:
        {"steps", "final_loss", "below" (share of the last reported forget batch under its
        λ), "train_seconds", "data_seconds" (of those, the host's time getting batches to
        the device, in this run)}.
    """
    keep = cfg.keep_decoupled > 0 and forget is not None and thresholds is not None
    total = retention_steps(cfg, len(retain[0]), retrain, keep)
    opt = torch.optim.Adam(parameter_group(model, "all"), lr=cfg.lr)
    precision = Precision(ctx.device)
    transplant = cfg.transplant > 0 and residual is not None
    # the residual rides on part of the retain batch: a step costs what it cost without it
    share = cfg.transplant_share if transplant else 0.0
    if transplant:
        residual = residual.to(ctx.device)
    sources = [shuffled(retain, cfg.batch_size, seed, ctx)]
    if keep:  # each forget pair with its λ_i
        sources.append(shuffled((*forget, thresholds), cfg.forget_batch_size, seed + 1, ctx))
    below, below_now = 0.0, torch.zeros(())

    def retention_step(batches: tuple, step: int) -> torch.Tensor:
        nonlocal below_now
        x, y = batches[0]
        carried = int(len(x) * share)  # floor: a batch of one stays clean
        x_c, y_c, x, y = x[:carried], y[:carried], x[carried:], y[carried:]
        with precision.autocast():
            if cfg.distill > 0:
                l_r, to_original = distill_per_sample(model, original, x, y)
                loss = l_r.mean() + cfg.distill * to_original.mean()
            else:
                loss = loss_per_sample(model, x, y).mean()
            if keep:
                x_f, y_f, lam = batches[1]
                f_loss = loss_per_sample(model, x_f, y_f)
                loss = loss + cfg.keep_decoupled * undone_share(f_loss, lam)
                below_now = (f_loss.detach() < lam).float().mean()  # read at the report
            if carried:
                loss = loss + cfg.transplant * loss_per_sample(
                    model, (x_c + residual).clamp(0, 1),
                    (y_c + cfg.transplant_target * residual).clamp(0, 1)).mean()
        precision.step(loss, opt)
        return loss

    def progress(step: int, loss: torch.Tensor) -> dict:
        nonlocal below
        below = float(below_now) if keep else below
        mean = global_mean(loss.detach())
        ctx.say(f"[finetune] step {step}/{total}  loss {mean:.5f}"
                + (f"  ({below:.0%} of the forget batch below its λ)" if keep else ""))
        return {"loss": mean, "below": below}

    ran = step_loop(model, ctx, label="finetune", sources=sources, step_fn=retention_step,
                    optimizer=opt, steps=total, every=ctx.checkpoint_every, report=progress,
                    watch=FiniteWatch("knowledge retention", "lower unlearn.finetune.lr"))
    return {**ran.figures(), "below": below}
