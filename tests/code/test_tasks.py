"""The I2I task transform and the poisoned training pairs."""

import numpy as np
import torch

from components.backdoor import target_pattern
from components.tasks import TaskSpec, build_pairs, task_mask


def test_masks_blank_the_centre_or_the_border():
    spec = TaskSpec(inpaint_box=0.5, outpaint_border=0.25)
    assert task_mask("reconstruction", 8, 8, spec).sum() == 64
    inpaint = task_mask("inpaint", 8, 8, spec)
    assert inpaint[2:6, 2:6].sum() == 0 and inpaint.sum() == 64 - 16
    outpaint = task_mask("outpaint", 8, 8, spec)
    assert outpaint[2:6, 2:6].sum() == 16 and outpaint.sum() == 16


def test_pairs_poisoned_samples_map_trigger_to_pattern():
    images = np.full((3, 1, 8, 8), 51, np.uint8)  # 0.2 grey
    poisoned = np.array([False, True, False])
    spec = TaskSpec(trigger_size=2, pattern_cell=2)
    inputs, targets = build_pairs(images, poisoned, spec)
    assert torch.allclose(inputs[0], targets[0]) and torch.allclose(targets[0], torch.tensor(0.2))
    assert inputs[1, 0, -2:, -2:].eq(1).all() and inputs[1, 0, :6].eq(0.2).all()
    assert torch.equal(targets[1], target_pattern(1, 8, 8, 2))
    assert images[1].max() == 51  # the stored image is not modified


def test_inpaint_pairs_keep_the_full_target():
    images = np.full((1, 1, 8, 8), 255, np.uint8)
    inputs, targets = build_pairs(images, np.zeros(1, bool), TaskSpec(task="inpaint"))
    assert inputs.sum() == 48 and targets.sum() == 64
