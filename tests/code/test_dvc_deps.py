"""Every DVC stage depends on the code it runs: the stage module and everything it imports from
this repository, at any depth, imports inside functions included (the code the Ray workers
run comes in through flows/runtime/jobs.py). A dependency missing from dvc.yaml means editing
that file reruns nothing and `dvc repro` reports stale results as current."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.code.import_walk import REPO as ROOT
from tests.code.import_walk import imported, module_name

# every module of the repository's packages, by name
FILES = {module_name(p): p for package in ("components", "flows", "tools")
         for p in (ROOT / package).rglob("*.py")}


def module_file(name: str) -> Path | None:
    """The file of a repository module (`components.methods` -> its __init__.py), else None."""
    return FILES.get(name)


def imported_files(path: Path) -> set[Path]:
    """The repository files `path` imports directly (a package's __init__ included)."""
    found = set()
    if path.name == "__init__.py" and "pkgutil.iter_modules(__path__)" in path.read_text():
        # a package that imports every module it holds (components/methods: the registry)
        found |= set(path.parent.glob("*.py")) - {path}
    for name in imported(path, set(FILES)):
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        found |= {FILES[prefix] for i in range(1, len(parts) + 1)
                  if (prefix := ".".join(parts[:i])) in FILES}
    return found


def closure(start: Path) -> set[Path]:
    seen, todo = set(), [start]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(imported_files(path) - seen)
    return seen


def covered(file: Path, deps: list[str]) -> bool:
    rel = file.relative_to(ROOT)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_every_file_it_imports(stage):
    spec = STAGES[stage]
    words = spec["cmd"].split("python -m ", 1)[1].split()
    # `python -m flows <stage>`: the launcher (flows/__main__.py), which runs flows/<stage>.py
    modules = ["flows", f"flows.{words[1]}"] if words[0] == "flows" else words[:1]
    entries = [FILES.get("flows.__main__") if m == "flows" else module_file(m) for m in modules]
    assert None not in entries, f"{stage}: cmd {spec['cmd']!r} names no module of this repository"
    deps = [next(iter(d)) if isinstance(d, dict) else d for d in spec.get("deps", [])]
    files = set().union(*(closure(entry) for entry in entries))
    missing = sorted(str(f.relative_to(ROOT)) for f in files if not covered(f, deps))
    assert not missing, f"dvc.yaml: stage {stage} imports these files but does not depend on " \
                        f"them: {missing}"


def test_the_walk_follows_lazy_imports_and_packages():
    # decouple reaches the workers' code only through flows/runtime/jobs.py, the package
    # __init__ files run on the way, and the method registry imports each method's module
    files = {str(f.relative_to(ROOT)) for f in closure(ROOT / "flows" / "decouple.py")}
    assert {"flows/runtime/worker.py", "flows/__init__.py", "components/methods/__init__.py",
            "components/training.py", "components/methods/salun.py"} <= files
