"""A copied embedded store points at its own artifact folder after `relocate_store`: MLflow
keeps local artifact locations absolute, so a copy would serve the folder it came from."""

import shutil
from pathlib import Path

from mlflow import MlflowClient

from flows.runtime.tracking import relocate_store


def test_a_copied_store_serves_its_own_artifacts(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    (old / "mlartifacts").mkdir(parents=True)
    client = MlflowClient(f"sqlite:///{old / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(old / "mlartifacts").as_uri())
    run = client.create_run(exp)
    (tmp_path / "note.txt").write_text("kept")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    shutil.copytree(old, new)
    shutil.rmtree(old)  # the folder the copy came from is gone

    changed = relocate_store(new / "mlflow.db", str(old / "mlartifacts"),
                             str(new / "mlartifacts"))
    assert changed["experiments.artifact_location"] == 1 and changed["runs.artifact_uri"] == 1
    moved = MlflowClient(f"sqlite:///{new / 'mlflow.db'}")
    assert moved.get_run(run.info.run_id).info.artifact_uri.startswith(
        (new / "mlartifacts").as_uri())
    got = moved.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
    assert Path(got).read_text() == "kept"
