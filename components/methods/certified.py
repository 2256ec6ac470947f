"""`certified`: unlearning whose (ε, δ) certificate covers the released model.

Koloskova, Allouah, Jha, Guerraoui & Koyejo, "Certified Unlearning for Neural Networks"
(ICML 2025, arXiv 2506.06985), gradient-clipping variant with λ = 0:

1. project the start model onto the ball of radius C0 around a public initialisation (a
   fresh model from the committed seed: it depends on no data);
2. T steps of SGD on the retain set only, each gradient clipped to C1, each step followed by
   N(0, σ²) on every weight, σ from the accounting of components.privacy.iteration_sigma;
3. post-processing that never reads the forget set nor the original: the weights are
   projected onto the ball again, then fine-tuned on the retain set without noise.

Whatever the original was, two such runs from any two starts in the ball are (ε, δ)-close
(privacy amplification by iteration), so the released model is (ε, δ)-indistinguishable from
the same algorithm run from a model that never saw the forget set: the certifying algorithm
of the paper's Definition 2.1. No assumption on the loss (any model family) is needed;
docs/certificate.md gives the derivation and what the figures cost.

The noise comes from the OS's entropy (components.privacy.noise_generator): it is neither
reproducible from the params nor saved with checkpoints; a resumed job draws fresh noise.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.models import build_model, loss_per_sample, unwrap
from components.params import CertifiedParams, Params
from components.privacy import iteration_sigma, noise_generator
from components.training import FiniteWatch, JobContext, Precision, global_mean, shuffled, step_loop

MECHANISM = ("noisy clipped SGD on the retain set from a projected start (Koloskova et al. "
             "2025, gradient clipping); Rényi accounting by privacy amplification by iteration, "
             "converted to (ε, δ)")
RELATION = ("unlearning: the released model vs the same algorithm run from a model that "
            "never saw the forget split (any start in the ball)")


def public_centre(params: Params, shape: tuple[int, int, int], device: torch.device
                  ) -> list[torch.Tensor]:
    """The centre of the start ball: a fresh model from the committed seed, built on the CPU
    so that every worker gets the same one, and depending on no data at all."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        fresh = build_model(params.model, shape[0], shape[1])
    return [p.detach().to(device) for p in fresh.parameters()]


@torch.no_grad()
def project(weights: list[nn.Parameter], centre: list[torch.Tensor], radius: float) -> None:
    """Project the weights (as one vector) onto the L2 ball of `radius` around `centre`."""
    dist = math.sqrt(sum(float(((p - c) ** 2).sum()) for p, c in zip(weights, centre,
                                                                       strict=True)))
    if dist > radius:
        for p, c in zip(weights, centre, strict=True):
            p.copy_(c + (p - c) * (radius / dist))


def privacy_record(cfg: CertifiedParams, sigma: float) -> dict:
    """What the run did, as the certificate reads it (flows/register.py)."""
    return {"mechanism": MECHANISM, "relation": RELATION, "epsilon": cfg.epsilon,
            "delta": cfg.delta, "sigma": sigma, "steps": cfg.steps, "lr": cfg.lr,
            "clip_norm": cfg.clip_norm, "start_radius": cfg.start_radius,
            "finish_steps": cfg.finish_steps, "reads": ["retain"]}


def certified(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Certified unlearning: projected start, T noisy clipped SGD steps, noiseless finish.

    Args:
        model: the model to unlearn (possibly DDP-wrapped), on ctx.device; changed in place.
        data: only data.retain is read (the forget set and the original never are).
        params: all params (unlearn.certified, model, seed).
        ctx: the job context.

    Returns:
        steps (noisy + finishing), final_loss, train_seconds, data_seconds (of those, getting
        batches to the device), and `privacy`: the record the certificate is written from
        (σ, T, η, C1, C0, ε, δ, mechanism, relation).
    """
    cfg = params.unlearn.certified
    t0 = time.perf_counter()
    weights = list(unwrap(model).parameters())  # every weight: all of them saw the forget set
    centre = public_centre(params, tuple(data.retain[0].shape[1:]), ctx.device)
    sigma = iteration_sigma(cfg.epsilon, cfg.delta, cfg.start_radius, cfg.lr, cfg.clip_norm,
                            cfg.steps)
    # plain SGD, no momentum, no weight decay: each step moves the weights by η·clip(g) exactly
    noisy = torch.optim.SGD(weights, lr=cfg.lr)
    finish = torch.optim.Adam(weights, lr=cfg.finish_lr)
    if not ctx.resume:  # a resumed run's weights are the checkpoint's (step_loop)
        project(weights, centre, cfg.start_radius)
    gen = noise_generator(ctx.device)
    precision = Precision(ctx.device)
    total = cfg.steps + cfg.finish_steps

    def certified_step(batches: tuple, step: int) -> torch.Tensor:
        [(x, y)] = batches
        with precision.autocast():
            loss = loss_per_sample(model, x, y).mean()
        if step < cfg.steps:
            precision.step(loss, noisy, clip=(weights, cfg.clip_norm))
            with torch.no_grad():
                for p in weights:
                    p.add_(torch.randn(p.shape, generator=gen).to(p) * sigma)
            if step + 1 == cfg.steps:
                project(weights, centre, cfg.start_radius)  # post-processing: no data read
        else:
            precision.step(loss, finish)
        return loss

    def progress(step: int, loss: torch.Tensor) -> dict:
        mean = global_mean(loss.detach())
        phase = "noisy" if step <= cfg.steps else "finish"
        ctx.say(f"[certified] step {step}/{total} ({phase})  retain loss {mean:.5f}")
        return {"loss": mean}

    ctx.say(f"[certified] (ε={cfg.epsilon:g}, δ={cfg.delta:g}): {cfg.steps} noisy steps, "
            f"σ = {sigma:.4g} per weight and step, then {cfg.finish_steps} noiseless ones")
    # the noisy phase's plain SGD has no state: the finishing Adam's is the one to keep; the
    # end of the noisy phase is checkpointed, so that a resumed run draws no noise again
    ran = step_loop(model, ctx, label="certified",
                    sources=[shuffled(data.retain, cfg.batch_size, params.seed, ctx)],
                    step_fn=certified_step, optimizer=finish, steps=total,
                    every=ctx.checkpoint_every, report=progress,
                    watch=FiniteWatch("certified unlearning", "lower unlearn.certified.finish_lr"),
                    marks=(cfg.steps,), started=t0)
    return {**ran.figures(), "privacy": privacy_record(cfg, sigma)}


METHOD = Method(
    name="certified",
    forget=certified,
    retention=False,
    summary="certified unlearning (Koloskova et al. 2025): noisy clipped SGD on the retain set "
            "from a projected start, then noiseless fine-tuning; the (ε, δ) bound covers the "
            "released model",
)
register(METHOD)
