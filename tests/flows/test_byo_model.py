"""Bring your own model: a model trained with plain PyTorch outside the pipeline is wrapped
(`unlearn import-model`), unlearned, audited reference-free and registered; nothing is
trained from scratch on the way."""

import json
import subprocess

import torch
import yaml
from mlflow.tracking import MlflowClient

from components.data import load_dataset
from components.models import build_model
from components.params import parse_params
from components.tasks import to_float
from tests.flows.inprocess import unlearn


def run(cmd, ws, env, code=0):
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == code, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def train_elsewhere(params_file, path):
    """What a team's own script does: its model, its loop, torch.save(state_dict)."""
    params = parse_params(yaml.safe_load(params_file.read_text()))
    images = to_float(load_dataset("digits", "", "train").images)
    torch.manual_seed(0)
    model = build_model(params.model, 1, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        batch = images[torch.randint(len(images), (64,))]
        loss = (model(batch) - batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), path)


def test_a_model_trained_elsewhere_is_unlearned_without_training_anything(workspace):
    ws, env = workspace
    train_elsewhere(ws / "params.yaml", ws / "theirs.pt")
    out = unlearn(["import-model", "theirs.pt", "--out", "models/imported.pt"], ws, env)
    assert "wrote models/imported.pt" in out
    # a state dict of another architecture is one clear line, nothing written
    torch.save({"encoder.0.weight": torch.zeros(3)}, ws / "other.pt")
    bad = unlearn(["import-model", "other.pt", "--out", "models/bad.pt"], ws, env, code=2)
    assert "does not fit model.family=ae" in bad and "Traceback" not in bad
    assert not (ws / "models/bad.pt").exists()

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["model"]["source"] = "models/imported.pt"
    params["audit"]["reference"] = "none"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro"], ws, env)

    train = json.loads((ws / "reports/train.json").read_text())
    assert train["original"]["imported"] and train["original"]["source"] == "models/imported.pt"
    assert train["retrained"] == {"no_reference": True}  # no reference was trained
    assert train["original"]["learned"]["passed"]
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("test-pipeline").experiment_id])
    # no training job: the train stage's runs (by their stage tag) are imports, none trained
    stages = [r.data.tags.get("stage", "") for r in runs]
    assert "prepare" in stages and "register" in stages, stages
    assert not [s for s in stages if s.startswith("train-")], stages

    audit = json.loads((ws / "reports/audit.json").read_text())
    assert "retrained" not in audit["models"]
    assert audit["verdict"]["against"] == "reference-free"
    metrics = json.loads((ws / "reports/metrics.json").read_text())
    assert metrics["retrain_gap"] is None and metrics["cost_ratio"] is None
    version = client.get_model_version_by_alias("digits-ae", "candidate")
    assert version.tags["audit.against"] == "reference-free"
    assert version.tags["audit.passed"] == str(audit["verdict"]["passed"]).lower()
    review = unlearn(["review"], ws, env)
    assert "reference-free" in review and "Traceback" not in review
