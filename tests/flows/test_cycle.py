"""The deletion-request loop for real: `unlearn forget add` -> `unlearn run --once` (a clone,
`dvc pull`, `dvc repro`, `dvc push`, a commit on the cycle branch, a registered candidate) ->
`unlearn promote`, three cycles in a row on tiny digits, on the session Ray and Prefect.
"""

import fcntl
import json
import shutil
import subprocess

import pytest
import yaml
from mlflow.tracking import MlflowClient

from flows.ops.cycle import SCHEDULE_SLUG
from tests.conftest import REPO
from tests.flows.inprocess import unlearn
from tests.flows.test_pipeline import run

OPS_PARAMS = {"forget": {"kind": "ledger"}, "backdoor": {"enabled": False},
              "schedule": {"retry_delay_s": 1}}


def forget_list(ws, env):
    return {r["request_id"]: r for r in json.loads(unlearn(["forget", "list", "--json"], ws,
                                                           env))}


def ops_workspace(ws, env):
    """The tiny workspace switched to the ledger, committed (a cycle runs committed params),
    with split manifests to check request ids against."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for section, values in OPS_PARAMS.items():
        params[section].update(values)
    # a cycle unlearns with the product's own defaults (the tiny params' longer ascent and
    # retention are for the backdoor of the pipeline test; a cycle has none)
    params["unlearn"] = yaml.safe_load((REPO / "params.yaml").read_text())["unlearn"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "ops"], ws, env)
    run(["dvc", "repro", "prepare"], ws, env)
    return [line.split(",")[0] for line in
            (ws / "data/splits/retain.csv").read_text().splitlines()[1:]]


def add(ws, env, ids, reason="erasure request"):
    return unlearn(["forget", "add", "--ids", ",".join(ids), "--reason", reason,
                    "--requester", "dpo"], ws, env)


@pytest.mark.ops
@pytest.mark.timeout(3600)
def test_three_cycles_keep_every_earlier_request_forgotten(workspace):
    ws, env = workspace
    retain = ops_workspace(ws, env)
    out = run(["unlearn", "run", "--once"], ws, env)
    assert "no pending deletion requests: nothing to do" in out

    batches = [retain[0:40], retain[40:80], retain[80:120]]
    client = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    for n, batch in enumerate(batches, start=1):
        assert f"req-000{n}: 40 sample(s) pending" in add(ws, env, batch)
        out = run(["unlearn", "run", "--once"], ws, env, timeout=1200)
        assert f"v{n} is 'candidate'" in out, out[-3000:]
        version = client.get_model_version("digits-ae", str(n))
        # cumulative: each version has forgotten every request so far, and its audit (over all
        # of them, reference-free: schedule.audit_reference none) passed
        assert version.tags["requests"] == ",".join(f"req-000{i}" for i in range(1, n + 1))
        assert version.tags["audit.passed"] == "true", version.tags["audit"]
        ledger = forget_list(ws, env)
        assert ledger[f"req-000{n}"]["status"] == "unlearned"
        assert ledger[f"req-000{n}"]["model_version"] == n
        if n == 1:  # the reviewer promotes v1; later cycles start from it
            run(["unlearn", "promote", "--version", "1", "--yes", "--by", "dpo"], ws, env)
            assert forget_list(ws, env)["req-0001"]["status"] == "promoted"

    cycles = [json.loads(x) for x in (ws / "ledger/cycles.jsonl").read_text().splitlines()]
    assert [c["model_version"] for c in cycles] == [1, 2, 3]
    assert [c["start"]["from"] for c in cycles] == ["original", "champion", "champion"]
    # incremental: from champion v1, cycle 3 unlearns requests 2 and 3 (v2 was never promoted)
    assert cycles[2]["start"]["requests"] == ["req-0001"]
    assert all(c["unlearn_seconds"] > 0 and c["seconds"]["total"] > 0 for c in cycles)
    # the original is trained once (later cycles keep it: same training data) and no cycle
    # trains a reference: a production cycle trains nothing from scratch
    experiments = [e.experiment_id for e in client.search_experiments()]
    trained = [r.data.tags.get("stage") for r in client.search_runs(experiments)
               if r.data.tags.get("stage", "").startswith("train-")]
    assert trained == ["train-original"], trained
    assert all(c["audit_against"] == "none" and c["retrain_seconds"] is None for c in cycles)
    branch_lock = yaml.safe_load(run(["git", "show", "unlearning:dvc.lock"], ws, env))
    assert "ledger/start.json" in {d["path"] for d in branch_lock["stages"]["start"]["deps"]}
    log = run(["git", "log", "--format=%s", "unlearning"], ws, env)
    assert log.count("Unlearning cycle") == 3 and "req-0003 -> digits-ae v3" in log
    assert not list((ws / ".cycles").glob("cycle-*/"))  # clones of successful cycles removed

    # one explicit calibration retrains once, checks the reference-free verdict against it
    # and gives the cycles' cost against that one retraining
    out = run(["unlearn", "calibrate"], ws, env, timeout=1200)
    calibration = json.loads((ws / "ledger/calibrations.jsonl").read_text().splitlines()[-1])
    assert calibration["retrained"] == calibration["reference_free"], out
    assert calibration["retrain_sample_grads"] > 0
    assert not list((ws / ".cycles").glob("calibration-*/"))
    costs = [(c["model_version"], round(c["seconds"]["total"]),
              round(c["unlearn_seconds"] / calibration["retrain_seconds"], 3),
              round(c["unlearn_sample_grads"] / calibration["retrain_sample_grads"], 3))
             for c in cycles]
    print("cycles (version, s, unlearn s / retrain s, sample gradients / retrain's):", costs,
          "one retraining:", round(calibration["retrain_seconds"]), "s")
    # the compute a cycle spends unlearning (sample gradients, not timers: CI's machine is
    # noisy) is a fraction of one retraining's: at most 0.15 (issue 17). Measured 0.074 /
    # 0.071 / 0.082 with the product's defaults (retention within its budget of 6.5 % of a
    # retraining); 0.23-0.32 when the tiny params' 40 fixed retention steps ran
    assert all(grads <= 0.15 for *_, grads in costs), costs


def test_requests_are_refused_cleanly_and_a_second_cycle_waits(workspace):
    """The first refusal and the cycle that waits on the lock run as real `unlearn` processes;
    the other `forget` commands in-process (tests/flows/inprocess.py)."""
    ws, env = workspace
    out = run(["unlearn", "forget", "add", "--ids", "digits:train:1", "--reason", "x"], ws, env,
              code=2)
    assert "split manifests are needed" in out and "Traceback" not in out
    retain = ops_workspace(ws, env)
    out = unlearn(["forget", "add", "--ids", f"{retain[0]},{retain[0]},digits:train:99999,"
                   "bogus", "--reason", "x"], ws, env, code=2)
    assert "3 bad id(s)" in out and "listed twice" in out and "malformed" in out
    assert "Traceback" not in out and (ws / "ledger/requests.jsonl").read_text() == ""
    assert "exactly one of --ids" in unlearn(["forget", "add", "--reason", "x"], ws, env,
                                             code=2)
    assert "needs --once" in unlearn(["run"], ws, env, code=2)
    add(ws, env, retain[:5])
    assert "already requested in req-0001" in unlearn(
        ["forget", "add", "--ids", retain[0], "--reason", "again"], ws, env, code=2)

    # a cycle already running holds the lock: the second one refuses and changes nothing
    (ws / ".cycles").mkdir()
    with (ws / ".cycles/cycle.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        out = run(["unlearn", "run", "--once"], ws, env, code=1)
    assert "another unlearning cycle is running" in out
    assert forget_list(ws, env)["req-0001"]["status"] == "pending"
    assert not (ws / "ledger/cycles.jsonl").exists()


def test_redeploying_the_schedule_keeps_one_schedule(workspace):
    ws, env = workspace
    script = ("import asyncio; from pathlib import Path; "
              "from flows.runtime.common import stage_params; "
              "from flows.ops.cycle import cycle_deployment, clear_stale_runs; "
              "d = cycle_deployment(stage_params(), Path.cwd()); i = d.apply(); "
              "asyncio.run(clear_stale_runs(i)); print(i)")
    first = run(["python", "-c", script], ws, env).strip().splitlines()[-1]
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["schedule"]["cron"] = "30 4 * * 1"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    second = run(["python", "-c", script], ws, env).strip().splitlines()[-1]
    assert first == second
    shown = subprocess.run(["prefect", "deployment", "inspect",
                            "unlearning-cycle/scheduled-unlearning"], cwd=ws, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert shown.count("'cron'") == 1 and "30 4 * * 1" in shown, shown


def test_prefect_yaml_schedule_is_params_schedule():
    deployment = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"][0]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert deployment["entrypoint"] == "flows/ops/cycle.py:unlearning_cycle"
    assert [s["cron"] for s in deployment["schedules"]] == [params["schedule"]["cron"]]
    assert deployment["schedules"][0]["slug"] == SCHEDULE_SLUG


def test_a_worker_runs_the_deployed_cycle(workspace):
    ws, env = workspace
    shutil.copy(REPO / "prefect.yaml", ws / "prefect.yaml")
    run(["prefect", "work-pool", "create", "unlearning", "--type", "process"], ws, env)
    for _ in range(2):  # a redeploy keeps one schedule
        run(["prefect", "--no-prompt", "deploy", "--all"], ws, env)
    shown = run(["prefect", "deployment", "inspect", "unlearning-cycle/scheduled-unlearning"],
                ws, env)
    assert shown.count("'cron'") == 1, shown
    run(["prefect", "deployment", "run", "unlearning-cycle/scheduled-unlearning"], ws, env)
    out = run(["prefect", "worker", "start", "--pool", "unlearning", "--run-once"], ws, env,
              timeout=600)
    assert "no pending deletion requests: nothing to do" in out, out[-3000:]
    assert "Completed" in out
