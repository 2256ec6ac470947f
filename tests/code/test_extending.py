"""docs/extending.md, walked: its method blocks, applied as written to a copy of components/,
register a method that validates as `unlearn.method` and runs through the registry; and
dvc.yaml's decouple stage tracks the chosen method's block, a new one's included, with no edit."""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from components.params import method_names

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "extending.md"

# run in the copy: the doc's method through the registry on a tiny autoencoder
CHECK = """
import copy, sys
import torch
import components.params
from components.methods import METHODS, UnlearnData, get_method, run_method
from components.models import build_model
from components.params import ParamsError, default_benchmark_rows, parse_params
from components.training import JobContext

assert components.params.__file__.startswith(sys.argv[1]), components.params.__file__
assert get_method("shrink_perturb") is METHODS["shrink_perturb"]
assert get_method("shrink_perturb").retention
assert "shrink_perturb" in default_benchmark_rows()

def params(**block):
    return parse_params({"model": {"ae": {"widths": [4, 8], "latent_dim": 8}},
                         "unlearn": {"method": "shrink_perturb", "shrink_perturb": block,
                                     "finetune": {"steps": 0}}})

torch.manual_seed(0)
x = torch.rand(16, 1, 8, 8)
model = build_model(params().model, 1, 8)
data = UnlearnData((x, x), (x, x), (x, x), copy.deepcopy(model).requires_grad_(False))
quiet = JobContext(log=lambda line: None)
before = [w.detach().clone() for w in model.parameters()]
info = run_method(model, data, params(shrink=0.5, noise=0.0), quiet)
assert info["steps"] == 0
assert all(torch.equal(w, 0.5 * b) for w, b in zip(model.parameters(), before, strict=True))

noisy = [copy.deepcopy(model) for _ in range(2)]
for m in noisy:
    run_method(m, data, params(shrink=1.0, noise=0.01), quiet)
moved = torch.cat([(w - b).flatten() for w, b in
                   zip(noisy[0].parameters(), model.parameters(), strict=True)])
assert 0.008 < float(moved.std()) < 0.012, float(moved.std())
assert all(torch.equal(a, b) for a, b in
           zip(noisy[0].parameters(), noisy[1].parameters(), strict=True))  # seeded

for bad, expected in [({"shrink": 1.5}, "factor every weight is multiplied by"),
                      ({"nois": 0.1}, "did you mean 'unlearn.shrink_perturb.noise'")]:
    try:
        params(**bad)
    except ParamsError as exc:
        assert expected in str(exc), str(exc)
    else:
        raise AssertionError(f"{bad} was accepted")
try:
    parse_params({"unlearn": {"method": "shrink_perturbb"}})
except ParamsError as exc:
    assert "did you mean 'shrink_perturb'" in str(exc), str(exc)
print("walked")
"""


def doc_blocks() -> dict[str, str]:
    """The walk-through's code blocks, by their first line (`# components/...`)."""
    found = re.findall(r"```(?:python|yaml)\n(# (?:components|params\.yaml)[^\n]*)\n(.*?)```",
                       DOC.read_text(), re.S)
    return dict(found)


def apply_method_blocks(package: Path) -> dict:
    """The doc's three code changes, made in `package` as the doc tells a reader to; returns
    its params.yaml block."""
    blocks = doc_blocks()
    module = next(h for h in blocks if h.startswith("# components/methods/"))
    (package.parent / module.removeprefix("# ")).write_text(module + "\n" + blocks[module])
    params = package / "params.py"
    source = params.read_text()
    cls = "class UnlearnParams(Strict):"
    source = source.replace(cls, blocks["# components/params.py: above UnlearnParams"] +
                            "\n\n" + cls)
    start = source.index(cls)
    body_end = source.index("\n\n\n", start)
    validator = source.find("\n\n    @", start, body_end)
    end = body_end if validator == -1 else validator  # after the last field
    field = blocks["# components/params.py: a field of UnlearnParams, named as the method"]
    params.write_text(source[:end] + "\n" + field.rstrip("\n") + source[end:])
    return yaml.safe_load(textwrap.dedent(blocks["# params.yaml: under unlearn"]))


def test_the_docs_method_registers_validates_and_runs(tmp_path):
    shutil.copytree(REPO / "components", tmp_path / "components",
                    ignore=shutil.ignore_patterns("__pycache__"))
    block = apply_method_blocks(tmp_path / "components")
    assert block == {"shrink_perturb": {"shrink": 0.9, "noise": 0.01}}
    run = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "walked" in run.stdout, run.stderr[-3000:]


@pytest.mark.parametrize("method", [*method_names(), "shrink_perturb"])
def test_the_decouple_stage_tracks_the_chosen_methods_blocks(tmp_path, monkeypatch, method):
    """DVC reruns a stage when a params key it lists changes. The decouple stage lists the
    chosen method's block through DVC's templating (`unlearn.${unlearn.method}`), and the
    blocks a method reads besides its own (components/review.py EXTRA_BLOCKS), resolved here
    by DVC itself; unlearn.finetune is the finetune stage's (and the finetune baseline's)."""
    from dvc.repo import Repo

    from components.review import EXTRA_BLOCKS

    Repo.init(tmp_path, no_scm=True).close()
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["unlearn"] = {**params["unlearn"], "method": method, method: {"any": 1}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # DVC finds a stage by name in the working directory
    with Repo(tmp_path) as repo:
        listed = {k for stage in repo.stage.collect("decouple") for dep in stage.deps
                  if hasattr(dep, "params") for k in dep.params}
        retention = {k for stage in repo.stage.collect("finetune") for dep in stage.deps
                     if hasattr(dep, "params") for k in dep.params}
    assert {"unlearn.method", f"unlearn.{method}", *EXTRA_BLOCKS.get(method, ())} <= listed
    assert "unlearn" not in listed
    assert ("unlearn.finetune" in listed) == (method == "finetune")
    assert "unlearn.finetune" in retention


def test_registering_needs_a_settings_block_and_a_free_name():
    from components.methods.base import METHODS, Method, register

    def nothing(model, data, params, ctx) -> dict:
        return {"steps": 0, "train_seconds": 0.0}

    with pytest.raises(ValueError, match="no settings block unlearn.shrink_perturb"):
        register(Method(name="shrink_perturb", forget=nothing, retention=True, summary=""))
    with pytest.raises(ValueError, match="two methods are registered as 'scrub'"):
        register(Method(name="scrub", forget=nothing, retention=False, summary=""))
    assert set(METHODS) == set(method_names())
