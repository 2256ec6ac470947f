"""The scheduled unlearning cycle: pending deletion requests -> an audited `candidate` version.

    unlearn run --once    one cycle now (nothing pending: does nothing and says so)
    unlearn serve         the same flow as a Prefect deployment on `schedule.cron`

A cycle never runs `dvc repro` in the user's workspace (DVC locks a workspace per repro): it
clones the repository into `schedule.workdir/<cycle id>`, checks out `schedule.branch`, copies
the ledger in, `dvc pull`s the last outputs, runs `dvc repro` (from the champion when
`schedule.start_from=champion`), `dvc push`es, commits dvc.lock, params and the ledger to the
branch and pushes it back, and only then marks the requests `unlearned` with the new model
version. If any step fails, the version it registered is deleted and `candidate` goes back to
where it was: the ledger and the registry are as before, and the cycle can simply run again.
One cycle at a time: a second one refuses while the first holds the lock. A cycle refuses
to start from a champion the gate cannot vouch for (moved outside `unlearn promote`, a tag
edited, an artifact replaced: flows/ops/gate.py), naming the version.

A cycle audits as `schedule.audit_reference` says: `none` by default, so it trains no model
(the original is kept while only the split moves, flows/train.py) and costs a fraction of a
retraining. `unlearn calibrate` is the explicit, occasional check of that verdict: the same
repro with a retrained reference, both verdicts and the measured cost ratio appended to
ledger/calibrations.jsonl, nothing registered.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.ledger import LEDGER_DIR, REQUESTS, STATUS, UNLEARNED, mark, pending, read_ledger
from components.params import AuditParams, Params, registered_model_name
from components.review import request_ids
from components.verdict import audit_verdict
from flows.ops.gate import champion_problems
from flows.runtime.common import StageError, stage_flow, stage_params
from flows.runtime.scores import CACHE_ENV
from flows.runtime.stack import flow_api_env, warm_stages
from flows.runtime.tracking import (
    PARENT_ENV,
    client,
    create_pipeline_run,
    end_pipeline_run,
    setup,
    tracking_uri,
)
from flows.start import CHECKPOINT_ARTIFACT, START_FILE

BIN = Path(sys.executable).parent
CYCLES_LOG = LEDGER_DIR / "cycles.jsonl"
CALIBRATIONS_LOG = LEDGER_DIR / "calibrations.jsonl"
CANDIDATE, CHAMPION = "candidate", "champion"


class CycleBusy(StageError):
    """Another cycle holds the lock of this workspace."""


@contextmanager
def cycle_lock(workdir: Path) -> Iterator[None]:
    """Hold the workspace's cycle lock (an flock: released by the OS if the process dies)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "cycle.lock"
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise CycleBusy(f"another unlearning cycle is running ({f.read().strip()}); "
                            "try again when it has finished") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        f.flush()
        yield


def sh(cmd: list[str], cwd: Path, env: dict[str, str], log: Path | None = None) -> str:
    """Run a command; stream its output (and to `log`); raise with its tail on failure."""
    out = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            out.append(line)
            if log is not None:
                print(f"  {line}", end="", flush=True)
    text = "".join(out)
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{text}")
    if proc.returncode != 0:
        raise StageError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{text[-2000:]}")
    return text


def start_spec(params: Params) -> dict[str, Any]:
    """What ledger/start.json says for this cycle: the champion when schedule.start_from is
    `champion` and the champion carries its weights file, else the original."""
    if params.schedule.start_from == "original":
        return {"from": "original"}
    try:
        champ = client().get_model_version_by_alias(registered_model_name(params), CHAMPION)
    except Exception:  # no registered model or no champion yet
        return {"from": "original"}
    artifacts = [a.path for a in client().list_artifacts(champ.run_id, "checkpoint")]
    if CHECKPOINT_ARTIFACT not in artifacts:
        print(f"[cycle] champion v{champ.version} has no {CHECKPOINT_ARTIFACT}: from the original")
        return {"from": "original"}
    covers = request_ids(champ.tags.get("requests"))
    return {"from": "champion", "version": int(champ.version), "run_id": champ.run_id,
            "requests": covers}


def repro(args: list[str], ws: Path, env: dict[str, str], log: Path) -> None:
    """`dvc repro <args>` in the clone, its stages pointed at this flow's Prefect API and
    handed to a warm stage runner (flows/runtime/warm.py: ~4-6 s of imports less a stage)."""
    env = {**env, **flow_api_env()}
    with warm_stages(env) as runner:
        sh(["dvc", "repro", *args], ws, {**env, **runner}, log)


