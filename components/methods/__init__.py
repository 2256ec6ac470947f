"""Unlearning methods, one module each, behind one registry: `unlearn.method` -> Method."""

from __future__ import annotations

from torch import nn

from components.methods import (
    certified,
    decouple,
    finetune,
    gradient_ascent,
    li2024,
    neggrad_plus,
    random_encoder,
    retain_label,
    retrain,
    salun,
    scrub,
)
from components.methods.base import RETENTION_PLAN, Method, UnlearnData
from components.params import Params
from components.retention import retain_knowledge
from components.training import JobContext

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        decouple.METHOD, decouple.LITERAL, li2024.METHOD, gradient_ascent.METHOD,
        neggrad_plus.METHOD, random_encoder.METHOD, retain_label.METHOD, finetune.METHOD,
        salun.METHOD, scrub.METHOD, retrain.METHOD, certified.METHOD,
    )
}


def get_method(name: str) -> Method:
    """The registered method called `name`; a clear error lists the known ones."""
    if name not in METHODS:
        raise ValueError(f"unknown unlearn.method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["METHODS", "Method", "UnlearnData", "get_method", "run_method"]


def run_method(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Both phases of `params.unlearn.method` in one call (the pipeline runs them as two
    stages): the forgetting phase, then, if the method has one, knowledge retention, which
    keeps each forget pair at its λ_i and transplants the memorised residual when the method
    asks for it.

    Returns:
        The forgetting phase's figures, with train_seconds covering both phases.
    """
    method = get_method(params.unlearn.method)
    info = method.forget(model, data, params, ctx)
    plan = info.pop(RETENTION_PLAN, None)
    if method.retention and params.unlearn.finetune.steps > 0:
        keep = {"forget": data.forget, **plan} if method.keeps_decoupling and plan else {}
        retained = retain_knowledge(model, data.original, data.retain, params.unlearn.finetune,
                                    ctx, params.seed, retrain=params.train, **keep)
        info["train_seconds"] += retained["train_seconds"]
        info["retention_steps"] = retained["steps"]
    return info
