"""Model registry: `model.family` -> a builder. Every model is an I2IModel (components/
models/base.py): `.encoder` and `.decoder` are the parameter groups methods act on, and the
family computes its own objective and images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from components.models.ae import ConvAutoencoder
from components.models.base import (
    distill_per_sample,
    embed,
    generate,
    loss_per_sample,
    train_loss_per_sample,
    unwrap,
)
from components.models.diffusion import ConditionalDiffusion
from components.models.mae import MaskedAutoencoder
from components.models.vqtoken import MaskedTokenModel
from components.params import ModelParams
from components.tasks import TaskSpec, task_mask


def visible_mask(cfg: ModelParams, image_size: int):
    """The task's (H, W) mask, 1 where the model sees the input."""
    spec = TaskSpec(task=cfg.task, inpaint_box=cfg.inpaint_box,
                    outpaint_border=cfg.outpaint_border)
    return task_mask(cfg.task, image_size, image_size, spec)


def build_ae(cfg: ModelParams, channels: int, image_size: int) -> nn.Module:
    return ConvAutoencoder(channels, image_size, cfg.ae.widths, cfg.ae.latent_dim)


def build_mae(cfg: ModelParams, channels: int, image_size: int) -> nn.Module:
    return MaskedAutoencoder(channels, image_size, cfg.mae, visible_mask(cfg, image_size))


def build_vqtoken(cfg: ModelParams, channels: int, image_size: int) -> nn.Module:
    return MaskedTokenModel(channels, image_size, cfg.vqtoken, visible_mask(cfg, image_size))


def build_diffusion(cfg: ModelParams, channels: int, image_size: int) -> nn.Module:
    return ConditionalDiffusion(channels, image_size, cfg.diffusion,
                                visible_mask(cfg, image_size))


MODELS: dict[str, Callable[[ModelParams, int, int], nn.Module]] = {
    "ae": build_ae, "mae": build_mae, "vqtoken": build_vqtoken, "diffusion": build_diffusion,
}


def build_model(cfg: ModelParams, channels: int, image_size: int) -> nn.Module:
    """Build the model that `cfg.family` names for images of this shape.

    Args:
        cfg: the `model` params block.
        channels: image channels.
        image_size: image side in pixels.

    Returns:
        An untrained model with `.encoder` and `.decoder` submodules.
    """
    if cfg.family not in MODELS:
        raise ValueError(f"unknown model.family {cfg.family!r} (known: {', '.join(MODELS)})")
    return MODELS[cfg.family](cfg, channels, image_size)


def parameter_group(model: nn.Module, group: str) -> list[nn.Parameter]:
    """The parameters of 'encoder', 'decoder' or 'all' of a (possibly DDP-wrapped) model.

    'all' is what unlearning may move: encoder and decoder, i.e. every parameter except the
    vqtoken tokenizer's (which no unlearning objective reaches; see models/vqtoken.py).
    """
    core = unwrap(model)
    if group == "all":
        return [*core.encoder.parameters(), *core.decoder.parameters()]
    if group in ("encoder", "decoder"):
        return list(getattr(core, group).parameters())
    raise ValueError(f"unknown parameter group {group!r} (encoder, decoder or all)")


def cpu_state(model: nn.Module) -> dict[str, Any]:
    """The weights of a (possibly wrapped) model as CPU tensors, to save or hand on."""
    return {k: v.cpu() for k, v in unwrap(model).state_dict().items()}


def model_from_file(blob: dict[str, Any]) -> nn.Module:
    """Rebuild the module of a model file's content (weights, `model` block, shape), in eval
    mode."""
    c, side = blob["shape"]
    model = build_model(ModelParams.model_validate(blob["model"]), c, side)
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def wrap_state_dict(state_dict: dict[str, Any], cfg: ModelParams, channels: int,
                    image_size: int, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model file's content (the format every stage reads; docs/byo-model.md) from a
    plain state dict trained elsewhere: the weights, the `model` block that rebuilds the
    module, the image shape and a free `info` record.

    Raises:
        ValueError: the state dict does not fit the model `cfg` builds (missing, unexpected
            or mis-shaped tensors, named).
    """
    model = build_model(cfg, channels, image_size)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state_dict)
                    if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or shapes:
        parts = [f"{what} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("mis-shaped", shapes)) if keys]
        raise ValueError(f"the state dict does not fit model.family={cfg.family} with these "
                         f"model params at {channels}x{image_size}x{image_size}: "
                         + "; ".join(parts))
    model.load_state_dict(state_dict)
    return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "model": cfg.model_dump(mode="json"), "shape": [channels, image_size],
            "info": dict(info or {})}


def model_file_problems(blob: dict[str, Any], cfg: ModelParams,
                        shape: tuple[int, int]) -> list[str]:
    """Why a model file cannot be unlearned under these params (empty: it can). The
    pipeline builds every model from params' `model` block, so family, task and the
    family's architecture block must be the file's, and the images must be its shape."""
    if not isinstance(blob, dict) or not {"state_dict", "model", "shape"} <= set(blob):
        return ["not a model file (a dict with state_dict, model and shape; "
                "`unlearn import-model` wraps a plain state dict)"]
    theirs, problems = blob["model"], []
    for key in ("family", "task"):
        if theirs.get(key) != getattr(cfg, key):
            problems.append(f"model.{key} is {theirs.get(key)!r} in the file, "
                            f"{getattr(cfg, key)!r} in params")
    ours = getattr(cfg, cfg.family).model_dump(mode="json")
    for key, value in (theirs.get(cfg.family) or {}).items():
        if ours.get(key) != value:
            problems.append(f"model.{cfg.family}.{key} is {value!r} in the file, "
                            f"{ours.get(key)!r} in params")
    if list(blob["shape"]) != list(shape):
        problems.append(f"the file's images are {blob['shape'][0]}x{blob['shape'][1]}"
                        f"x{blob['shape'][1]}, the dataset's {shape[0]}x{shape[1]}x{shape[1]}")
    return problems


class ServingModel(nn.Module):
    """What the registry holds: image in, generated image out, for any family.

    MLflow 3 saves a model as a torch.export program. The training modules' forward draws
    its evaluation noise from a fixed-seed torch.Generator, which torch.export cannot trace
    for a batch size it does not know; here generation draws from the global RNG instead
    (a diffusion model samples fresh noise per call, as a served sampler should). The
    families' code takes batch sizes as `x.shape[0]`, never `len(x)`: len() returns a plain
    int, and torch.export would fix the program's batch size to the example's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.generate(inputs, None)


__all__ = [
    "MODELS", "ServingModel", "build_model", "cpu_state", "distill_per_sample", "embed",
    "generate", "loss_per_sample", "model_file_problems", "model_from_file", "parameter_group",
    "train_loss_per_sample", "unwrap", "wrap_state_dict",
]