def clone_env(root: Path) -> dict[str, str]:
    """The cycle's environment: the workspace's MLflow (its registry, not a clone's), tools."""
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "DVC_NO_ANALYTICS": "1",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
            # the models a cycle leaves unchanged (the original) are not scored again
            CACHE_ENV: os.environ.get(CACHE_ENV, str(root / ".cache/scores"))}


@task(name="clone", cache_policy=NO_CACHE)
def clone(root: Path, workdir: Path, branch: str, env: dict[str, str]) -> Path:
    """A fresh clone on `branch` (created from HEAD the first time, HEAD merged in later)."""
    head = sh(["git", "rev-parse", "HEAD"], root, env).strip()
    sh(["git", "clone", "-q", str(root), str(workdir)], root, env)
    if sh(["git", "ls-remote", "--heads", "origin", branch], workdir, env).strip():
        sh(["git", "checkout", "-q", "-B", branch, f"origin/{branch}"], workdir, env)
        sh(["git", "-c", "user.name=unlearn", "-c", "user.email=unlearn@localhost", "merge",
            "-q", "--no-edit", "-X", "theirs", head], workdir, env)
    else:
        sh(["git", "checkout", "-q", "-b", branch, head], workdir, env)
    # remotes: the workspace's local config (e.g. the S3 remote of the service stack), and
    # local paths made absolute (relative ones would point inside the clone)
    local = root / ".dvc" / "config.local"
    if local.exists():
        shutil.copy(local, workdir / ".dvc" / "config.local")
    from dvc.repo import Repo  # DVC's own config reader resolves relative remote paths

    with Repo(str(root)) as repo:
        remotes = {n: r["url"] for n, r in repo.config["remote"].items()}
    for name, url in remotes.items():
        if "://" not in url:
            sh(["dvc", "remote", "modify", "--local", name, "url", url], workdir, env)
    return workdir


def commit_and_push(ws: Path, branch: str, message: str, env: dict[str, str]) -> str:
    files = ["dvc.lock", "params.yaml", str(LEDGER_DIR)]
    sh(["git", "add", *files], ws, env)
    sh(["git", "-c", "user.name=unlearn", "-c", "user.email=unlearn@localhost", "commit", "-q",
        "-m", message], ws, env)
    sh(["git", "push", "-q", "origin", f"HEAD:refs/heads/{branch}"], ws, env)
    return sh(["git", "rev-parse", "HEAD"], ws, env).strip()


def undo_registration(params: Params, version: int | None, before: int | None) -> None:
    """Delete the version a failed cycle registered and move `candidate` back."""
    if version is None:
        return
    name = registered_model_name(params)
    try:
        client().delete_model_version(name, str(version))
        if before is not None:
            client().set_registered_model_alias(name, CANDIDATE, str(before))
    except Exception as exc:  # the registry itself may be what failed
        print(f"[cycle] could NOT undo the registration of {name} v{version} ({exc}); delete "
              f"it by hand and point '{CANDIDATE}' back to {before}")
        return
    print(f"[cycle] undone: version {version} deleted, '{CANDIDATE}' back on {before}")


def check_champion(params: Params) -> None:
    """Refuse, before anything is cloned, to start from a champion that did not pass the gate."""
    if params.schedule.start_from != "champion":
        return
    name = registered_model_name(params)
    try:
        champ = client().get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no registered model or no champion: the cycle starts from the original
        return
    problems = champion_problems(name, champ)
    if problems:
        raise StageError(f"refusing to start a cycle from champion v{champ.version} of {name}: "
                         f"{problems[0]}; promote a version with `unlearn promote`, or set "
                         "schedule.start_from: original")


def alias_version(name: str, alias: str) -> int | None:
    try:
        return int(client().get_model_version_by_alias(name, alias).version)
    except Exception:  # no such model or alias
        return None


def set_param(path: Path, dotted: str, value: Any) -> None:
    """Set one key of a params.yaml in place, keeping its comments (ruamel, as DVC does)."""
    from ruamel.yaml import YAML

    yaml = YAML()
    tree = yaml.load(path.read_text())
    *parents, key = dotted.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[key] = value
    with path.open("w") as f:
        yaml.dump(tree, f)


