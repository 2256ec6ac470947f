"""A warm local stack for a run of many stage processes: one Prefect server and one warm stage
runner (flows/runtime/warm.py), started once, side by side.

Every stage is its own command (DVC runs `python -m flows <stage>`). With nothing configured,
Prefect starts a temporary API server in each of them and stops it at the end: 4-10 s per
stage here (reports/perf.md: 6.7 s), ~1 min of a `dvc repro`. A server started once for the
whole run costs that once (3.5 s here) and each stage's first flow then takes ~1 s. Used by
`make demo` (`python -m flows.stack --log logs/demo.log dvc repro`); a deletion cycle, itself
a flow, hands its own API to its stages (flow_api_env). A server the user already runs
(PREFECT_API_URL, e.g. `make services-up`) is used as it is; when the server cannot start,
the stages fall back to the temporary one, as before. With `--log FILE` the command's output
goes to FILE and the screen shows one line per DVC stage (run_logged).

Ray needs no such server here: the unlearning jobs run in the stage's process
(`ray.job_mode: auto`, flows/runtime/jobs.py), and a training job's start-up is its worker
processes, which a long-lived Ray head would not keep warm for a new driver.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from prefect.context import FlowRunContext
from rich.console import Console

from flows.runtime.warm import SOCKET_ENV, stage_runner, stop_group

LOG_FILE = Path(".prefect/server.log")
RUNNER_LOG = Path(".prefect/runner.log")
# the first start on a fresh machine creates the server's database (~20 s here, measured)
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def planned_api() -> dict[str, str]:
    """Where a server started by prefect_server will listen ({} when PREFECT_API_URL is already
    set: the user's server is used as it is)."""
    if os.environ.get("PREFECT_API_URL"):
        return {}
    return {"PREFECT_API_URL": f"http://127.0.0.1:{_free_port()}/api"}


@contextmanager
def prefect_server(planned: dict[str, str],
                   log_file: Path = LOG_FILE) -> Iterator[dict[str, str]]:
    """A Prefect server at the planned address (planned_api) for the duration of the block;
    yields the environment that points child processes at it ({} when none was planned, or
    the server did not come up: the children then use Prefect's temporary server, as without
    this)."""
    if not planned:
        yield {}
        return
    url = planned["PREFECT_API_URL"]
    port = url.removesuffix("/api").rsplit(":", 1)[1]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).parent / "prefect"
    with log_file.open("ab") as log:
        # the API only: scheduling and the UI belong to a server the user runs for itself
        proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1",
                                 "--port", port, "--no-services", "--no-ui"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
        if proc.poll() is not None or not _healthy(url):
            print(f"[stack] the Prefect server did not start (see {log_file}); each stage "
                  "starts Prefect's temporary server instead", file=sys.stderr, flush=True)
            yield {}
            return
        yield {"PREFECT_API_URL": url}
    finally:
        stop_group(proc)


@contextmanager
def warm_stages(env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A warm stage runner (flows/runtime/warm.py) for the block's stages, started with the
    environment they will run in; yields what hands them to it ({} when UNLEARN_STAGE_RUNNER
    is already set, to an outer runner's socket or, empty, to say: every stage cold)."""
    if SOCKET_ENV in os.environ:
        yield {}
        return
    with stage_runner(env, RUNNER_LOG) as runner:
        yield runner


def flow_api_env() -> dict[str, str]:
    """Inside a running flow (a deletion cycle): the environment that points child processes
    at this process's Prefect API, the temporary server it already runs or the configured
    one, so that the stages' flows start no server of their own and no second server writes
    to the same database."""
    ctx = FlowRunContext.get()
    return {"PREFECT_API_URL": str(ctx.client.api_url).rstrip("/")} if ctx else {}


# DVC's own lines about a stage (dvc repro, dvc exp run), and a stage's own summary lines,
# which its flows print as "[<stage>] ..." (flows/<stage>.py)
_STAGE_LINE = re.compile(r"^(?:Running stage '([\w@.-]+)'|Stage '([\w@.-]+)' didn't change)")


def run_logged(args: list[str], env: dict[str, str], log_file: Path) -> int:
    """Run `args` with everything it prints in `log_file`, and one line per DVC stage here
    (its name, its time, the last line the stage printed about itself): a `dvc repro` prints
    ~1,500 lines of Prefect, Ray and MLflow logs; the log keeps them, the screen the story.
    On failure the log's last lines are shown, and where the rest is."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    console = Console(highlight=False, soft_wrap=True)
    stage, prefix, started, said, tail = None, "", 0.0, "", deque(maxlen=40)

    def finish() -> None:
        if stage:
            console.print(f"  {stage:<10} {time.perf_counter() - started:6.1f} s  {said}",
                          markup=False)

    with log_file.open("w") as log, \
            subprocess.Popen(args, env={**env, "PYTHONUNBUFFERED": "1"}, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc, \
            console.status("starting") as status:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip())
            match = _STAGE_LINE.match(line)
            if match and match.group(1):
                finish()
                stage, started, said = match.group(1), time.perf_counter(), ""
                prefix = f"[{stage.split('@')[0]}] "  # a foreach stage's flow is `name`
                status.update(f"{stage} ...")
            elif match:
                console.print(f"  {match.group(2):<10} unchanged", markup=False)
            elif stage and line.startswith(prefix):
                said = line.strip().removeprefix(prefix.strip()).strip()[:90]
        code = proc.wait()
    if code == 0:
        finish()
    else:
        console.print("\n".join(tail), markup=False)
        console.print(f"[red]failed[/red] (exit {code}) in stage {stage or '-'}: "
                      f"the whole output is in {log_file}")
    return code


app = typer.Typer(add_completion=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                               "allow_interspersed_args": False})
def run(ctx: typer.Context,
        log: Annotated[Path | None, typer.Option(
            help="keep the command's output in this file and print one line per DVC stage "
                 "(put it before the command)")] = None) -> None:
    """Run a command (e.g. `dvc repro`) with one Prefect server and one warm stage runner for
    all its stages."""
    if not ctx.args:
        print("usage: python -m flows.stack [--log FILE] <command> [args...]", file=sys.stderr)
        raise typer.Exit(2)
    t0 = time.perf_counter()
    planned = planned_api()
    # the runner imports Prefect with the server's address while the server starts (~7 s and
    # ~3.5 s here, side by side rather than one after the other)
    with warm_stages({**os.environ, **planned}) as runner, prefect_server(planned) as env:
        if env:
            print(f"[stack] Prefect server at {env['PREFECT_API_URL']} "
                  f"(up in {time.perf_counter() - t0:.1f} s, log {LOG_FILE})", flush=True)
        if runner:
            print(f"[stack] warm stage runner (log {RUNNER_LOG})", flush=True)
        env = {**env, **runner}
        try:
            if log:
                print(f"[stack] the command's output: {log}", flush=True)
                code = run_logged(ctx.args, {**os.environ, **env}, log)
            else:
                code = subprocess.call(ctx.args, env={**os.environ, **env})
        except FileNotFoundError:
            print(f"error: command not found: {ctx.args[0]}", file=sys.stderr)
            code = 127
    raise typer.Exit(code)


if __name__ == "__main__":
    app()
