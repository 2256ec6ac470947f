"""The local service stack (infra/local/up.sh) for real: PostgreSQL, S3 (moto), MLflow, Prefect.

The module starts its own stack, in a temporary state dir on free ports with its own env file
and a scratch DVC repo, so a developer's stack (`make services-up`) is never touched; then it
drives each server the way the pipeline does and finally stops everything with down.sh.
STACK_REUSE_ENV=<path to an up.sh env file> runs the same checks against a stack already up
instead (nothing is started or stopped then, and the down test is skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "infra" / "local"
BIN = Path(sys.executable).parent
QUIET = {"DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
         "GIT_PYTHON_REFRESH": "quiet"}
SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "STACK_MLFLOW_DB_PASSWORD",
               "STACK_PREFECT_DB_PASSWORD")
# up.sh's own limit is per service (240 s); these cover a first run that installs the venvs
# on a busy 2-core machine
UP_TIMEOUT = 900
STEP_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def run(cmd: list[str], env: dict[str, str], cwd: Path | None = None,
        timeout: int = STEP_TIMEOUT) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", *args],
                   cwd=repo, check=True, capture_output=True)


class Stack:
    def __init__(self, root: Path, env: dict[str, str], stack_env: dict[str, str],
                 up_output: str, scratch: Path) -> None:
        self.root = root
        self.env = env              # the knobs up.sh/down.sh/dvc-remote.sh ran with
        self.vars = stack_env       # what up.sh wrote to its env file
        self.up_output = up_output
        self.scratch = scratch      # a git + DVC repo whose config.local points at the stack
        self.client_env = {**os.environ, **QUIET, **stack_env,
                           "DVC_SITE_CACHE_DIR": str(root / "dvc-site"),
                           "PREFECT_HOME": str(root / "prefect-client"),
                           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}

    @property
    def secrets(self) -> list[str]:
        return [self.vars[k] for k in SECRET_KEYS]

    def s3(self):
        return boto3.client(
            "s3", endpoint_url=self.vars["AWS_ENDPOINT_URL"],
            aws_access_key_id=self.vars["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.vars["AWS_SECRET_ACCESS_KEY"],
            region_name=self.vars["AWS_DEFAULT_REGION"])

    def pids(self) -> dict[str, int]:
        pid_dir = Path(self.vars["STACK_STATE_DIR"]) / "pids"
        return {p.stem: int(p.read_text()) for p in pid_dir.glob("*.pid")}


def make_scratch_repo(path: Path, env: dict[str, str]) -> None:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    run([str(BIN / "dvc"), "init", "-q"], env, cwd=path)
    (path / "data.bin").write_bytes(os.urandom(200_000))
    run([str(BIN / "dvc"), "add", "-q", "data.bin"], env, cwd=path)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "data")


@pytest.fixture(scope="module")
def stack():
    # not pytest's tmp_path: its base dir is mode 700, and PostgreSQL runs as the postgres user
    root = Path(tempfile.mkdtemp(prefix="i2i-stack-"))
    root.chmod(0o755)
    reuse = os.environ.get("STACK_REUSE_ENV")
    env = {**os.environ, **QUIET, "DVC_SITE_CACHE_DIR": str(root / "dvc-site")}
    scratch = root / "scratch"
    make_scratch_repo(scratch, env)
    try:
        if reuse:
            stack_env = read_env(Path(reuse))
            run(["bash", str(LOCAL / "dvc-remote.sh"), str(scratch)],
                {**env, "STACK_ENV_FILE": reuse})
            yield Stack(root, env, stack_env, "", scratch)
            return
        env.update({
            "STACK_STATE_DIR": str(root / "state"),
            "STACK_ENV_FILE": str(root / "stack.env"),
            "STACK_DVC_REPO": str(scratch),
            "STACK_PG_PORT": str(free_port()),
            "STACK_S3_PORT": str(free_port()),
            "STACK_MLFLOW_PORT": str(free_port()),
            "STACK_PREFECT_PORT": str(free_port()),
        })
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(LOCAL / "up.sh")], env=env, capture_output=True,
                              text=True, timeout=UP_TIMEOUT)
        print(f"up.sh took {time.monotonic() - t0:.1f} s")
        try:
            assert proc.returncode == 0, f"up.sh failed:\n{proc.stdout}\n{proc.stderr}"
            yield Stack(root, env, read_env(root / "stack.env"), proc.stdout + proc.stderr,
                        scratch)
        finally:
            subprocess.run(["bash", str(LOCAL / "down.sh")], env=env, capture_output=True,
                           timeout=STEP_TIMEOUT)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_up_prints_no_secret_and_writes_a_private_env_file(stack):
    if not stack.up_output:
        pytest.skip("reusing a running stack")
    assert "S3 (moto) keeps data in memory only: a restart loses it" in stack.up_output
    for secret in stack.secrets:
        assert len(secret) >= 16
        assert secret not in stack.up_output
    env_file = Path(stack.env["STACK_ENV_FILE"])
    assert env_file.stat().st_mode & 0o077 == 0
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_DEFAULT_REGION",
                "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_BACKEND_STORE_URI"):
        assert stack.vars[key]
    # the servers' logs hold no credential either
    for log in (Path(stack.vars["STACK_STATE_DIR"]) / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert not [s for s in stack.secrets if s in text], log


def test_up_twice_keeps_the_running_servers(stack):
    if not stack.up_output:
        pytest.skip("reusing a running stack")
    before = stack.pids()
    proc = run(["bash", str(LOCAL / "up.sh")], stack.env)
    assert proc.stderr.count("already running") == 4, proc.stderr
    assert stack.pids() == before
    assert read_env(Path(stack.env["STACK_ENV_FILE"])) == stack.vars


def test_buckets_exist(stack):
    names = {b["Name"] for b in stack.s3().list_buckets()["Buckets"]}
    assert {"dvc-remote", "mlflow-artifacts", "ray-results"} <= names


def test_ray_storage_path_operations(stack):
    """What Ray Train does to its storage_path (through pyarrow's S3 filesystem): directory
    markers, checkpoint files, and deleting old checkpoints (DeleteObjects)."""
    from urllib.parse import urlsplit

    import pyarrow.fs as pafs

    endpoint = urlsplit(stack.vars["AWS_ENDPOINT_URL"])
    fs = pafs.S3FileSystem(
        endpoint_override=endpoint.netloc, scheme=endpoint.scheme,
        access_key=stack.vars["AWS_ACCESS_KEY_ID"], secret_key=stack.vars["AWS_SECRET_ACCESS_KEY"],
        region=stack.vars["AWS_DEFAULT_REGION"])
    for i in range(2):
        fs.create_dir(f"ray-results/exp/checkpoint_{i}")
        with fs.open_output_stream(f"ray-results/exp/checkpoint_{i}/state.pt") as out:
            out.write(b"weights %d" % i)
    fs.delete_dir("ray-results/exp/checkpoint_0")
    left = [f.path for f in fs.get_file_info(pafs.FileSelector("ray-results/exp", recursive=True))
            if f.type == pafs.FileType.File]
    assert left == ["ray-results/exp/checkpoint_1/state.pt"]


MLFLOW_SCRIPT = """
import json, sys, tempfile, pathlib, mlflow
mlflow.set_experiment("stack-test")
with mlflow.start_run() as run:
    mlflow.log_param("lr", 0.01)
    path = pathlib.Path(tempfile.mkdtemp()) / "note.txt"
    path.write_text("hello from the stack test")
    mlflow.log_artifact(str(path))
data = mlflow.MlflowClient().get_run(run.info.run_id).data
print(json.dumps({"run_id": run.info.run_id, "artifact_uri": run.info.artifact_uri,
                  "params": data.params, "tags": data.tags}))
"""


def test_mlflow_run_lands_in_postgres_and_s3(stack):
    # the client gets the whole env file, credentials included, as a developer's shell would
    out = run([sys.executable, "-c", MLFLOW_SCRIPT], stack.client_env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    run_id = result["run_id"]
    assert result["params"] == {"lr": "0.01"}
    assert result["artifact_uri"].startswith("mlflow-artifacts:")

    # the artifact went through the server's proxy into the bucket
    keys = [o["Key"] for o in stack.s3().list_objects_v2(Bucket="mlflow-artifacts")
            .get("Contents", [])]
    assert [k for k in keys if run_id in k and k.endswith("note.txt")], keys

    # the run is a row in PostgreSQL (over TCP, with the mlflow role's password)
    env = {**os.environ, "PGPASSWORD": stack.vars["STACK_MLFLOW_DB_PASSWORD"],
           "PGCONNECT_TIMEOUT": "10"}
    port = stack.vars["MLFLOW_BACKEND_STORE_URI"].rsplit(":", 1)[1].split("/")[0]
    row = run(["psql", "-X", "-tA", "-h", "127.0.0.1", "-p", port, "-U", "mlflow", "-d", "mlflow",
               "-c", f"SELECT r.status, p.value FROM runs r JOIN params p ON p.run_uuid = "
                     f"r.run_uuid WHERE r.run_uuid = '{run_id}' AND p.key = 'lr'"], env).stdout
    assert row.strip() == "FINISHED|0.01"

    # no credential leaked into what MLflow recorded
    recorded = json.dumps({"params": result["params"], "tags": result["tags"]})
    assert not [s for s in stack.secrets if s in recorded]


def test_dvc_push_then_pull_in_a_clone(stack):
    env = stack.client_env
    dvc = str(BIN / "dvc")
    run([dvc, "push", "-r", "s3"], env, cwd=stack.scratch)
    objects = stack.s3().list_objects_v2(Bucket="dvc-remote").get("KeyCount", 0)
    assert objects >= 1

    clone = stack.root / "clone"
    git(stack.root, "clone", "-q", str(stack.scratch), str(clone))
    run(["bash", str(LOCAL / "dvc-remote.sh"), str(clone)], {**stack.env, **QUIET})
    assert "endpointurl" in (clone / ".dvc" / "config.local").read_text()
    run([dvc, "pull", "-r", "s3"], env, cwd=clone)
    assert (clone / "data.bin").read_bytes() == (stack.scratch / "data.bin").read_bytes()


PREFECT_SCRIPT = """
from prefect import flow, task

@task
def double(x):
    return 2 * x

@flow(name="stack-test-flow")
def stack_test_flow():
    return double(21)

print(stack_test_flow())
"""


def test_prefect_server_runs_a_flow(stack):
    api = stack.vars["PREFECT_API_URL"]
    with urllib.request.urlopen(f"{api}/health", timeout=30) as resp:
        assert json.load(resp) is True
    out = run([sys.executable, "-c", PREFECT_SCRIPT], stack.client_env).stdout
    assert out.strip().splitlines()[-1] == "42"
    # the run is recorded by this server (not a temporary one), Completed
    body = json.dumps({"flows": {"name": {"any_": ["stack-test-flow"]}}}).encode()
    req = urllib.request.Request(f"{api}/flow_runs/filter", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        states = [r["state_type"] for r in json.load(resp)]
    assert "COMPLETED" in states


def test_down_stops_every_process(stack):
    if not stack.up_output:
        pytest.skip("reusing a running stack: not stopping it")
    pids = stack.pids()
    assert set(pids) == {"postgres", "s3", "mlflow", "prefect"}
    # the servers' workers too (uvicorn, postgres backends): everyone in their process groups
    groups = set(pids.values())
    members = [int(pid) for pid, pgid in (line.split() for line in subprocess.run(
        ["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout.splitlines())
        if int(pgid) in groups]
    run(["bash", str(LOCAL / "down.sh")], stack.env)
    alive = [pid for pid in members if Path(f"/proc/{pid}").exists()]
    assert not alive, alive
    assert stack.pids() == {}
    run(["bash", str(LOCAL / "down.sh")], stack.env)   # twice is fine
