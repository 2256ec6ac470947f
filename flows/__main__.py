"""`python -m flows <stage> [args]`: what DVC runs for each stage (dvc.yaml).

It hands the stage to the warm stage runner when one is running (UNLEARN_STAGE_RUNNER, set by
`python -m flows.stack` and the test suite: flows/runtime/warm.py), which saves the stage the
4-6 s of importing torch, Ray, Prefect and MLflow; otherwise, or when the runner declines,
it runs flows/<stage>.py here, exactly as `python -m flows.<stage>` does. This module imports
nothing heavy, so handing over costs ~0.1 s.
"""

import runpy
import sys

from flows.runtime.warm import STAGES, run_stage


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m flows <stage> [args]; stages: {', '.join(STAGES)}",
              file=sys.stderr)
        sys.exit(2)
    stage, args = sys.argv[1], sys.argv[2:]
    code = run_stage(stage, args)
    if code is not None:
        sys.exit(code)
    sys.argv = [f"flows.{stage}", *args]
    runpy.run_module(f"flows.{stage}", run_name="__main__", alter_sys=True)


main()
