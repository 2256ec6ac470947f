"""The warm stage runner (flows/runtime/warm.py) when DVC's stage command dies mid-stage, for
real: a forked stage must end with the command that stands for it, as a stage that is the
command's own process does, and the runner must go on serving the next stage."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.faults


def start_training(ws, env, log):
    """`python -m flows train` in its own process group, and the pid of the forked stage."""
    proc = subprocess.Popen([sys.executable, "-m", "flows", "train"], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = log.read_text().count("flows.train runs as pid")
    deadline = time.time() + 120
    while time.time() < deadline:
        pids = re.findall(r"flows\.train runs as pid (\d+)", log.read_text())
        if len(pids) > seen:
            time.sleep(3)  # into the stage: imports done, the flow started
            return proc, int(pids[-1])
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the runner never forked the stage: {log.read_text()[-2000:]}")


def gone(pid, timeout=30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_a_killed_or_stopped_stage_command_takes_its_stage_with_it(workspace, stage_runner_log):
    ws, env = workspace
    prepare = subprocess.run([sys.executable, "-m", "flows", "prepare"], cwd=ws, env=env,
                             capture_output=True, text=True, timeout=300)
    assert prepare.returncode == 0, prepare.stderr[-3000:]

    # SIGKILL: nothing runs in the command; the runner sees its connection close
    proc, stage = start_training(ws, env, stage_runner_log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert gone(stage), f"the stage (pid {stage}) outlived its killed command"
    assert f"pid {stage} exited -9" in stage_runner_log.read_text()

    # SIGTERM (DVC stopping a stage): forwarded to the stage, whose exit is the command's
    proc, stage = start_training(ws, env, stage_runner_log)
    proc.terminate()
    out, _ = proc.communicate(timeout=60)
    assert gone(stage), f"the stage (pid {stage}) outlived its stopped command"
    code = int(re.search(rf"pid {stage} exited (-?\d+)", stage_runner_log.read_text())[1])
    assert code != 0 and proc.returncode == code, (proc.returncode, code, out[-2000:])

    # the runner is still there for the next stage
    again = subprocess.run([sys.executable, "-m", "flows", "prepare"], cwd=ws, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert stage_runner_log.read_text().count(f"flows.prepare from {ws}: forked") == 2
