"""`make bench-gpu` (tools/bench_gpu.py) on the CPU: its tiny run writes every figure per
family, and it runs where Ray, MLflow, Prefect and DVC cannot be imported (the GPU machines
this project borrows have none of them)."""

import json
import subprocess
import sys

from tests.conftest import REPO

# the bench run in a fresh interpreter in which importing any of these fails
BLOCKED = ("ray", "mlflow", "prefect", "dvc")
RUN = f"""
import runpy, sys
from importlib.abc import MetaPathFinder

class Blocked(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"{{name}}: not on a borrowed GPU machine")

sys.meta_path.insert(0, Blocked())
sys.argv = ["bench_gpu", "--cpu", "--budget", "500", "--out", sys.argv[1]]
try:
    runpy.run_module("tools.bench_gpu", run_name="__main__")
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
    print("LOADED", loaded)
"""


def test_the_tiny_run_writes_every_figure_without_the_orchestration_stack(tmp_path):
    proc = subprocess.run([sys.executable, "-c", RUN, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "LOADED []" in proc.stdout
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["status"] == "done" and result["errors"] == []
    assert result["env"]["device"] == "cpu" and result["models"] == "tiny"
    assert set(result["families"]) == {"ae", "mae", "vqtoken", "diffusion"}
    for family, fam in result["families"].items():
        for mode in ("device", "host"):
            train = fam["train"][mode]
            assert train["images_per_s"] > 0 and train["steps"] >= 1, (family, mode)
            assert 0 <= train["data_wait_share"] < 1, (family, mode)
            assert fam["unlearn"][mode]["steps"] >= 1, (family, mode)
            assert 0 <= fam["unlearn"][mode]["data_wait_share"] < 1, (family, mode)
        assert fam["unlearn"]["method"] == "decouple"
        assert {m for m in fam["precision"]} == {"float32", "tf32", "bf16+tf32"}
        assert all(r["images_per_s"] > 0 for r in fam["precision"].values())
        assert fam["eval"]["batch"]["max_rel_diff_7_vs_64"] < 1e-5, family
        assert 0 <= fam["eval"]["float32"]["mia_auc"] <= 1
    md = (tmp_path / "gpu.md").read_text()
    assert "## Training (train_model)" in md and "| diffusion | host |" in md
