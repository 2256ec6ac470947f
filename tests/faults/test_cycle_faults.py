"""The deletion-request cycle under real faults, on the real local stack (infra/local: MLflow
server on PostgreSQL, S3 server, Prefect server): two cycles at once, the cycle's process
killed mid-run, the S3 server gone mid-push; then a clean cycle, and no secret anywhere.
"""

import json
import os
import signal
import subprocess
import threading
import time

import boto3
import pytest
from mlflow import MlflowClient

from tests.conftest import local_stack
from tests.flows.test_cycle import add, forget_list, ops_workspace
from tests.flows.test_pipeline import run

pytestmark = pytest.mark.faults


@pytest.fixture
def stack(workspace):
    """The local service stack, pointed at the workspace (its DVC remote `s3` the default)."""
    ws, env = workspace
    with local_stack(env, ws) as (settings, up, state):
        run(["dvc", "remote", "default", "--local", "s3"], ws, env)
        cycle_env = {**env, **settings, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
        yield ws, cycle_env, settings, up, state


class Cycle:
    """`unlearn run --once` in its own process group, its output collected line by line."""

    def __init__(self, ws, env):
        self.proc = subprocess.Popen(["unlearn", "run", "--once"], cwd=ws, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                                       daemon=True)
        self.reader.start()

    def wait_for(self, text, timeout=900):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"never saw {text!r}:\n{''.join(self.lines)[-4000:]}")

    def finish(self, timeout=1200):
        self.proc.wait(timeout)
        self.reader.join(30)
        return self.proc.returncode, "".join(self.lines)


@pytest.mark.timeout(3600)  # four cycles' worth of pipeline runs on 2 cores
def test_cycle_faults_leave_ledger_and_registry_consistent(stack):
    ws, env, settings, stack_up, state = stack
    retain = ops_workspace(ws, env)
    add(ws, env, retain[:40])
    client = MlflowClient(settings["MLFLOW_TRACKING_URI"])

    def versions():
        try:
            return sorted(int(v.version) for v in client.search_model_versions(
                "name='digits-ae'"))
        except Exception:  # not registered yet
            return []

    # two cycles at once: the second refuses while the first holds the workspace lock
    first = Cycle(ws, env)
    first.wait_for("Running stage 'train'")
    code, out = Cycle(ws, env).finish(300)
    assert code == 1 and "another unlearning cycle is running" in out, out[-3000:]
    # the first one's process group is killed mid-repro (a crash, no cleanup code runs)
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.finish(60)
    assert forget_list(ws, env)["req-0001"]["status"] == "pending"
    assert versions() == [] and not (ws / "ledger/cycles.jsonl").exists()

    # S3 dies right after the model was registered, before `dvc push`: the push task retries,
    # the cycle fails clearly, the version it registered is deleted, nothing is marked
    third = Cycle(ws, env)
    third.wait_for("[register]")
    os.kill(int((state / "pids/s3.pid").read_text()), signal.SIGKILL)
    code, out = third.finish()
    assert code == 1, out[-4000:]
    assert "dvc push" in out and "Retry" in out and "the cycle failed" in out, out[-4000:]
    assert "undone: version 1 deleted" in out
    assert versions() == []
    assert forget_list(ws, env)["req-0001"]["status"] == "pending"

    # S3 back (empty: moto keeps data in memory only), the next cycle simply succeeds
    stack_up()
    code, out = Cycle(ws, env).finish()
    assert code == 0, out[-4000:]
    assert versions() == [2]  # one live version: no duplicate of the failed attempt
    request = forget_list(ws, env)["req-0001"]
    assert (request["status"], request["model_version"]) == ("unlearned", 2)
    s3 = boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL"],
                      aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"],
                      region_name=settings["AWS_DEFAULT_REGION"])
    assert s3.list_objects_v2(Bucket="dvc-remote").get("KeyCount", 0) > 0
    cycles = [json.loads(x) for x in (ws / "ledger/cycles.jsonl").read_text().splitlines()]
    assert [c["model_version"] for c in cycles] == [2]

    # no credential in MLflow params or tags, Prefect's logs, the reports, the ledger, the logs
    secrets = {v for k, v in settings.items()
               if any(w in k for w in ("SECRET", "PASSWORD")) and len(v) >= 8}
    assert secrets
    texts = []
    for exp in client.search_experiments():
        for r in client.search_runs([exp.experiment_id]):
            texts += [json.dumps(r.data.params), json.dumps(r.data.tags)]
    texts += [json.dumps(v.tags) for v in client.search_model_versions("name='digits-ae'")]
    texts.append(run(["python", "-c", PREFECT_LOGS], ws, env))
    for folder in ("reports", "ledger", ".cycles"):
        texts += [p.read_text(errors="replace") for p in (ws / folder).rglob("*") if p.is_file()]
    texts.append(run(["git", "log", "-p", "unlearning"], ws, env))
    leaked = [s[:4] + "..." for s in secrets if any(s in t for t in texts)]
    assert not leaked, f"secrets found: {leaked}"


PREFECT_LOGS = """
import asyncio
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        offset = 0
        while logs := await c.read_logs(limit=200, offset=offset):
            print("\\n".join(log.message for log in logs))
            offset += len(logs)
asyncio.run(main())
"""