@stage_flow("calibration")
def calibration(root: str = ".") -> dict:
    """Check the reference-free verdict once against a retrained reference: in a clone, the
    current forget set (every request so far) unlearned from the original and audited
    against a model retrained without it. Nothing is registered or marked; the record goes to
    ledger/calibrations.jsonl."""
    root_path = Path(root).resolve()
    os.chdir(root_path)
    params = stage_params()
    workdir = (root_path / params.schedule.workdir).resolve()
    with cycle_lock(workdir):
        cycle_id = time.strftime("calibration-%Y%m%d-%H%M%S")
        ws, env = workdir / cycle_id, clone_env(root_path)
        parent = create_pipeline_run(setup(params), cycle_id, "calibration")
        env[PARENT_ENV] = parent
        log = workdir / f"{cycle_id}.log"
        t0 = time.perf_counter()
        clone(root_path, ws, params.schedule.branch, env)
        for fname in (REQUESTS, STATUS):
            if (root_path / LEDGER_DIR / fname).exists():
                shutil.copy(root_path / LEDGER_DIR / fname, ws / LEDGER_DIR / fname)
        (ws / START_FILE).write_text(json.dumps({"from": "original"}) + "\n")
        set_param(ws / "params.yaml", "audit.reference", "retrained")
        sh(["dvc", "pull", "--allow-missing", "-q"], ws, env, log)
        try:
            repro(["evaluate"], ws, env, log)
        finally:
            end_pipeline_run(parent)
        audit = json.loads((ws / "reports/audit.json").read_text())
        metrics = json.loads((ws / "reports/metrics.json").read_text())
        free = audit_verdict(audit["models"]["unlearned"], None,
                             AuditParams.model_validate(audit["audit_params"]))
        record = {"calibration": cycle_id, "requests": [r.request_id for r in
                                                        read_ledger(LEDGER_DIR)],
                  "retrained": audit["verdict"]["passed"], "reference_free": free["passed"],
                  "failed_retrained": audit["verdict"]["failed"],
                  "failed_reference_free": free["failed"],
                  **{k: metrics.get(k) for k in ("unlearn_seconds", "retrain_seconds",
                                                 "unlearn_sample_grads",
                                                 "retrain_sample_grads", "cost_ratio",
                                                 "cost_ratio_grads", "retrain_gap")},
                  "seconds": time.perf_counter() - t0}
        with (root_path / CALIBRATIONS_LOG).open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        shutil.rmtree(ws, ignore_errors=True)
    agree = "agree" if record["retrained"] == record["reference_free"] else "DISAGREE"
    print(f"[calibrate] verdicts {agree}: against the retrained reference "
          f"{'PASSED' if record['retrained'] else 'FAILED'}, reference-free "
          f"{'PASSED' if record['reference_free'] else 'FAILED'}; cost ratio "
          f"{record['cost_ratio']:.3f} ({record['unlearn_seconds']:.0f} s vs "
          f"{record['retrain_seconds']:.0f} s); recorded in {CALIBRATIONS_LOG}")
    return record


@stage_flow("unlearning-cycle")
def unlearning_cycle(root: str = ".") -> dict:
    """One cycle over the pending deletion requests of the workspace at `root`."""
    root_path = Path(root).resolve()
    os.chdir(root_path)
    params = stage_params()
    todo = pending(read_ledger(LEDGER_DIR))
    if not todo:
        print("[cycle] no pending deletion requests: nothing to do")
        return {"status": "idle", "requests": []}
    check_champion(params)
    workdir = (root_path / params.schedule.workdir).resolve()
    with cycle_lock(workdir):
        return _run(params, root_path, workdir, [r.request_id for r in todo])


