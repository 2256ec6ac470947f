"""Faults inside the jobs, injected for real on tiny digits: a Ray Train worker killed
mid-unlearning, an ascent that diverges, a split manifest changed after `prepare`."""

import hashlib
import os
import signal
import subprocess
import time

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.flows.test_pipeline import run

pytestmark = pytest.mark.faults


def set_params(ws, tree):
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for dotted, value in tree.items():
        *path, key = dotted.split(".")
        node = params
        for part in path:
            node = node[part]
        node[key] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_worker_pids():
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def test_killed_worker_resumes_from_its_checkpoint(workspace):
    ws, env = workspace
    # 600 retention steps (10-30 s of compute here), a checkpoint every 100: a window to kill
    # in; as a Ray Train job with its own worker (auto would run it in the stage's process)
    set_params(ws, {"unlearn.finetune.steps": 600, "ray.checkpoint_every": 100,
                    "ray.max_failures": 1, "ray.job_mode": "workers"})
    run(["dvc", "repro", "decouple"], ws, env)
    run(["python", "-m", "flows.finetune"], ws, env)
    undisturbed = torch.load(ws / "models/unlearned.pt", weights_only=True)

    proc = subprocess.Popen(["python", "-m", "flows.finetune"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = ws / ".ray_results"
    before = set(results.glob("finetune-*"))
    killed, deadline = set(), time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        new_runs = set(results.glob("finetune-*")) - before
        if any(next(run_dir.glob("checkpoint_*"), None) for run_dir in new_runs):
            killed = train_worker_pids()
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
            if killed:
                break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=600)
    assert killed, f"no checkpoint appeared before the job ended:\n{out[-3000:]}"
    assert proc.returncode == 0, out[-4000:]
    assert not killed & train_worker_pids()  # the killed workers are gone for good
    resumed = torch.load(ws / "models/unlearned.pt", weights_only=True)
    assert resumed["info"]["steps"] == undisturbed["info"]["steps"] == 600
    # the restarted worker reloaded weights, optimizer and step from the checkpoint and
    # replayed the same seeded batches: the result matches the undisturbed run
    for name, weight in undisturbed["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name], weight, atol=1e-4), name
    assert abs(resumed["info"]["final_loss"] - undisturbed["info"]["final_loss"]) < 1e-4


def test_diverging_ascent_stops_before_anything_is_saved_or_registered(workspace):
    ws, env = workspace
    run(["dvc", "repro", "start"], ws, env)
    original = sha(ws / "models/original.pt")
    set_params(ws, {"unlearn.decouple.lr": 1.0e30, "unlearn.decouple.clip_norm": 1.0e6})
    proc = subprocess.run(["dvc", "repro"], cwd=ws, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "diverged" in out and "Running stage 'register'" not in out, out[-3000:]
    assert sha(ws / "models/original.pt") == original
    assert not (ws / "models/decoupled.pt").exists()
    assert not (ws / "reports/registered.json").exists()
    assert MlflowClient(f"sqlite:///{ws / 'mlflow.db'}").search_registered_models() == []


def test_tampered_manifest_is_caught_before_training(workspace):
    ws, env = workspace
    run(["dvc", "repro", "prepare"], ws, env)
    manifest = ws / "data/splits/retain.csv"
    rows = manifest.read_text().splitlines()
    sid, label, digest, *rest = rows[7].split(",")
    rows[7] = ",".join([sid, label, "0" * 64, *rest])
    manifest.write_text("\n".join(rows) + "\n")
    proc = subprocess.run(["python", "-m", "flows.train"], cwd=ws, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert f"data/splits/retain.csv:8: sha256 mismatch for {sid}" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (ws / "models/original.pt").exists()
