"""`retrain`: the gold standard. A fresh model trained from scratch on the retain set only,
with the `train` block's recipe (or unlearn.retrain.epochs). Its cost ratio is 1 by
construction; every other method is compared to it."""

from __future__ import annotations

import torch
from torch import nn

from components.methods.base import Method, UnlearnData, register
from components.models import unwrap
from components.params import Params
from components.training import JobContext, train_model


def retrain(model: nn.Module, data: UnlearnData, params: Params, ctx: JobContext) -> dict:
    """Re-initialise every layer and train on the retain pairs from scratch."""
    torch.manual_seed(params.seed)
    if not ctx.resume:
        for module in unwrap(model).modules():
            # attention layers name theirs _reset_parameters
            reset = getattr(module, "reset_parameters", None) or \
                getattr(module, "_reset_parameters", None)
            if reset:
                reset()
    epochs = params.unlearn.retrain.epochs or params.train.epochs
    return train_model(model, *data.retain, params.train.model_copy(update={"epochs": epochs}),
                       ctx, params.seed, label="retrain")


METHOD = Method(name="retrain", forget=retrain, retention=False,
                summary="retrain from scratch on the retain set (the reference)")
register(METHOD)
