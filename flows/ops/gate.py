"""The promotion gate on the registry: what `unlearn promote` checks before it moves
`champion`, what `unlearn review` checks before it vouches for a champion, and what a cycle
checks before it starts from one.

A version is sound when its checkpoint artifact hashes to its `artifact.sha256` tag, its
reports/audit.json judged that file, and its verdict and `audit` tag follow from the figures
there (components.gate). A champion is sound when, on top of that, it got there through
`unlearn promote`: the promotion log (registered-model tags `promotion.NNNN.<hex>`) holds an
entry to it, for that artifact, and no later entry moved `champion` elsewhere.

What this catches: stages run out of order, a tag edited, an alias moved with MlflowClient
or the MLflow UI, an artifact replaced. What it cannot: someone who rewrites the artifacts,
the tags and the log consistently (whoever can write the tracking store can do that).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow

from components.gate import recheck_audit, tag_problems
from components.params import AuditParams
from components.splits import file_sha256
from flows.runtime.tracking import client, tracking_uri

ARTIFACT_TAG = "artifact.sha256"
CHECKPOINT_ARTIFACT = "checkpoint/unlearned.pt"
AUDIT_ARTIFACT = "reports/audit.json"
PROMOTION_PREFIX = "promotion."


def promotions(name: str) -> list[dict]:
    """The promotion log of a registered model, oldest first."""
    tags = client().get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(PROMOTION_PREFIX)]


def promotion_number(entry_key: str) -> int:
    return int(entry_key[len(PROMOTION_PREFIX):].split(".")[0])


def download_artifact(run_id: str, path: str, into: str) -> Path | None:
    try:
        return Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=into, tracking_uri=tracking_uri()))
    except Exception:  # MLflow raises several types for a missing artifact
        return None


def inspect_version(version: Any) -> dict:
    """Re-read a version's artifacts and check its tags against them.

    Returns:
        {"sha256": the artifact's hash (None if unreadable), "verdict": the recomputed
         verdict (None if the audit could not be read), "audit_params": the AuditParams it
         was judged under (or None), "problems": one line each}.
    """
    out: dict[str, Any] = {"sha256": None, "verdict": None, "audit_params": None,
                           "problems": []}
    tags = version.tags
    expected = tags.get(ARTIFACT_TAG)
    if not expected:
        out["problems"].append(f"it carries no {ARTIFACT_TAG} tag (not registered by the "
                               "pipeline's register stage)")
        return out
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = download_artifact(version.run_id, CHECKPOINT_ARTIFACT, tmp)
        audit_file = download_artifact(version.run_id, AUDIT_ARTIFACT, tmp)
        if checkpoint is None or audit_file is None:
            missing = CHECKPOINT_ARTIFACT if checkpoint is None else AUDIT_ARTIFACT
            out["problems"].append(f"its run {version.run_id} has no {missing} artifact")
            return out
        out["sha256"] = file_sha256(checkpoint)
        audit = json.loads(audit_file.read_text())
    missing = [k for k in ("models", "verdict", "sha256", "audit_params") if k not in audit]
    if missing:
        out["problems"].append(f"its {AUDIT_ARTIFACT} records no {', '.join(missing)} "
                               "(written before the gate existed)")
        return out
    if out["sha256"] != expected:
        out["problems"].append(f"its {CHECKPOINT_ARTIFACT} hashes to {out['sha256'][:12]}, not "
                               f"to the registered {expected[:12]} (artifact replaced)")
    legacy = json.loads(tags["audit"]) if "audit" in tags else None
    verdict, problems = recheck_audit(audit, expected, legacy)
    if legacy is None:
        problems += tag_problems(audit, verdict, tags)
    elif tags.get("audit.passed") != str(verdict["passed"]).lower():
        problems.append("its `audit.passed` tag does not match its reports/audit.json "
                        "(tag edited)")
    out.update(verdict=verdict, audit_params=AuditParams.model_validate(audit["audit_params"]))
    out["problems"] += problems
    return out


def champion_problems(name: str, champion: Any, inspected: dict | None = None) -> list[str]:
    """Why the champion cannot be vouched for (empty: it passed through the gate).

    Args:
        name: the registered model.
        champion: the version the `champion` alias points at.
        inspected: inspect_version(champion), if already computed.
    """
    problems = list((inspected or inspect_version(champion))["problems"])
    tags = client().get_registered_model(name).tags
    entries = sorted(((promotion_number(k), json.loads(v)) for k, v in tags.items()
                      if k.startswith(PROMOTION_PREFIX)), key=lambda entry: entry[0])
    here = int(champion.version)
    mine = [n for n, e in entries if e.get("to") == here]
    if not mine:
        problems.append("`champion` was moved to it outside `unlearn promote` (no promotion to "
                        "it in the log)")
        return problems
    # racing promotions may share a number; only a strictly later one to another version
    # proves that the alias should be elsewhere
    later = [e for n, e in entries if n > max(mine) and e.get("to") != here]
    if later:
        problems.append(f"`champion` was moved back to it outside `unlearn promote` (the log's "
                        f"last promotion went to v{later[-1]['to']})")
    recorded = {e.get("sha256") for n, e in entries if n in mine}
    if champion.tags.get(ARTIFACT_TAG) not in recorded:
        problems.append(f"its {ARTIFACT_TAG} tag is not the hash it was promoted with "
                        "(tag edited)")
    return problems
