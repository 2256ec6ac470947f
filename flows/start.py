"""Stage `start`: the model that unlearning starts from. Writes models/start.pt.

`ledger/start.json` says which: `{"from": "original"}` (the default, and every research run),
or `{"from": "champion", "version": N, "run_id": ..., "requests": [...]}`, written by a
scheduled cycle (`unlearn run --once`, schedule.start_from=champion) so that the cycle unlearns
only the requests the champion has not forgotten yet. A champion's weights come from the
project's own MLflow registry: the `checkpoint/unlearned.pt` artifact that `register` logged
with the version, loaded as tensors only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import torch

from components.ledger import LEDGER_DIR
from components.params import registered_model_name
from components.splits import file_sha256
from flows.ops.gate import ARTIFACT_TAG, CHECKPOINT_ARTIFACT
from flows.runtime.common import (
    MODEL_DIR,
    StageError,
    read_json,
    read_model_file,
    run_stage,
    stage_flow,
    stage_params,
)
from flows.runtime.tracking import client, tracking_uri

START_FILE = LEDGER_DIR / "start.json"
__all__ = ["CHECKPOINT_ARTIFACT", "START_FILE", "champion_weights", "start"]


def champion_weights(model_name: str, spec: dict) -> dict:
    """The model file a registered version was made from, downloaded from its MLflow run."""
    version = client().get_model_version(model_name, str(spec["version"]))
    if version.run_id != spec["run_id"]:
        raise StageError(f"{START_FILE}: version {spec['version']} of {model_name} comes from "
                         f"run {version.run_id}, not {spec['run_id']} (registry changed?)")
    mlflow.set_tracking_uri(tracking_uri())
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=spec["run_id"],
                                                   artifact_path=CHECKPOINT_ARTIFACT, dst_path=tmp)
        # the weights the gate promoted, not whatever the artifact store holds now
        if version.tags.get(ARTIFACT_TAG) != file_sha256(path):
            raise StageError(f"{CHECKPOINT_ARTIFACT} of {model_name} v{spec['version']} is not "
                             f"the registered file (its {ARTIFACT_TAG} tag: "
                             f"{version.tags.get(ARTIFACT_TAG, 'none')[:12]})")
        return torch.load(path, map_location="cpu", weights_only=True)


@stage_flow("start")
def start() -> dict:
    params = stage_params()
    spec = read_json(START_FILE)
    out = MODEL_DIR / "start.pt"
    if spec.get("from") == "champion":
        blob = champion_weights(registered_model_name(params), spec)
        blob["info"] = {**blob["info"], "start": f"champion v{spec['version']}",
                        "covers": list(spec.get("requests", []))}
        torch.save(blob, out)
    elif spec.get("from") == "original":
        read_model_file(MODEL_DIR / "original.pt")  # fails clearly when it is missing
        shutil.copyfile(MODEL_DIR / "original.pt", out)
    else:
        raise StageError(f"{START_FILE}: 'from' must be 'original' or 'champion', got {spec}")
    print(f"[start] unlearning starts from {spec['from']}"
          + (f" v{spec['version']} (it forgot {len(spec.get('requests', []))} request(s))"
             if spec["from"] == "champion" else ""))
    return {"from": spec["from"], "path": str(Path(out))}


if __name__ == "__main__":
    run_stage(start)
