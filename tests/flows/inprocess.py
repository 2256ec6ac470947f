"""`unlearn ...` run in the test's own process (typer's CliRunner over flows.ops.cli's app).

Each `unlearn` process spends ~6 s of CPU importing MLflow, Prefect, torch and scikit-learn
before it does anything; the registry tests call it a dozen times each. In-process, the same
app runs the same command code in the workspace (cwd) with the workspace's environment, and
its exit code and output (stdout and stderr) are checked as a process's would be. What a
process adds (the console script, the interpreter's exit) stays covered by
tests/flows/test_pipeline.py, which runs every reviewer command (`unlearn review`, `promote`
with exit codes 0, 1 and 2, `report`) as a real process.

Stricter than a process in one way: an exception that escapes the command (a traceback in a
real run) fails the call whatever exit code was expected.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path


def unlearn(args: list[str], ws: Path, env: dict[str, str], code: int = 0) -> str:
    """`unlearn *args` in `ws` under exactly `env` (variables not in it are unset for the
    call); asserts the exit code and returns stdout + stderr."""
    from typer.testing import CliRunner

    from flows.ops.cli import app

    overrides = {k: env.get(k) for k in set(os.environ) | set(env)}
    before = Path.cwd()
    os.chdir(ws)
    try:
        result = CliRunner().invoke(app, args, env=overrides, catch_exceptions=True)
    finally:
        os.chdir(before)
    out = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unlearn {args} raised (a traceback in a real run):\n{out[-3000:]}"
                             + "".join(traceback.format_exception(result.exception))[-4000:])
    assert result.exit_code == code, f"unlearn {args} exited {result.exit_code}:\n{out[-4000:]}"
    return out


def review(ws: Path, env: dict[str, str]) -> dict:
    """`unlearn review --json`, in-process."""
    import json

    return json.loads(unlearn(["review", "--json"], ws, env))
