"""`python -m flows.stack <command>`: one Prefect server for every stage of a command, gone
after it; a server the user already runs is used as it is."""

import os
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import QUIET_ENV, REPO

PRINT_URL = [sys.executable, "-c",
             "import os, sys; print(os.environ.get('PREFECT_API_URL')); sys.exit(3)"]


def stack(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "flows.stack", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_command_gets_one_server_that_stops_with_it(tmp_path):
    env = {k: v for k, v in {**os.environ, **QUIET_ENV, "PREFECT_HOME": str(tmp_path / "home"),
                             "PYTHONPATH": str(REPO)}.items() if k != "PREFECT_API_URL"}
    proc = stack(PRINT_URL, env, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]  # the command's own exit code
    url = proc.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api"), proc.stdout
    with pytest.raises(OSError):  # stopped with the command
        urllib.request.urlopen(f"{url}/health", timeout=2)
    assert (tmp_path / ".prefect/server.log").exists()


def test_a_configured_server_is_used_as_it_is(tmp_path):
    env = {**os.environ, **QUIET_ENV, "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "PYTHONPATH": str(REPO)}
    proc = stack(PRINT_URL, env, tmp_path)
    assert proc.returncode == 3 and proc.stdout.strip() == "http://127.0.0.1:9/api"
    assert not (tmp_path / ".prefect").exists()  # nothing started
    assert stack([], env, tmp_path).returncode == 2
    missing = stack(["no-such-command"], env, tmp_path)
    assert missing.returncode == 127 and "command not found: no-such-command" in missing.stderr
    assert "Traceback" not in missing.stderr
