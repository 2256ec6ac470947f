"""A warm stage runner: one process imports what the stages import, once, and forks a child
for each stage DVC runs, so a stage no longer starts Python from nothing.

A stage is its own process (DVC runs `python -m flows <stage>`), and before it does anything
it imports torch, Ray Train, Prefect and MLflow: 4-6 s on 2 cores (`python -X importtime`:
mlflow 1.1 s, torch 0.9 s, prefect 0.9 s, ray.train 0.4 s, the components 1.3 s), plus
1.4 s for `torch._dynamo` at the first optimizer, in each of a `dvc repro`'s eight stages.
Here those imports happen once; a stage is then a `fork()` of this process (~10 ms), and the
command DVC runs is a thin client (flows/__main__.py) that hands over its arguments, working
directory, environment and its stdin/stdout/stderr (SCM_RIGHTS), forwards signals, and exits
with the stage's exit code. The child is the stage as a fresh process would run it:
`runpy` executes flows/<stage>.py as `__main__` with the client's argv, cwd and environment,
and a normal interpreter exit runs its atexit handlers (MLflow ends its run, Prefect flushes
its logs).

It is used only where it gives the same result as a fresh process; otherwise the client runs
the stage itself (`cold`), as without a runner:
- the client's code (flows/ and components/ under its working directory) must be the code
  this process imported (a digest of every .py file: a workspace copy is fine, an edited one
  is not);
- environment variables that libraries read when imported (Prefect's settings, Ray's and
  torch's knobs) must equal this process's; those read when used (RAY_ADDRESS,
  MLFLOW_TRACKING_URI, ...) may differ.
If the client dies (DVC killed), the stage's process group is killed with it, as it would be
had the stage been the client's child.

Started by `python -m flows.stack` (make demo), by a deletion cycle for its `dvc repro`, and
by the test suite's session fixture; `UNLEARN_STAGE_RUNNER` names its socket (set empty: no
runner). Nothing here is needed: without it every stage runs cold, exactly as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SOCKET_ENV = "UNLEARN_STAGE_RUNNER"
# in a forked stage: the pid of the process DVC started (the client), whose parents are DVC's
STAGE_PID_ENV = "UNLEARN_STAGE_PID"
STAGES = ("prepare", "train", "start", "decouple", "finetune", "audit", "evaluate", "register")
CODE_DIRS = ("flows", "components")
# read when imported, so a child must see the values this process was started with
IMPORT_TIME_ENV = ("PREFECT_", "RAY_", "MLFLOW_", "OMP_", "MKL_", "TORCH", "PYTORCH_", "CUDA_",
                   "PYTHON", "GRPC_")
# ... except these, which the libraries read when used
CALL_TIME_ENV = frozenset({"RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
                           "MLFLOW_EXPERIMENT_NAME", "PYTHONUNBUFFERED", "PYTHONBREAKPOINT"})
# what a stage imports only once it runs (a child's sys.modules after a stage, less the
# server's, grouped by package; ~1 s of each stage's first flow, measured on 2 cores): the
# first optimizer (torch._dynamo, 1.4 s), MLflow's SQL stores (SQLAlchemy, alembic), GitPython
# for its run tags and its tracing, Prefect's run engine, Ray Train's tune layer, the digits
# loader, register's export; what is left is ~0.1-0.5 s a stage
PRELOAD = ("torch._dynamo", "mlflow.store.tracking.sqlalchemy_store",
           "mlflow.store.model_registry.sqlalchemy_store", "git", "opentelemetry.sdk.trace",
           "prefect.flow_engine", "prefect.concurrency.v1.context", "graphviz", "ray.tune",
           "sklearn.datasets", "mlflow.pyfunc", "torch.export", "torch._inductor")
_HEADER = struct.Struct("!I")


def code_digest(root: Path, folders: tuple[str, ...] = CODE_DIRS) -> str:
    """sha256 over every .py file (path and bytes) under root's `folders`."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` that a library may read when imported (IMPORT_TIME_ENV)."""
    return {k: v for k, v in env.items()
            if k.startswith(IMPORT_TIME_ENV) and k not in CALL_TIME_ENV}


# --- the client: what `python -m flows <stage>` runs -------------------------------------

