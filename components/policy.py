"""The promotion gate's policy: the audit tolerances and bounds a version must have been
judged under to be promoted without `--force --reason` (policy.yaml at the repository root).

params.yaml drives the pipeline and anyone can override it (`dvc exp run -S ...`); the gate
does not trust it. Its tolerances live in policy.yaml, a file changed only by a reviewed
commit: `unlearn promote` compares the tolerances a version was audited under (recorded in
its reports/audit.json) with this file, and a version audited under looser ones needs
`--force --reason`, recorded as forced. Every key must be spelled out: a policy never takes
a default silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from components.params import AbsoluteParams, AuditParams, ParamsError, Strict, ToleranceParams

POLICY_FILE = Path("policy.yaml")
SECTIONS: dict[str, type[BaseModel]] = {"tolerance": ToleranceParams, "absolute": AbsoluteParams}


class PolicyError(ParamsError):
    """policy.yaml is missing, malformed or incomplete (a user mistake: one line, exit 2)."""


class Policy(Strict):
    tolerance: ToleranceParams
    absolute: AbsoluteParams

    def audit_params(self, audited: AuditParams) -> AuditParams:
        """The audited params with the policy's tolerances and bounds in place."""
        return audited.model_copy(update={"tolerance": self.tolerance,
                                          "absolute": self.absolute})


def parse_policy(raw: Any, where: str = str(POLICY_FILE)) -> Policy:
    """Validate a policy mapping: both sections, every key of each, within the schema's
    bounds (components.params)."""
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must hold the sections {', '.join(SECTIONS)}")
    for section, model in SECTIONS.items():
        given = raw.get(section)
        missing = sorted(set(model.model_fields) - set(given if isinstance(given, dict) else {}))
        if missing:
            raise PolicyError(f"{where}: {section} must state every key; missing "
                              f"{', '.join(f'{section}.{k}' for k in missing)}")
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise PolicyError(f"{where}: '{key}': {err['msg']} (got {err.get('input')!r})") from None


def load_policy(path: str | Path = POLICY_FILE) -> Policy:
    """Read and validate policy.yaml.

    Raises:
        PolicyError: missing, not YAML, or not a complete, valid policy.
    """
    path = Path(path)
    if not path.exists():
        raise PolicyError(f"{path} not found: the promotion gate's tolerances live there "
                          "(restore it from git; it is changed only by a reviewed commit)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from None
    return parse_policy(raw, str(path))


def looser_than(audited: AuditParams, policy: Policy) -> list[str]:
    """Every tolerance or bound the version was audited under that lets more through than
    the policy, as 'audit.tolerance.mia_auc = 0.3 > 0.05'. Tolerances are widths and the
    absolute bounds are upper bounds (components/verdict.py): for both, larger is looser."""
    out = []
    for section, model in SECTIONS.items():
        used, allowed = getattr(audited, section), getattr(policy, section)
        for key in model.model_fields:
            if getattr(used, key) > getattr(allowed, key):
                out.append(f"audit.{section}.{key} = {getattr(used, key):g} > "
                           f"{getattr(allowed, key):g}")
    return out
