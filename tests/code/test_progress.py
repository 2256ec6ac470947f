"""The long commands' progress (flows/runtime/progress.py): what is running, how many steps are
done; where the output is not a terminal, one line per finished step."""

import io
import threading

from rich.console import Console

from flows.runtime.progress import progress_bar


def test_steps_say_what_runs_and_print_a_line_each_when_not_on_a_terminal():
    out = io.StringIO()
    with progress_bar("benchmark", 3, Console(file=out, force_terminal=False)) as steps:
        steps.start("class/seed 0")
        steps.start("class/seed 1")
        assert steps.running == ["class/seed 0", "class/seed 1"]
        # cases finish in the thread pool's threads
        worker = threading.Thread(target=steps.done, args=("class/seed 1",))
        worker.start()
        worker.join()
        assert steps.running == ["class/seed 0"] and steps.completed == 1
        steps.done("class/seed 0")
        with steps.step("memorize/seed 0"):
            assert steps.running == ["memorize/seed 0"]
        assert steps.completed == 3 and steps.running == []
    lines = [line for line in out.getvalue().splitlines() if line.startswith("[benchmark")]
    assert [line.split(" done")[0] for line in lines] == [
        "[benchmark 1/3] class/seed 1", "[benchmark 2/3] class/seed 0",
        "[benchmark 3/3] memorize/seed 0"]