def run_stage(stage: str, args: list[str]) -> int | None:
    """Run the stage in the warm runner named by UNLEARN_STAGE_RUNNER; its exit code, or None
    when there is no runner or it declines (the caller then runs the stage itself)."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return None
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        request = json.dumps({"module": f"flows.{stage}", "argv": args, "cwd": os.getcwd(),
                              "env": {**os.environ, STAGE_PID_ENV: str(os.getpid())}}).encode()
        socket.send_fds(conn, [_HEADER.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
        reader = conn.makefile("r")
        first = json.loads(reader.readline() or "{}")
    except OSError:
        return None  # no runner listening: cold, as without one
    if "pid" not in first:
        if first.get("cold"):
            print(f"[runner] {stage} runs in its own process: {first['cold']}", file=sys.stderr,
                  flush=True)
        return None
    pid = first["pid"]

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    line = reader.readline()
    if not line:  # the runner was stopped mid-stage (it stops its stages with it)
        print(f"[runner] the stage runner stopped while {stage} ran", file=sys.stderr, flush=True)
        return 1
    code = json.loads(line)["exit"]
    if code < 0:  # killed by a signal: end the same way, for DVC and shells to see
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


# --- the server --------------------------------------------------------------------------

def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]  # pid, uid, gid


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    (size,) = _HEADER.unpack(header)
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise OSError("client went away")
        body += chunk
    conn.settimeout(None)
    return json.loads(body), list(fds)


def why_cold(request: dict, root: Path, digest: str, env: dict[str, str],
             set_by_imports: dict[str, str] | None = None) -> str | None:
    """Why this request must run cold, or None when a fork runs it as a fresh process would.
    `env`: this process's import-time variables before its imports; `set_by_imports`: those
    the imports set themselves, which a client may also hold (it ran them once, too) if alike.
    """
    if request["module"].removeprefix("flows.") not in STAGES:
        return f"not a stage: {request['module']}"
    cwd = Path(request["cwd"])
    if cwd != root and code_digest(cwd) != digest:
        return f"its code differs from the runner's ({root})"
    theirs = import_time_env(request["env"])
    for key, value in (set_by_imports or {}).items():
        if theirs.get(key) == value:
            del theirs[key]
    if theirs != env:
        keys = sorted(k for k in theirs.keys() | env.keys() if theirs.get(k) != env.get(k))
        return f"environment differs in {', '.join(keys)}"
    return None


def _become_stage(request: dict, fds: list[int], set_by_imports: dict[str, str]) -> None:
    """In the forked child: take the client's stdio, directory, environment and argv."""
    os.setpgid(0, 0)  # the server kills the whole group if the client dies
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**set_by_imports, **request["env"]})
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        stream.reconfigure(line_buffering=unbuffered or os.isatty(fd), write_through=unbuffered)
    module = request["module"]
    sys.argv = [module, *request["argv"]]
    sys.path[0] = request["cwd"]
    sys.modules.pop(module, None)  # runpy runs it afresh as __main__


def serve(path: str) -> dict:
    """Import the stages, then fork a child per request until SIGTERM. Returns only in a
    child, with the request that child is to run."""
    root = Path.cwd().resolve()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)  # clients wait in the backlog while the imports below run
    t0 = time.perf_counter()
    before = dict(os.environ)
    import importlib

    for stage in STAGES:
        importlib.import_module(f"flows.{stage}")
    digest = code_digest(root)
    env = import_time_env(before)  # what a client must match (flows/__init__'s defaults in)
    # what the imports set for themselves (e.g. Ray's RAY_CLIENT_MODE), as in a fresh process
    set_by_imports = {k: v for k, v in os.environ.items() if k not in before}
    print(f"[runner] ready in {time.perf_counter() - t0:.1f} s on {path}", flush=True)
    # PRELOAD while idle, after the first stages may already have come (~1.5-2 s of 7.5 s
    # here): a stage forked before one of them imports it itself, as a fresh process would
    preload = list(PRELOAD)

    server_pid = os.getpid()
    running: dict[int, socket.socket] = {}  # child pid -> its client's connection
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            events = selector.select(timeout=0 if preload else 0.2)
            if not events and preload:
                importlib.import_module(preload.pop(0))
                set_by_imports = {k: v for k, v in os.environ.items() if k not in before}
            for key, _ in events:
                if key.fileobj is listener:
                    conn, _addr = listener.accept()
                    if _peer_uid(conn) != os.getuid():  # the folder's 0700 should stop them
                        conn.close()
                        continue
                    try:
                        request, fds = _recv_request(conn)
                    except (OSError, ValueError):
                        conn.close()
                        continue
                    reason = why_cold(request, root, digest, env, set_by_imports)
                    print(f"[runner] {request['module']} from {request['cwd']}: "
                          f"{'cold, ' + reason if reason else 'forked'}", flush=True)
                    if reason:
                        conn.sendall(json.dumps({"cold": reason}).encode() + b"\n")
                        conn.close()
                        for fd in fds:
                            os.close(fd)
                        continue
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        listener.close()
                        for other in (*running.values(), conn):
                            other.close()
                        _become_stage(request, fds, set_by_imports)
                        return request
                    for fd in fds:
                        os.close(fd)
                    running[pid] = conn
                    print(f"[runner] {request['module']} runs as pid {pid}", flush=True)
                    conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
                    selector.register(conn, selectors.EVENT_READ, pid)
                else:  # a client's connection readable: it died (it never sends more)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(key.data, signal.SIGKILL)
                    selector.unregister(key.fileobj)
            _reap(running, selector)
    finally:
        if os.getpid() == server_pid:
            for pid in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _reap(running: dict[int, socket.socket], selector: selectors.BaseSelector) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        print(f"[runner] pid {pid} exited {code}", flush=True)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        conn.close()


# --- starting one -----------------------------------------------------------------------

@contextlib.contextmanager
def stage_runner(env: dict[str, str], log_file: Path,
                 root: Path | None = None) -> Iterator[dict[str, str]]:
    """A warm runner for the duration of the block, started with `env` in `root` (the code it
    imports; default: the current directory); yields the environment that hands child
    commands' stages to it ({} if it could not start: every stage then runs cold)."""
    # a folder only this user can enter: no one else can connect (the runner runs what it is
    # sent, as this user), and the socket is there before anyone could try
    folder = Path(tempfile.mkdtemp(prefix="unlearn-stages-", dir=os.environ.get("XDG_RUNTIME_DIR")))
    path = str(folder / "runner.sock")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.runtime.warm", path], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=root)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield {SOCKET_ENV: path} if os.path.exists(path) else {}
    finally:
        stop_group(proc)
        shutil.rmtree(folder, ignore_errors=True)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started in a session of its own, and whatever it started: SIGTERM to
    its process group, SIGKILL after 15 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    request = serve(sys.argv[1])
    import runpy

    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
