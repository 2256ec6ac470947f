"""What the loops hold and when they wait (issue 21): memory bounded by a batch, not by the
data or the eval draws; the data path to the device; divergence checked on a cadence, still
before anything is saved."""

import copy

import pytest
import torch

from components.methods import get_method
from components.methods.random_encoder import random_encoder
from components.methods.salun import kth_largest
from components.models import build_model, unwrap
from components.params import FinetuneParams
from components.retention import retain_knowledge
from components.training import (
    EVAL_BATCH,
    DeviceData,
    DivergenceError,
    JobContext,
    per_sample_loss,
    train_model,
)
from tests.model.conftest import tiny_params
from tests.model.other_device import DEVICE, ON_DEVICE, OtherDevice
from tests.model.test_families import tiny_model

CPU = torch.device("cpu")


def largest_batches(module: torch.nn.Module) -> list[int]:
    """Records the batch size of every call of `module` (a list that grows)."""
    seen: list[int] = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    return seen


def test_diffusion_eval_draws_do_not_multiply_the_batch():
    """eval_draws (t, noise) draws per pair used to be stacked into one UNet batch: an eval
    chunk of 512 pairs became 2,048 images, and decouple (whose λ and probes are eval losses)
    peaked at twice every other method's memory on a GPU."""
    model = tiny_model("diffusion", 1, 8).eval()
    assert model.eval_draws == 2
    seen = largest_batches(model.encoder)
    x = torch.rand(20, 1, 8, 8)
    per_sample_loss(model, x, x, CPU, batch_size=8)
    assert max(seen) == 8 and len(seen) == 3 * 2  # 3 chunks (8, 8, 4), one call per draw


def test_random_encoder_embeds_its_statistics_sample_in_eval_chunks(fresh, unlearn_data):
    params = tiny_params(random_encoder={"steps": 1, "stats_samples": 2048})
    assert len(unlearn_data.retain[0]) > EVAL_BATCH  # the sample is larger than a chunk
    seen = largest_batches(unwrap(unlearn_data.original).encoder)
    random_encoder(fresh, unlearn_data, params, JobContext(log=lambda s: None))
    assert max(seen) == EVAL_BATCH


def test_salun_threshold_is_topks_without_concatenating():
    gen = torch.Generator().manual_seed(0)
    values = [torch.rand(50, 7, generator=gen), torch.zeros(30), torch.rand(3, generator=gen)]
    values[0][:10] = 0.5  # ties at the cut
    flat = torch.cat([v.flatten() for v in values])
    for k in (1, 2, 200, 380, len(flat)):
        assert torch.equal(kth_largest(values, k), torch.topk(flat, k).values.min())


def test_a_loops_pairs_on_the_device_train_as_host_batches_do(digit_pairs):
    """ray.data_on_device: the pairs go to the (simulated) device once and each batch is
    gathered there; the model trains exactly as with batches copied from the host."""
    params = tiny_params()
    train = params.train.model_copy(update={"epochs": 2})
    pairs = tuple(t[:256] for t in digit_pairs["train"])
    weights = {}
    for on_device in (False, True):
        torch.manual_seed(0)
        model = build_model(params.model, 1, 8)
        ctx = JobContext(device=DEVICE, log=lambda s: None, data_on_device=on_device)
        with OtherDevice() as where:
            model.to(DEVICE)
            held = DeviceData(pairs, ctx)
            if on_device:
                assert all(where.place(t) == ON_DEVICE for t in held.tensors)
            else:  # each batch gathered on the host and copied
                assert held.tensors is pairs
            train_model(model, *pairs, train, ctx, seed=0)
            weights[on_device] = [p.detach().cpu() for p in model.parameters()]
    for a, b in zip(weights[False], weights[True], strict=True):
        assert torch.equal(a, b)


def diverging(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    return model


def test_a_diverging_step_loop_stops_before_any_state_is_reported(fresh, unlearn_data):
    """Losses are checked on the checkpoint cadence now (no host sync per step), still
    before every report: nothing diverged reaches a checkpoint, and the error names the
    first bad step."""
    states = []
    ctx = JobContext(log=lambda s: None, checkpoint_every=10,
                     report=lambda m, s: states.append(s))
    params = tiny_params(neggrad_plus={"steps": 30})
    with pytest.raises(DivergenceError, match="neggrad_plus diverged at step 0: loss = nan"):
        get_method("neggrad_plus").forget(diverging(fresh), unlearn_data, params, ctx)
    assert states == []


def test_a_diverging_retention_stops_before_any_state_is_reported(fresh, unlearn_data):
    states = []
    ctx = JobContext(log=lambda s: None, checkpoint_every=10,
                     report=lambda m, s: states.append(s))
    with pytest.raises(DivergenceError, match="knowledge retention diverged at step 0"):
        retain_knowledge(diverging(fresh), unlearn_data.original, unlearn_data.retain,
                         FinetuneParams(steps=30), ctx, seed=0)
    assert states == []


def test_a_loop_that_stays_finite_reports_on_its_cadence(fresh, unlearn_data):
    reports = []
    ctx = JobContext(log=lambda s: None, checkpoint_every=10,
                     report=lambda m, s: reports.append(m["step"]))
    model = copy.deepcopy(fresh)
    get_method("neggrad_plus").forget(model, unlearn_data, tiny_params(neggrad_plus={"steps": 25}),
                                      ctx)
    assert reports == [10, 20, 25]
