"""What every unlearning method receives, the record it is registered with, and the registry.

The registry sits here, below the method modules, so that each module registers itself and
nothing lists them: components/methods/__init__.py imports every module of the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from components.params import Params, method_names
from components.training import JobContext


@dataclass
class UnlearnData:
    """The pairs a method may use (CPU tensors), plus the frozen original model.

    Attributes:
        forget: (inputs, targets) of D_f exactly as they were trained (poisoned ones included).
        retain: (inputs, targets) of D_r.
        heldout: (inputs, targets) of D_h, never trained on (calibrates λ).
        original: a frozen copy of θ0 on the job's device.
    """

    forget: tuple[torch.Tensor, torch.Tensor]
    retain: tuple[torch.Tensor, torch.Tensor]
    heldout: tuple[torch.Tensor, torch.Tensor]
    original: nn.Module


# the key under which a forgetting phase hands the retention phase its plan: {"thresholds":
# the per-pair λ_i, "residual": what the memorised forget inputs share, or None} (the
# keyword arguments of components.retention.retain_knowledge); the pipeline stores it with
# the decoupled model
RETENTION_PLAN = "retention_plan"

ForgetFn = Callable[[nn.Module, UnlearnData, Params, JobContext], dict]


@dataclass(frozen=True)
class Method:
    """A registered unlearning method.

    Attributes:
        name: the `unlearn.method` value.
        forget: the forgetting phase (the `decouple` stage); changes the model in place and
            returns a dict of figures to log.
        retention: whether the `finetune` stage's knowledge retention runs after it (methods
            that retain on their own say False, so that stage's budget is zero for them).
        keeps_decoupling: whether that retention keeps each forget pair at or above its
            decoupling threshold λ_i (weight unlearn.finetune.keep_decoupled).
        summary: one line for `--help` texts and reports.
    """

    name: str
    forget: ForgetFn
    retention: bool
    summary: str
    keeps_decoupling: bool = False


# `unlearn.method` -> Method, filled as the method modules are imported
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry under its name (docs/extending.md).

    Raises:
        ValueError: the name has no settings block `unlearn.<name>` in the params schema
            (the block is what makes the name a valid `unlearn.method`), or another method
            already has it.
    """
    if method.name not in method_names():
        raise ValueError(f"method {method.name!r} has no settings block unlearn.{method.name}: "
                         "add its params class and field to UnlearnParams (components/params.py)")
    if METHODS.get(method.name, method) is not method:
        raise ValueError(f"two methods are registered as {method.name!r}")
    METHODS[method.name] = method
    return method
