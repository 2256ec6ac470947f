"""Model registry: `model.family` -> a builder. Each model exposes `.encoder` and `.decoder`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from components.models.ae import ConvAutoencoder
from components.params import ModelParams


def build_ae(cfg: ModelParams, channels: int, image_size: int) -> nn.Module:
    return ConvAutoencoder(channels, image_size, cfg.ae.widths, cfg.ae.latent_dim)


MODELS: dict[str, Callable[[ModelParams, int, int], nn.Module]] = {"ae": build_ae}


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
    """The parameters of 'encoder', 'decoder' or 'all' of a (possibly DDP-wrapped) model."""
    core = unwrap(model)
    if group == "all":
        return list(core.parameters())
    if group in ("encoder", "decoder"):
        return list(getattr(core, group).parameters())
    raise ValueError(f"unknown parameter group {group!r} (encoder, decoder or all)")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


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
