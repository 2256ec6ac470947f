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
    # a checkpoint written before it held the random state is resumed all the same, and says so
    said = []
    old = {k: v for k, v in reports[1][1].items() if k != "rng"}
    info = train_model(build_model(params.model, 1, 8), *digit_pairs["train"], params.train,
                       JobContext(resume=old, log=said.append), seed=0)
    assert info["epochs"] == 4 and any("holds no random state" in line for line in said)


def test_a_resumed_loop_draws_the_random_numbers_an_uninterrupted_one_draws(digit_pairs,
                                                                            fresh,
                                                                            unlearn_data):
    """A checkpoint holds the random generators' states: torch's global one (diffusion's
    noise and timesteps) and a loss's own (li2024's noise images). A job resumed from it,
    whatever its restart left in them, ends bit-identical to one that never stopped."""
    from components.methods import get_method
    from tests.model.test_families import family_params, tiny_model

    def run(loop, model, resume=None):
        states = []
        loop(model, JobContext(report=lambda m, s: states.append(copy.deepcopy(s)),
                               log=lambda s: None, checkpoint_every=4, resume=resume))
        return states

    train = family_params("diffusion").train.model_copy(update={"epochs": 3})
    pairs = tuple(t[:64] for t in digit_pairs["train"])
    li2024 = tiny_params(li2024={"steps": 10})
    loops = {
        "diffusion training": (lambda: tiny_model("diffusion"),
                               lambda m, ctx: train_model(m, *pairs, train, ctx, seed=0)),
        "li2024": (lambda: copy.deepcopy(fresh),
                   lambda m, ctx: get_method("li2024").forget(m, unlearn_data, li2024, ctx)),
    }
    for name, (build, loop) in loops.items():
        full = build()
        states = run(loop, full)
        resumed = build()
        torch.manual_seed(123)  # a restarted worker's RNG: not where the checkpoint left it
        run(loop, resumed, resume=states[0])
        for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
            assert torch.equal(a, b), name


def test_parameter_groups_split_the_model():
    model = build_model(tiny_params().model, 1, 8)
    enc, dec = parameter_group(model, "encoder"), parameter_group(model, "decoder")
    assert len(enc) + len(dec) == len(parameter_group(model, "all"))
    assert not {id(p) for p in enc} & {id(p) for p in dec}


def test_training_length_follows_the_data():
    """train.epochs is a floor and so is train.min_steps: Fashion-MNIST keeps its 5 epochs
    (2,320 steps at batch 128), a 1,437-image folder gets 84 epochs instead of 5."""
    from components.params import TrainParams
    from components.training import steps_per_epoch, training_epochs

    cfg = TrainParams()
    assert steps_per_epoch(59_400, cfg) == 465 and training_epochs(59_400, cfg) == 5
    assert training_epochs(1_437, cfg) == 84
    assert training_epochs(1_437, cfg.model_copy(update={"min_steps": 0})) == 5
    assert steps_per_epoch(1_437, cfg, world_size=2) == 6  # each worker takes half


def test_a_model_that_learned_nothing_is_told_apart(digit_pairs, trained):
    """The trained autoencoder clears the trivial generators by far; an untrained one, and
    one that outputs the mean image, do not; inpainting adds the visible-pixel copy."""
    from components.metrics import learned_check
    from components.tasks import TaskSpec, apply_task

    cpu = torch.device("cpu")
    inputs, targets = digit_pairs["heldout"]
    mean = digit_pairs["retain"][1].mean(0)
    spec = TaskSpec()
    good = learned_check(trained[0], (inputs, targets), mean, spec, 1.0, cpu)
    assert good["passed"] and good["gain_db"] > 5 and list(good["baselines"]) == ["mean image"]
    torch.manual_seed(0)
    untrained = build_model(tiny_params().model, 1, 8)
    assert not learned_check(untrained, (inputs, targets), mean, spec, 1.0, cpu)["passed"]
    inpaint = TaskSpec(task="inpaint")
    hidden = learned_check(trained[0], (apply_task(targets, inpaint), targets), mean, inpaint,
                           1.0, cpu)
    assert set(hidden["baselines"]) == {"mean image", "visible pixels copied"}
    assert hidden["baselines"]["visible pixels copied"] > hidden["baselines"]["mean image"]
