"""The warm stage runner (flows/runtime/warm.py): a stage handed to it ends as the same stage in
a process of its own would (exit code, output, files written), and a stage it must not take
(other code, another environment) runs in its own process, saying why. User mistakes through
the runner: tests/flows/test_stage_errors.py; killed clients: tests/faults/test_runner_faults.py."""

import json
import subprocess
import sys
from pathlib import Path

from flows.runtime.warm import code_digest, import_time_env, why_cold
from tests.conftest import REPO

COLD = {"UNLEARN_STAGE_RUNNER": ""}


def stage(args, ws, env):
    return subprocess.run([sys.executable, "-m", "flows", *args], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_forked_stage_writes_what_a_fresh_process_writes(registry_workspace, stage_runner_log):
    ws, env = registry_workspace
    warm = stage(["prepare"], ws, env)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert f"flows.prepare from {ws}: forked" in stage_runner_log.read_text()
    first = json.loads((ws / "data/splits/summary.json").read_text())
    cold = stage(["prepare"], ws, {**env, **COLD})
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert json.loads((ws / "data/splits/summary.json").read_text())["hashes"] == first["hashes"]
    said = [[line for line in p.stdout.splitlines() if line.startswith("[prepare]")]
            for p in (warm, cold)]
    assert said[0] and said[0] == said[1]  # the stage's own lines, to the client's stdout


def test_edited_code_runs_cold_and_says_why(registry_workspace, stage_runner_log):
    ws, env = registry_workspace
    with (ws / "components/splits.py").open("a") as f:
        f.write("\n# edited in the workspace\n")
    proc = stage(["prepare"], ws, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[runner] prepare runs in its own process: its code differs" in proc.stderr
    assert f"flows.prepare from {ws}: cold" in stage_runner_log.read_text()


def test_the_runner_declines_what_a_fork_would_get_wrong(tmp_path):
    env = import_time_env({"PREFECT_API_URL": "http://127.0.0.1:1/api", "PATH": "/bin",
                           "RAY_ADDRESS": "127.0.0.1:2", "PREFECT_LOGGING_LEVEL": "INFO"})
    assert env == {"PREFECT_API_URL": "http://127.0.0.1:1/api", "PREFECT_LOGGING_LEVEL": "INFO"}
    digest = code_digest(REPO)

    def why(module="flows.prepare", cwd=REPO, **changes):
        request = {"module": module, "cwd": str(cwd),
                   "env": {**env, "PATH": "/usr/bin", "RAY_ADDRESS": "elsewhere", **changes}}
        return why_cold(request, REPO, digest, env, {"RAY_CLIENT_MODE": "0"})

    assert why() is None  # PATH and RAY_ADDRESS are read when used: they may differ
    assert why(RAY_CLIENT_MODE="0") is None  # what Ray's import sets in both processes
    assert "RAY_CLIENT_MODE" in why(RAY_CLIENT_MODE="1")
    assert why(module="flows.stack").startswith("not a stage")
    assert "PREFECT_LOGGING_LEVEL" in why(PREFECT_LOGGING_LEVEL="DEBUG")
    assert "RAY_DEDUP_LOGS" in why(RAY_DEDUP_LOGS="1")
    assert why(cwd=tmp_path).startswith("its code differs")  # no flows/ there


def test_an_unknown_stage_is_one_line():
    proc = subprocess.run([sys.executable, "-m", "flows", "prepar"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("usage: python -m flows <stage>"), proc.stderr


def test_only_this_user_can_reach_the_runner(stage_runner):
    socket_file = Path(stage_runner["UNLEARN_STAGE_RUNNER"])
    assert socket_file.is_socket()
    assert socket_file.parent.stat().st_mode & 0o777 == 0o700  # and it checks the peer's uid
