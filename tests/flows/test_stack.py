"""`python -m flows.stack <command>`: one Prefect server and one warm stage runner for every
stage of a command, both gone after it; a server the user already runs is used as it is."""

import os
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import QUIET_ENV, REPO

PRINT_URL = [sys.executable, "-c",
             "import os, sys; print(os.environ.get('UNLEARN_STAGE_RUNNER'));"
             "print(os.environ.get('PREFECT_API_URL')); sys.exit(3)"]
NO_RUNNER = {"UNLEARN_STAGE_RUNNER": ""}  # the tests of the Prefect server alone


def stack(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "flows.stack", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_command_gets_one_server_that_stops_with_it(tmp_path):
    env = {k: v for k, v in {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(tmp_path / "home"),
                             "PYTHONPATH": str(REPO)}.items() if k != "PREFECT_API_URL"}
    proc = stack(PRINT_URL, env, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]  # the command's own exit code
    runner, url = proc.stdout.strip().splitlines()[-2:]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api"), proc.stdout
    with pytest.raises(OSError):  # stopped with the command
        urllib.request.urlopen(f"{url}/health", timeout=2)
    assert (tmp_path / ".prefect/server.log").exists()
    assert runner.endswith(".sock") and not os.path.exists(runner), proc.stdout  # gone too


def test_a_configured_server_is_used_as_it_is(tmp_path):
    env = {**os.environ, **QUIET_ENV, **NO_RUNNER, "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "PYTHONPATH": str(REPO)}
    proc = stack(PRINT_URL, env, tmp_path)
    assert proc.returncode == 3 and proc.stdout.splitlines() == ["", "http://127.0.0.1:9/api"]
    assert not (tmp_path / ".prefect").exists()  # nothing started
    assert stack([], env, tmp_path).returncode == 2
    missing = stack(["no-such-command"], env, tmp_path)
    assert missing.returncode == 127 and "command not found: no-such-command" in missing.stderr
    assert "Traceback" not in missing.stderr


# what `dvc repro` prints about its stages, and the stages' own lines, among noise
FAKE_REPRO = [sys.executable, "-c", """
import sys
print("Stage 'prepare' didn't change, skipping")
print("Running stage 'train':")
print("> python -m flows.train")
print("13:02:11.123 | INFO | Flow run 'x' - noise from Prefect")
print("[train] original: 2 epochs, loss 0.01000")
print("Running stage 'audit':")
print("[audit] verdict: FAILED")
sys.exit(int(sys.argv[1]))
"""]


def test_a_logged_run_shows_one_line_per_stage_and_keeps_the_rest_in_its_log(tmp_path):
    env = {**os.environ, **QUIET_ENV, **NO_RUNNER, "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "PYTHONPATH": str(REPO)}
    log = tmp_path / "logs" / "demo.log"
    proc = stack(["--log", str(log), *FAKE_REPRO, "0"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert [line[0] for line in lines] == ["prepare", "train", "audit"]
    assert lines[0][1] == "unchanged"
    assert lines[1][2:4] == ["s", "original:"] and lines[2][-1] == "FAILED"
    shown = [line for line in proc.stdout.splitlines() if not line.startswith("[stack]")]
    assert not any("noise from Prefect" in line for line in shown)
    assert "noise from Prefect" in log.read_text()  # kept in the log, not on the screen
    assert str(log) in proc.stdout

    failed = stack(["--log", str(log), *FAKE_REPRO, "4"], env, tmp_path)
    assert failed.returncode == 4  # the command's own exit code
    assert "noise from Prefect" in failed.stdout  # on failure, the log's tail is shown
    assert f"failed (exit 4) in stage audit: the whole output is in {log}" in failed.stdout
