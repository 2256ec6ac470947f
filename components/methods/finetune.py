"""Baseline `finetune`: no forgetting phase, only knowledge retention on the retain set.

It relies on catastrophic forgetting alone; the design pilot measured that it ties with the
literal decoupling on reconstruction metrics and leaves the backdoor in place.
"""

from __future__ import annotations

from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.params import Params
from components.training import JobContext


def skip_forgetting(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """The forgetting phase of `finetune`: nothing (the retention phase does all the work)."""
    ctx.say("[finetune] no forgetting phase; the finetune stage retains on D_r")
    return {"steps": 0, "train_seconds": 0.0}


METHOD = Method(
    name="finetune",
    forget=skip_forgetting,
    retention=True,
    summary="fine-tune on the retain set only (catastrophic forgetting)",
)
register(METHOD)
