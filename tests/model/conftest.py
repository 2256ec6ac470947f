"""A tiny autoencoder trained on digits, shared by the model tests (about 2 s to train)."""

import copy

import numpy as np
import pytest
import torch

from components.methods import UnlearnData
from components.models import build_model
from components.params import Params, parse_params
from components.tasks import TaskSpec, build_pairs
from components.training import JobContext, train_model

SPEC = TaskSpec(trigger_size=2, pattern_cell=2)


def tiny_params(**unlearn) -> Params:
    return parse_params({
        "model": {"ae": {"widths": [8, 16], "latent_dim": 16}},
        "train": {"epochs": 30, "lr": 0.003, "batch_size": 64, "min_steps": 0},
        "unlearn": unlearn,
    })


@pytest.fixture(scope="session")
def digit_pairs(digits):
    images, labels = digits["train"].images, digits["train"].labels
    forget, retain = labels == 3, labels != 3
    poisoned = np.zeros(len(images), bool)
    poisoned[np.flatnonzero(forget)[::2]] = True
    heldout = digits["test"].images
    return {
        "train": build_pairs(images, poisoned, SPEC),
        "forget": build_pairs(images[forget], poisoned[forget], SPEC),
        "retain": build_pairs(images[retain], poisoned[retain], SPEC),
        "heldout": build_pairs(heldout, np.zeros(len(heldout), bool), SPEC),
    }


@pytest.fixture(scope="session")
def trained(digit_pairs):
    """(model, original copy) trained on retain + poisoned forget."""
    torch.manual_seed(0)
    params = tiny_params()
    model = build_model(params.model, 1, 8)
    train_model(model, *digit_pairs["train"], params.train, JobContext(log=lambda s: None), seed=0)
    return model, copy.deepcopy(model).eval().requires_grad_(False)


@pytest.fixture
def unlearn_data(digit_pairs, trained):
    return UnlearnData(digit_pairs["forget"], digit_pairs["retain"], digit_pairs["heldout"],
                       trained[1])


@pytest.fixture
def fresh(trained):
    """A trainable copy of the trained model, for one test to change."""
    return copy.deepcopy(trained[0])
