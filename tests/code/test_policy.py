"""The gate's policy: one reviewed file, complete and bounded, that params cannot loosen."""

from pathlib import Path

import pytest
import yaml

from components.params import ParamsError, load_params, parse_params
from components.policy import PolicyError, load_policy, looser_than, parse_policy

REPO = Path(__file__).resolve().parents[2]


def test_committed_policy_is_the_default_audit():
    """A version audited with the project's params is promotable without --force."""
    policy = load_policy(REPO / "policy.yaml")
    audit = load_params(REPO / "params.yaml").audit
    assert policy.tolerance == audit.tolerance and policy.absolute == audit.absolute
    assert looser_than(audit, policy) == []


def test_looser_params_are_named_and_stricter_ones_are_not():
    policy = load_policy(REPO / "policy.yaml")
    loose = parse_params({"audit": {"tolerance": {"mia_auc": 0.3, "backdoor_asr": 0.01},
                                    "absolute": {"ood_auroc": 0.99}}}).audit
    assert looser_than(loose, policy) == ["audit.tolerance.mia_auc = 0.3 > 0.05",
                                          "audit.absolute.ood_auroc = 0.99 > 0.95"]


def test_incomplete_or_out_of_bounds_policy_is_refused(tmp_path):
    raw = yaml.safe_load((REPO / "policy.yaml").read_text())
    del raw["tolerance"]["mia_auc"]
    with pytest.raises(PolicyError, match="missing tolerance.mia_auc"):
        parse_policy(raw)
    raw["tolerance"]["mia_auc"] = 0.9
    with pytest.raises(PolicyError, match="'tolerance.mia_auc'"):
        parse_policy(raw)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "policy.yaml")
    assert issubclass(PolicyError, ParamsError)  # a user mistake: one line, exit 2


@pytest.mark.parametrize("key", ["backdoor_asr", "mia_auc", "mia_efficacy", "ood_auroc"])
def test_params_cannot_set_a_tolerance_no_model_can_fail(key):
    with pytest.raises(ParamsError, match=f"audit.tolerance.{key}"):
        parse_params({"audit": {"tolerance": {key: 1.0}}})
