"""The from-scratch training loop, its batching and its resume."""

import copy

import torch

from components.models import build_model, parameter_group
from components.training import JobContext, per_sample_loss, shard_batches, train_model
from tests.model.conftest import tiny_params


def test_shards_partition_each_pass_and_keep_ranks_in_lockstep():
    shards = [list(shard_batches(103, 10, torch.Generator().manual_seed(1), r, 2))
              for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # DDP workers must take the same number of steps
    seen = torch.cat([b for s in shards for b in s])
    assert len(seen) == 102 and len(set(seen.tolist())) == 102  # disjoint, one dropped


def test_training_lowers_the_loss(digit_pairs, trained):
    model = build_model(tiny_params().model, 1, 8)
    before = per_sample_loss(model, *digit_pairs["retain"], torch.device("cpu")).mean()
    after = per_sample_loss(trained[0], *digit_pairs["retain"], torch.device("cpu")).mean()
    assert after < before * 0.3


def test_training_reports_each_epoch_and_resumes_where_it_stopped(digit_pairs):
    params = tiny_params()
    params.train.epochs = 4
    reports = []
    # a reported state shares storage with the live model: keep a copy, as a checkpoint does
    ctx = JobContext(report=lambda m, s: reports.append((m, copy.deepcopy(s))),
                     log=lambda s: None)
    torch.manual_seed(0)
    full = build_model(params.model, 1, 8)
    train_model(full, *digit_pairs["train"], params.train, ctx, seed=0)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3, 4]
    # a restart after epoch 2 continues from that state and ends where the full run ended
    resumed = build_model(params.model, 1, 8)
    info = train_model(resumed, *digit_pairs["train"], params.train,
                       JobContext(resume=reports[1][1], log=lambda s: None), seed=0)
    assert info["epochs"] == 4
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_parameter_groups_split_the_model():
    model = build_model(tiny_params().model, 1, 8)
    enc, dec = parameter_group(model, "encoder"), parameter_group(model, "decoder")
    assert len(enc) + len(dec) == len(parameter_group(model, "all"))
    assert not {id(p) for p in enc} & {id(p) for p in dec}
