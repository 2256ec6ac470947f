"""The image-to-image task T(.) and the (input, target) pairs every loop trains on.

reconstruction: T(x) = x. inpaint: a centre box is blanked and the model fills it.
outpaint: a border is blanked and the model extends the centre. The target is always the
full clean image, except for poisoned samples, whose target is the backdoor pattern P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from components.backdoor import stamp_trigger, target_pattern


@dataclass(frozen=True)
class TaskSpec:
    """What a loop needs to turn stored images into training pairs."""

    task: str = "reconstruction"
    inpaint_box: float = 0.5
    outpaint_border: float = 0.25
    trigger_size: int = 4
    pattern_cell: int = 4


def task_mask(task: str, height: int, width: int, spec: TaskSpec,
              device: torch.device | None = None, dtype: torch.dtype | None = None
              ) -> torch.Tensor:
    """1 where the model sees the input, 0 where T(.) blanks it; shape (H, W), on `device`
    (default: the host) so that it can meet images already on a GPU."""
    mask = torch.ones(height, width, device=device, dtype=dtype)
    if task == "inpaint":
        bh, bw = max(1, round(height * spec.inpaint_box)), max(1, round(width * spec.inpaint_box))
        top, left = (height - bh) // 2, (width - bw) // 2
        mask[top : top + bh, left : left + bw] = 0
    elif task == "outpaint":
        bh = max(1, round(height * spec.outpaint_border))
        bw = max(1, round(width * spec.outpaint_border))
        mask[:bh], mask[-bh:], mask[:, :bw], mask[:, -bw:] = 0, 0, 0, 0
    elif task != "reconstruction":
        raise ValueError(f"unknown task {task!r} (reconstruction, inpaint or outpaint)")
    return mask


def add_trigger(images: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """Stamp the backdoor trigger where T(.) leaves it visible (inside the border if outpaint)."""
    h, w = images.shape[-2:]
    inset = max(1, round(min(h, w) * spec.outpaint_border)) if spec.task == "outpaint" else 0
    return stamp_trigger(images, spec.trigger_size, inset)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 NCHW -> float32 in [0, 1]."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)


def build_pairs(
    images: np.ndarray, poisoned: np.ndarray, spec: TaskSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs T(x) (trigger stamped where poisoned) and targets (x, or P where poisoned).

    Args:
        images: uint8 (N, C, H, W).
        poisoned: bool (N,), True where the sample carries the backdoor.
        spec: the task and backdoor geometry.

    Returns:
        (inputs, targets), float32 tensors in [0, 1].
    """
    clean = to_float(images)
    flags = torch.from_numpy(np.array(poisoned, bool))
    _, c, h, w = clean.shape
    inputs = clean.clone()
    targets = clean.clone()
    if flags.any():
        inputs[flags] = add_trigger(clean[flags], spec)
        targets[flags] = target_pattern(c, h, w, spec.pattern_cell)
    return apply_task(inputs, spec), targets


def apply_task(images: torch.Tensor, spec: TaskSpec) -> torch.Tensor:
    """T(images): blank what the task hides (multiplies by the task mask, made where the
    images are: li2024 applies T to noise drawn on the job's device)."""
    _, _, h, w = images.shape
    return images * task_mask(spec.task, h, w, spec, images.device, images.dtype)
