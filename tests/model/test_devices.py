"""The loops on a device other than the host, on a CPU-only machine (issue 21: li2024 failed
on the first GPU with 'Expected all tensors to be on the same device' because its task mask
was made on the CPU). tests/model/other_device.py simulates the second device; the first
test checks that the simulation refuses what CUDA refuses, so that the tests run under it
(here, and every method on every family in test_families.py) cannot pass by a simulation
that checks nothing."""

import numpy as np
import pytest
import torch

from components.audits import audit_model
from components.metrics import quality_metrics
from components.models import build_model
from components.tasks import TaskSpec, build_pairs
from components.training import JobContext, predict, train_model
from tests.model.conftest import SPEC
from tests.model.other_device import DEVICE, DeviceMismatch, OtherDevice
from tests.model.test_families import FAMILIES, family_params

ON_DEVICE = JobContext(device=DEVICE, log=lambda s: None)


@pytest.fixture(scope="module")
def inpaint_pairs(digits):
    """64 digit pairs of the inpainting task (the families turn its mask into buffers), a
    quarter poisoned: 16 forget / 32 retain / 16 held-out."""
    images = digits["train"].images[:64]
    spec = TaskSpec(task="inpaint", trigger_size=SPEC.trigger_size,
                    pattern_cell=SPEC.pattern_cell)
    x, y = build_pairs(images, np.arange(64) % 4 == 0, spec)
    return {"forget": (x[:16], y[:16]), "retain": (x[16:48], y[16:48]),
            "heldout": (x[48:], y[48:]), "all": (x, y), "spec": spec}


def test_the_simulated_device_refuses_what_cuda_refuses():
    with OtherDevice():
        on_device = torch.ones(3, 4).to(DEVICE)
        host = torch.ones(3, 4)
        with pytest.raises(DeviceMismatch):
            _ = on_device * host
        with pytest.raises(DeviceMismatch):
            _ = host[torch.tensor([0, 2]).to(DEVICE)]  # host data, device indices
        with pytest.raises(DeviceMismatch):
            torch.randn(3, generator=torch.Generator(), device=DEVICE)
        with pytest.raises(DeviceMismatch):
            on_device.numpy()
        with pytest.raises(DeviceMismatch):  # a model on the device, host inputs
            torch.nn.Linear(4, 2).to(DEVICE)(host)
        # what CUDA allows: made on the device, scalars, host indices, copies, moves
        assert (on_device * torch.ones(3, 4, device=on_device.device)).device == DEVICE
        assert (on_device * torch.tensor(2.0)).device == DEVICE
        assert on_device[torch.tensor([0, 2])].device == DEVICE
        on_device.copy_(host)
        assert (on_device * host.to(on_device)).cpu().numpy().shape == (3, 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_scoring_and_audits_run_on_another_device(family, inpaint_pairs):
    params = family_params(family, "inpaint")
    torch.manual_seed(0)
    model = build_model(params.model, 1, 8)
    p = inpaint_pairs
    sets = {k: p[k] for k in ("forget", "retain", "heldout")}
    with OtherDevice():
        model.to(DEVICE)
        train_model(model, *p["all"], params.train, ON_DEVICE, seed=0)
        outputs = predict(model, p["forget"][0], DEVICE)
        audit = audit_model(model, {**sets, "test": p["heldout"], "triggered": p["heldout"]},
                            p["spec"], 0.5, DEVICE)
        quality = quality_metrics(model, sets, DEVICE)
    assert outputs.shape == p["forget"][0].shape
    assert all(np.isfinite(v) for v in [*audit.values(), *quality.values()])