def _run(params: Params, root: Path, workdir: Path, todo: list[str]) -> dict:
    cycle_id = time.strftime("cycle-%Y%m%d-%H%M%S")
    ws, env, t = workdir / cycle_id, clone_env(root), {}
    log = workdir / f"{cycle_id}.log"
    # the experiment's artifacts live in the workspace, not in the clone; the cycle's stage
    # runs nest under one run named with the cycle id (register adds the version)
    parent = create_pipeline_run(setup(params), cycle_id, "cycle")
    env[PARENT_ENV] = parent
    name = registered_model_name(params)
    before = alias_version(name, CANDIDATE)
    retry = {"retries": params.schedule.retries,
             "retry_delay_seconds": params.schedule.retry_delay_s}
    print(f"[cycle] {cycle_id}: {len(todo)} pending request(s): {', '.join(todo)}")
    version = None
    t0 = time.perf_counter()
    try:
        clone(root, ws, params.schedule.branch, env)
        for fname in (REQUESTS, STATUS):  # the workspace's ledger is the source of truth
            if (root / LEDGER_DIR / fname).exists():
                shutil.copy(root / LEDGER_DIR / fname, ws / LEDGER_DIR / fname)
        spec = start_spec(params)
        (ws / START_FILE).write_text(json.dumps(spec, sort_keys=True) + "\n")
        set_param(ws / "params.yaml", "audit.reference", params.schedule.audit_reference)
        t["clone"] = time.perf_counter() - t0
        print(f"[cycle] starts from {spec['from']}"
              + (f" v{spec['version']}" if spec["from"] == "champion" else ""))
        sh(["dvc", "pull", "--allow-missing", "-q"], ws, env, log)
        t["pull"] = time.perf_counter() - t0 - sum(t.values())
        repro([], ws, env, log)
        t["repro"] = time.perf_counter() - t0 - sum(t.values())
        registered = json.loads((ws / "reports/registered.json").read_text())
        version = registered["version"]
        metrics = json.loads((ws / "reports/metrics.json").read_text())
        mark(ws / LEDGER_DIR, todo, UNLEARNED, version)
        task(name="dvc-push", cache_policy=NO_CACHE, **retry)(sh)(
            ["dvc", "push", "-q"], ws, env, log)
        commit = task(name="git-push", cache_policy=NO_CACHE, **retry)(commit_and_push)(
            ws, params.schedule.branch,
            f"Unlearning cycle {cycle_id}: {', '.join(todo)} -> {name} v{version}", env)
        t["push"] = time.perf_counter() - t0 - sum(t.values())
    except BaseException:
        undo_registration(params, version, before)
        end_pipeline_run(parent, "FAILED")
        print(f"[cycle] FAILED; nothing marked. Clone kept for inspection: {ws} (log {log})")
        raise
    end_pipeline_run(parent)
    mark(root / LEDGER_DIR, todo, UNLEARNED, version)
    record = {"cycle": cycle_id, "requests": todo, "model_version": version, "commit": commit,
              "start": spec, "seconds": {**t, "total": time.perf_counter() - t0},
              "unlearn_seconds": metrics["unlearn_seconds"],
              "unlearn_sample_grads": metrics.get("unlearn_sample_grads"),
              # null with audit_reference none: `unlearn calibrate` measures one retraining
              "retrain_seconds": metrics["retrain_seconds"], "cost_ratio": metrics["cost_ratio"],
              "audit_against": params.schedule.audit_reference,
              "audit_passed": _audit_passed(ws)}
    with (root / CYCLES_LOG).open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    shutil.rmtree(ws, ignore_errors=True)
    print(f"[cycle] done in {record['seconds']['total']:.0f} s: {name} v{version} is "
          f"'{CANDIDATE}' (audit {'PASSED' if record['audit_passed'] else 'FAILED'}), "
          f"{len(todo)} request(s) marked unlearned; branch {params.schedule.branch} at "
          f"{commit[:10]}")
    return {"status": "done", **record}


def _audit_passed(ws: Path) -> bool:
    return json.loads((ws / "reports/audit.json").read_text())["verdict"]["passed"]


DEPLOYMENT, SCHEDULE_SLUG = "scheduled-unlearning", "unlearning-cron"


def cycle_deployment(params: Params, root: Path) -> Any:
    """The cycle as a Prefect deployment on `schedule.cron` (UTC), one run at a time.

    The schedule carries a fixed slug: Prefect matches schedules by slug on redeploy, so
    serving again after a cron change replaces the schedule instead of adding a second one.
    """
    from prefect.schedules import Cron

    return unlearning_cycle.to_deployment(
        name=DEPLOYMENT, schedules=[Cron(params.schedule.cron, timezone="UTC",
                                         slug=SCHEDULE_SLUG)],
        parameters={"root": str(root)}, concurrency_limit=1, tags=["unlearning"],
        description="Pending deletion requests -> an audited candidate model (flows/ops/cycle.py)")


async def clear_stale_runs(deployment_id: Any) -> int:
    """Delete the deployment's runs that are still only scheduled: runs planned from an older
    schedule would otherwise fire beside the new one (Prefect issue #18894). The scheduler
    plans them again from the schedule now in force."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    async with get_client() as pc:
        runs = await pc.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
        for run in runs:
            await pc.delete_flow_run(run.id)
    return len(runs)
