"""The promotion gate's checks that need no registry: which model file the reports describe,
and whether a recorded verdict follows from its figures.

flows/register.py refuses to register a model the audit did not judge; flows/ops/gate.py runs
the same checks again on a registered version's artifacts before promoting it, and on the
champion before `unlearn review` vouches for it or a cycle starts from it.
"""

from __future__ import annotations

from components.params import AuditParams
from components.verdict import AUDITS, audit_verdict


def _short(sha: str | None) -> str:
    return (sha or "none")[:12]


def provenance_problems(model_sha256: str, audit: dict, decouple: dict,
                        finetune: dict) -> list[str]:
    """Why the reports do not describe models/unlearned.pt, if they do not.

    Args:
        model_sha256: sha256 of models/unlearned.pt.
        audit: reports/audit.json (`sha256`: the files the audit judged).
        decouple: reports/decouple.json (`model_sha256`: the decoupled model it wrote).
        finetune: reports/finetune.json (`init_sha256` -> `model_sha256`).

    Returns:
        One line per broken link (empty: audit, certificate record and file agree).
    """
    problems = []
    audited = audit.get("sha256", {}).get("unlearned")
    if audited != model_sha256:
        problems.append(f"models/unlearned.pt (sha256 {_short(model_sha256)}) is not the model "
                        f"reports/audit.json judged ({_short(audited)}): run the stages in order "
                        "(`dvc repro`) so that the audit judges this model before it is registered")
    if finetune.get("model_sha256") != model_sha256:
        problems.append(f"reports/finetune.json describes another model "
                        f"({_short(finetune.get('model_sha256'))}) than models/unlearned.pt "
                        f"({_short(model_sha256)}): run `dvc repro`")
    if finetune.get("init_sha256") != decouple.get("model_sha256"):
        problems.append("the retention started from another decoupled model "
                        f"({_short(finetune.get('init_sha256'))}) than reports/decouple.json "
                        f"describes ({_short(decouple.get('model_sha256'))}): run `dvc repro`")
    return problems


def figure_tag(value: float | None) -> str:
    """How `register` writes an audit figure as a flat tag (`audit.<figure>`)."""
    return "none" if value is None else f"{value:.4f}"


def recheck_audit(audit: dict, artifact_sha256: str,
                  audit_tag: dict | None) -> tuple[dict, list[str]]:
    """Recompute a version's verdict from its reports/audit.json and compare the tags with it.

    Args:
        audit: the version's reports/audit.json artifact (figures, verdict, audit_params,
            sha256 of the judged files).
        artifact_sha256: sha256 of the version's checkpoint/unlearned.pt artifact.
        audit_tag: the version's `audit` JSON tag (verdict and figures), which versions
            registered before review/record.json carry; None for a later version, whose
            flat tags tag_problems checks.

    Returns:
        (verdict, problems): the verdict audit_verdict gives the stored figures under the
        stored tolerances, and one line per disagreement (judged file, edited verdict, edited
        tag).
    """
    problems = []
    if audit.get("sha256", {}).get("unlearned") != artifact_sha256:
        problems.append(f"its audit judged {_short(audit.get('sha256', {}).get('unlearned'))}, "
                        f"not its artifact {_short(artifact_sha256)}")
    figures, reference = audit["models"]["unlearned"], audit["models"].get("retrained")
    verdict = audit_verdict(figures, reference, AuditParams.model_validate(audit["audit_params"]))
    if verdict["passed"] != audit["verdict"]["passed"]:
        problems.append("the verdict in its reports/audit.json does not follow from the figures "
                        "there (edited)")
    if audit_tag is None:
        return verdict, problems
    tagged = {k: audit_tag.get(k) for k in AUDITS}
    if audit_tag.get("passed") != verdict["passed"] or \
            tagged != {k: figures.get(k) for k in AUDITS}:
        problems.append("its `audit` tag does not match its reports/audit.json (tag edited)")
    return verdict, problems


def tag_problems(audit: dict, verdict: dict, tags: dict[str, str]) -> list[str]:
    """Whether a version's flat audit tags (`audit.passed`, `audit.<figure>`) still say what
    its reports/audit.json says: they are what a reviewer reads and filters on in the UI.

    Args:
        audit: the version's reports/audit.json artifact.
        verdict: the verdict recomputed from it (recheck_audit).
        tags: the version's tags.

    Returns:
        One line per tag that was edited or removed.
    """
    figures = audit["models"]["unlearned"]
    problems = []
    if tags.get("audit.passed") != str(verdict["passed"]).lower():
        problems.append("its `audit.passed` tag does not match its reports/audit.json "
                        "(tag edited)")
    edited = [k for k in AUDITS if tags.get(f"audit.{k}") != figure_tag(figures.get(k))]
    if edited:
        problems.append(f"its `audit.{edited[0]}` tag does not match its reports/audit.json "
                        "(tag edited)")
    return problems
