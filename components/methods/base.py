"""What every unlearning method receives, and the record it is registered with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from components.params import Params
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
