"""Real servers the fault tests stop and start: an MLflow tracking server (SQLite backend, so
its state survives a restart) and an S3 server (moto, in its own venv)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import BIN, QUIET_ENV, free_port


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url} exited early: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout} s: {log.read_text()[-2000:]}")


class Server:
    """A server process that a test can stop (SIGKILL: a crash, not a clean shutdown) and
    start again on the same port."""

    def __init__(self, cmd: list[str], health: str, workdir: Path, env: dict[str, str]):
        self.cmd, self.health, self.workdir, self.env = cmd, health, workdir, env
        self.proc: subprocess.Popen | None = None
        self.log = workdir / f"{Path(cmd[0]).name}.log"

    def start(self) -> Server:
        log = self.log.open("a")
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(self.health, self.proc, self.log)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    home = tmp_path / "mlflow-server"
    home.mkdir()
    server = Server([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                     "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
                     "--artifacts-destination", str(home / "artifacts"), "--workers", "1"],
                    f"http://127.0.0.1:{port}/health", home, {**os.environ, **QUIET_ENV})
    server.url = f"http://127.0.0.1:{port}"
    yield server.start()
    server.kill()
