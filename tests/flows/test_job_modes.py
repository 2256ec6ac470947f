"""A job run in the stage's process (ray.job_mode local) and as a Ray Train job with its own
worker (workers) is the same loop: same seed, same data, same weights and figures."""

import copy

import numpy as np
import pytest
import torch

from components.models import build_model, cpu_state
from components.params import ParamsError, parse_params
from flows.runtime.jobs import job_mode, run_job
from tests.conftest import TINY_PARAMS, deep_update


def params_for(mode, storage, address):
    tree = deep_update(copy.deepcopy(TINY_PARAMS), {
        "unlearn": {"finetune": {"steps": 30}},
        "ray": {"job_mode": mode, "storage_path": str(storage), "address": address,
                "checkpoint_every": 10}})
    return parse_params(tree)


def test_local_and_workers_jobs_give_the_same_model(digits, ray_address, tmp_path):
    images = digits["train"].images[:400]
    sets = {"retain": {"images": images, "poisoned": np.zeros(len(images), bool)}}
    torch.manual_seed(0)
    original = cpu_state(build_model(params_for("local", tmp_path, None).model, 1, 8))
    out = {}
    for mode in ("local", "workers"):
        params = params_for(mode, tmp_path / mode, ray_address)
        out[mode] = run_job.fn("retain", f"modes-{mode}", params, (1, 8), sets, None,
                               init=original, original=original)
    (info_l, state_l), (info_w, state_w) = out["local"], out["workers"]
    assert info_l["steps"] == info_w["steps"] == 30
    assert info_l["sample_grads"] == info_w["sample_grads"] > 0
    assert abs(info_l["final_loss"] - info_w["final_loss"]) < 1e-5
    for name, weight in state_w.items():
        assert torch.allclose(state_l[name], weight, atol=1e-5), name
    # local mode writes its checkpoints where a Ray Train job would, the last two kept
    (run_dir,) = (tmp_path / "local").glob("modes-local-*")
    assert [p.name for p in sorted(run_dir.glob("checkpoint_*"))] == \
        ["checkpoint_000002", "checkpoint_000003"]


def test_auto_runs_unlearning_here_and_training_as_ray_jobs():
    def mode(kind, **ray):
        return job_mode(kind, parse_params({"ray": ray}))

    assert mode("forget") == mode("retain") == mode("score") == "local"
    assert mode("forget", address="127.0.0.1:6379") == "local"  # a Ray on this machine
    assert mode("train") == mode("benchmark") == "workers"
    assert mode("forget", address="ray://10.1.2.3:10001") == "workers"  # another machine's
    assert mode("retain", num_workers=2) == "workers"
    assert mode("retain", storage_path="s3://bucket/ray") == "workers"
    assert mode("train", job_mode="local") == "local"


def test_local_mode_refuses_what_it_cannot_do():
    with pytest.raises(ParamsError, match="num_workers must be 1"):
        parse_params({"ray": {"job_mode": "local", "num_workers": 2}})
    with pytest.raises(ParamsError, match="local storage_path"):
        parse_params({"ray": {"job_mode": "local", "storage_path": "s3://bucket/ray"}})
