"""`make test-cluster`: the pipeline on a real two-node Ray cluster on this machine.

Two raylets on 127.0.0.1 (a head and a worker node, one CPU each), the local service stack's
S3 server as Ray Train's storage_path and its MLflow and Prefect servers. The decouple and
finetune stages run with 2 Train workers, one per node (STRICT_SPREAD, checked from the
workers' own lines); then the worker node is killed mid-retention, a new node joins, and the
job resumes from its last checkpoint in S3 and ends where an undisturbed run ends.
"""

import os
import re
import signal
import subprocess
import time

import boto3
import pytest
import torch

from tests.conftest import BIN, QUIET_ENV, REPO, free_port, local_stack, make_workspace
from tests.flows.test_pipeline import run

pytestmark = pytest.mark.cluster
NODE_LINE = re.compile(r"\[worker\] rank (\d)/2 on node (\w+)")
PREFIX = "cluster-test"


def raylet_pids():
    out = subprocess.run(["pgrep", "-x", "raylet"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def start_node(address, env):
    """A worker node (its own raylet) joining the head; returns the new raylet's pid."""
    before = raylet_pids()
    run([str(BIN / "ray"), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
         "--num-cpus=1", "--disable-usage-stats"], REPO, env, timeout=180)
    new = raylet_pids() - before
    assert len(new) == 1, new
    return new.pop()


@pytest.fixture
def cluster():
    env = {**os.environ, **QUIET_ENV}
    with local_stack(env) as (settings, _, _):
        env = {**env, **settings}  # the raylets' workers read S3 with the stack's keys
        port = free_port()
        run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
             "--disable-usage-stats"], REPO, env, timeout=180)
        address = f"127.0.0.1:{port}"
        try:
            yield address, settings, start_node(address, env)
        finally:
            subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True)


def placement(out):
    nodes = dict(NODE_LINE.findall(out))
    assert set(nodes) == {"0", "1"}, out[-3000:]
    return nodes


@pytest.mark.timeout(3600)
def test_two_nodes_spread_workers_and_survive_losing_one(cluster, tmp_path):
    address, settings, worker_raylet = cluster
    storage = f"s3://ray-results/{PREFIX}"
    ws, env = make_workspace(tmp_path, {
        "RAY_ADDRESS": address, **settings}, {
        "ray": {"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD",
                "storage_path": storage, "max_failures": 2, "checkpoint_every": 100},
        "unlearn": {"finetune": {"steps": 600}}})
    out = run(["dvc", "repro", "decouple"], ws, env, timeout=1800)
    decouple_out = out[out.index("Running stage 'decouple'"):]
    nodes = placement(decouple_out)
    assert nodes["0"] != nodes["1"]  # one Train worker on each raylet

    out = run(["python", "-m", "flows.finetune"], ws, env, timeout=900)
    assert len(set(placement(out).values())) == 2
    undisturbed = torch.load(ws / "models/unlearned.pt", weights_only=True)

    s3 = boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL"],
                      aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
                      region_name=settings["AWS_DEFAULT_REGION"])

    def checkpoints():
        keys = s3.list_objects_v2(Bucket="ray-results", Prefix=f"{PREFIX}/finetune-").get(
            "Contents", [])
        return {k["Key"].split("/")[1] for k in keys if "/checkpoint_" in k["Key"]}

    before = checkpoints()
    proc = subprocess.Popen(["python", "-m", "flows.finetune"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not checkpoints() - before:
        assert proc.poll() is None and time.time() < deadline, "no checkpoint reached S3"
        time.sleep(0.5)
    os.kill(worker_raylet, signal.SIGKILL)  # the worker node dies with its Train worker
    start_node(address, {**env, **settings})  # a replacement joins; the job resumes on it
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    assert out.count("[worker] rank 0/2") >= 2  # the worker group was started again
    resumed = torch.load(ws / "models/unlearned.pt", weights_only=True)
    assert resumed["info"]["steps"] == 600
    # resumed from the checkpoint in S3 (weights, optimizer, step; the same seeded batches)
    assert abs(resumed["info"]["final_loss"] - undisturbed["info"]["final_loss"]) < 1e-3
    for name, weight in undisturbed["state_dict"].items():
        assert torch.allclose(resumed["state_dict"][name], weight, atol=1e-3), name
