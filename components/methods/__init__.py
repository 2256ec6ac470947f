"""Unlearning methods, one module each, behind one registry: `unlearn.method` -> Method.

Adding a method is a module here that registers itself, its settings block in
components/params.py and params.yaml (docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from components.methods.base import METHODS, RETENTION_PLAN, Method, UnlearnData
from components.params import Params, method_names
from components.retention import retain_knowledge
from components.training import JobContext

# every module registers its own methods (base.register): importing them all is the registry
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
_unregistered = [name for name in method_names() if name not in METHODS]
if _unregistered:
    raise ImportError("settings blocks with no registered method: "
                      + ", ".join(f"unlearn.{name}" for name in _unregistered)
                      + " (a module of components/methods registers each: docs/extending.md)")


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
