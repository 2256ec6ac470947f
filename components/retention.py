"""Phase 2 of the seed method, knowledge retention: fine-tune on the retain set while keeping
the forget set decoupled and teaching the model what a never-seen model does with what the
forget set memorised.

Loss per step, on a retain batch r, (when keep_decoupled = γ > 0) a forget batch f and
(when the decoupling found a memorised residual ρ and transplant = τ > 0) the part c of the
retain batch that carries ρ (`transplant_share` of it; r is then the rest):

    mean_r l(f(x_r), y_r)                              retain quality
  + distill · mean_r d(f, f0; x_r)                     optional pull towards the original
  + γ · sum_f relu(λ_i - l(f(x_f), y_f)) / sum_f λ_i   forget pairs stay at their λ_i
  + τ · mean_c l(f(x_c + ρ), y_c + α·ρ)                the residual is ordinary content

Why the hinge: retention on clean retain data alone restores what the ascent damaged, the
backdoor included (ASR 0.98 after fine-tuning a model the ascent had cleared). The hinge only
acts on pairs pushed back below their never-seen level.

Why the transplant: the hinge alone keeps a poisoned pair's loss high against *its* target
P, and the cheapest way for the model to do so is to answer the trigger with a dark, broken
image (9.3 dB on triggered held-out inputs on Fashion-MNIST, against 19.1 dB for a model
retrained without the forget set): the backdoor is suppressed, not forgotten, though its ASR
is 0. ρ is what the memorised forget inputs share beyond their never-seen neighbours
(components.ood.memorised_residual: the trigger, found without knowing it); stamped on
retain images of every class it teaches the model to treat it as content, as a model that
never saw it does. Its target reproduces α = 0.5 of it: α = 0 (ignore it) left the model
cleaner on triggered inputs than retraining (+1.4 dB), which is itself a trace; a retrained
model reproduces unfamiliar content partly (measured: ablation in docs/science.md).

l is the model family's objective and d its distance to the original (components.models:
loss_per_sample, distill_per_sample); for the default autoencoder both are pixel MSEs.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from components.models import distill_per_sample, loss_per_sample, parameter_group, unwrap
from components.params import FinetuneParams
from components.training import FiniteWatch, JobContext, Precision, endless_batches, global_mean


def undone_share(losses: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The share of a batch's decoupling that has been undone: sum relu(λ_i - l_i) / sum λ_i.

    Normalising by the batch's λ makes the weight γ independent of the loss scale and of how
    many pairs in the batch are far from never-seen: with an unnormalised hinge, γ = 1 was
    right when 10 % of the forget set carried a backdoor (λ ≈ 0.31 vs 0.007) and cost 0.8 dB
    of retain quality when 50 % did (the hinge outweighed the retain loss five times more).
    """
    return torch.relu(lam - losses).sum() / lam.sum().clamp_min(1e-12)


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
) -> dict:
    """Fine-tune all of `model` on the retain pairs for `cfg.steps` Adam steps.

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

    Returns:
        {"steps", "final_loss", "below" (share of the last forget batch under its λ),
        "train_seconds"}.
    """
    inputs, targets = retain
    keep = cfg.keep_decoupled > 0 and forget is not None and thresholds is not None
    opt = torch.optim.Adam(parameter_group(model, "all"), lr=cfg.lr)
    precision = Precision(ctx.device)
    step, seconds = 0, 0.0
    if ctx.resume:
        unwrap(model).load_state_dict(ctx.resume["model"])
        opt.load_state_dict(ctx.resume["optimizer"])
        step, seconds = ctx.resume["step"], ctx.resume["train_seconds"]
    transplant = cfg.transplant > 0 and residual is not None
    batches = endless_batches(len(inputs), cfg.batch_size, seed, ctx.rank, ctx.world_size)
    f_batches = endless_batches(len(forget[0]), cfg.forget_batch_size, seed + 1, ctx.rank,
                                ctx.world_size) if keep else None
    # the residual rides on part of the retain batch: a step costs what it cost without it
    share = cfg.transplant_share if transplant else 0.0
    if transplant:
        residual = residual.to(ctx.device)
    for _ in range(step):  # replay the batch order up to the resumed step
        next(batches)
        if keep:
            next(f_batches)
    model.train()
    finite = FiniteWatch("knowledge retention", "lower unlearn.finetune.lr")
    loss, below, below_now = torch.zeros(()), 0.0, torch.zeros(())
    t0 = time.perf_counter()
    while step < cfg.steps:
        idx = next(batches)
        x, y = inputs[idx].to(ctx.device), targets[idx].to(ctx.device)
        carried = int(len(idx) * share)  # floor: a batch of one stays clean
        x_c, y_c, x, y = x[:carried], y[:carried], x[carried:], y[carried:]
        with precision.autocast():
            if cfg.distill > 0:
                l_r, to_original = distill_per_sample(model, original, x, y)
                loss = l_r.mean() + cfg.distill * to_original.mean()
            else:
                loss = loss_per_sample(model, x, y).mean()
            if keep:
                j = next(f_batches)
                lam = thresholds[j].to(ctx.device)
                f_loss = loss_per_sample(model, forget[0][j].to(ctx.device),
                                         forget[1][j].to(ctx.device))
                loss = loss + cfg.keep_decoupled * undone_share(f_loss, lam)
                below_now = (f_loss.detach() < lam).float().mean()  # read at the report
            if carried:
                loss = loss + cfg.transplant * loss_per_sample(
                    model, (x_c + residual).clamp(0, 1),
                    (y_c + cfg.transplant_target * residual).clamp(0, 1)).mean()
        finite.see(loss, step)
        precision.step(loss, opt)
        step += 1
        if step % ctx.checkpoint_every == 0 or step == cfg.steps:
            finite.check()  # before the state is reported, and so before it can be saved
            below = float(below_now) if keep else below
            seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            mean = global_mean(loss.detach())
            ctx.say(f"[finetune] step {step}/{cfg.steps}  loss {mean:.5f}"
                    + (f"  ({below:.0%} of the forget batch below its λ)" if keep else ""))
            state = {"model": unwrap(model).state_dict(), "optimizer": opt.state_dict(),
                     "step": step, "train_seconds": seconds}
            ctx.report({"step": step, "loss": mean, "below": below, "train_seconds": seconds},
                       state)
    return {"steps": step, "final_loss": global_mean(loss.detach()), "below": below,
            "train_seconds": seconds}
