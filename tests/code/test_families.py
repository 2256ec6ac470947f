"""`make families`: the overrides it hands to `dvc exp run` and the check it applies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.params import FamiliesParams, ParamsError, parse_params
from tests.conftest import REPO
from tools.families import check_settings, export_dataset, judge, overrides


def block(forget: float, retain: float) -> dict[str, float]:
    return {"forget_psnr": forget, "retain_psnr": retain}


def test_overrides_are_what_a_user_types_and_parse_as_params():
    cfg = FamiliesParams(set={"model.task": "inpaint", "train.epochs": 20,
                              "model.diffusion.widths": [8, 16]})
    args = overrides(cfg, "diffusion", Path("/data/if"))
    pairs = dict(a.split("=", 1) for a in args[1::2])
    assert args[0::2] == ["-S"] * len(pairs)
    assert pairs == {"model.family": "diffusion", "data.dataset": "imagefolder",
                     "data.path": "/data/if", "mlflow.model_name": "imagefolder-diffusion",
                     "model.task": "inpaint", "train.epochs": "20",
                     "model.diffusion.widths": "[8, 16]"}
    params = parse_params({"model": {"family": "diffusion", "task": "inpaint",
                                     "diffusion": {"widths": [8, 16]}},
                           "data": {"dataset": "imagefolder", "path": "/data/if"}})
    assert params.model.diffusion.widths == [8, 16]


def test_check_needs_a_forget_drop_and_a_retain_that_holds():
    cfg = FamiliesParams(min_forget_drop_db=0.5, max_retain_drop_db=0.5)
    metrics = {"original": block(20.0, 21.0), "unlearned": block(19.0, 20.8),
               "retrained": block(18.5, 21.0)}
    got = judge(metrics, cfg)
    assert got["passed"] and abs(got["forget_drop_db"] - 1.0) < 1e-9
    assert abs(got["retrained_forget_drop_db"] - 1.5) < 1e-9
    metrics["unlearned"] = block(19.0, 20.0)  # retain fell 1 dB: not held
    assert not judge(metrics, cfg)["passed"]
    metrics["unlearned"] = block(19.8, 21.0)  # forget barely moved
    assert not judge(metrics, cfg)["passed"]


def test_export_is_made_once_and_remade_when_its_settings_change(tmp_path):
    cfg = FamiliesParams(dataset="digits", path="export", per_class=2, val_per_class=1)
    out = export_dataset(cfg, tmp_path)
    assert len(list((out / "train").glob("*/*.png"))) == 20
    stamp = (out / "export.json").stat().st_mtime_ns
    assert export_dataset(cfg, tmp_path) == out
    assert (out / "export.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    (out / "export.json").unlink()  # as an interrupted export leaves it
    bigger = cfg.model_copy(update={"per_class": 3})
    export_dataset(bigger, tmp_path)
    assert len(list((out / "train").glob("*/*.png"))) == 30


def test_a_bad_override_is_refused_before_any_run_naming_the_key():
    params = parse_params({"families": {"set": {"train.epochz": 3}}})
    with pytest.raises(ParamsError, match="train.epochz"):
        check_settings(params, "mae", Path("/data/if"))
    check_settings(parse_params({}), "diffusion", Path("/data/if"))  # the defaults are valid


@pytest.mark.parametrize("arg,said", [("oops", "expected KEY=VALUE"),
                                      ("forget.classez=[8]", "did you mean 'forget.classes'")])
def test_a_bad_set_option_is_one_line_and_nothing_runs(arg, said, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.families", "--set", arg, "--out",
                           str(tmp_path / "x")], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and said in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())
