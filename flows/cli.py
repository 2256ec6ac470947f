"""`unlearn`: the reviewer's command line over the MLflow registry.

    unlearn review [--json]                      candidate and champion side by side
    unlearn promote --version N [--yes]          move `champion` to N if its audit passed
    unlearn promote --version N --force --reason "..."   override, recorded
    unlearn report                               reports/report.html (images, audits)

The registered model is `mlflow.model_name` from params.yaml; MLflow is MLFLOW_TRACKING_URI
or the project's mlflow.db. MLflow keeps no alias history, so every promotion is appended
to the registered model as a tag `promotion.NNNN` (who, when, from -> to, audit summary).
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from mlflow.exceptions import MlflowException
from rich.console import Console
from rich.table import Table

from components.params import ParamsError
from flows.common import stage_params
from flows.tracking import client, tracking_uri

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)
CANDIDATE, CHAMPION = "candidate", "champion"
PROMOTION_PREFIX = "promotion."
console = Console()


def fail(message: str, code: int = 2) -> None:
    """One clear line on stderr and a non-zero exit: no traceback for a user mistake."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def model_name() -> str:
    try:
        return stage_params().mlflow.model_name
    except ParamsError as exc:
        fail(str(exc))


def version_by_alias(name: str, alias: str) -> Any | None:
    try:
        return client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(name: str, version: int) -> Any:
    try:
        return client().get_model_version(name, str(version))
    except MlflowException:
        known = sorted(int(v.version) for v in client().search_model_versions(f"name='{name}'"))
        fail(f"model version {version} of '{name}' does not exist "
             f"(versions: {', '.join(map(str, known)) or 'none'}; MLflow at {tracking_uri()})")


def describe(version: Any) -> dict:
    """The review block of one model version, from the tags `register` wrote."""
    tags = version.tags
    audit = json.loads(tags.get("audit", "{}"))
    return {
        "version": int(version.version),
        "method": tags.get("method"),
        "forget_split_hash": tags.get("forget_split_hash"),
        "dvc_lock_hash": tags.get("dvc_lock_hash"),
        "audit": audit,
        "certificate": json.loads(tags.get("certificate", "{}")),
        "metrics": json.loads(tags.get("metrics", "{}")),
        "run_id": version.run_id,
        "run_url": f"{tracking_uri()} run {version.run_id}",
        "aliases": list(getattr(version, "aliases", []) or []),
    }


def promotions(name: str) -> list[dict]:
    tags = client().get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(PROMOTION_PREFIX)]


@app.command()
def review(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Candidate and champion side by side: method, audit vs the retrained reference,
    certificate, metrics, MLflow run, and the promotion log."""
    name = model_name()
    try:
        client().get_registered_model(name)
    except MlflowException:
        fail(f"no registered model '{name}' at {tracking_uri()} (run `make demo` or `dvc repro`)")
    cand, champ = version_by_alias(name, CANDIDATE), version_by_alias(name, CHAMPION)
    out = {"model": name, "candidate": describe(cand) if cand else None,
           "champion": describe(champ) if champ else None, "promotions": promotions(name)}
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return
    table = Table(title=f"{name}: candidate vs champion")
    table.add_column("")
    for role in ("candidate", "champion"):
        block = out[role]
        table.add_column(f"{role} v{block['version']}" if block else f"{role} (none)")
    rows = [("method", lambda b: b["method"]),
            ("audit", lambda b: "PASSED" if b["audit"].get("passed") else
             f"FAILED: {', '.join(b['audit'].get('failed', []))}")]
    for key in ("backdoor_asr", "mia_auc", "mia_efficacy", "ood_auroc"):
        rows.append((key, lambda b, k=key: _vs_reference(b["audit"], k)))
    rows.append(("ε (certificate)", lambda b: str(b["certificate"].get("epsilon"))))
    rows.append(("retrain gap", lambda b: f"{b['metrics'].get('retrain_gap', float('nan')):.3f}"))
    rows.append(("forget split", lambda b: (b["forget_split_hash"] or "")[:12]))
    for label, get in rows:
        table.add_row(label, *(get(out[r]) if out[r] else "" for r in ("candidate", "champion")))
    console.print(table)
    for entry in out["promotions"]:
        console.print(f"{entry['at']}  v{entry['from']} -> v{entry['to']}  by {entry['by']}"
                      + (f"  FORCED: {entry['reason']}" if entry.get("forced") else ""))


def _vs_reference(audit: dict, key: str) -> str:
    check = audit.get("checks", {}).get(key)
    if not check:
        return ""
    mark = "ok" if check["passed"] else "FAIL"
    return f"{check['value']:.3f} ({check['against']} {check['bound']:.3f}) {mark}"


@app.command()
def promote(
    version: Annotated[int, typer.Option("--version", help="model version to promote")],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    force: Annotated[bool, typer.Option("--force", help="promote a failed audit")] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="why (with --force)")] = None,
    by: Annotated[str | None, typer.Option("--by", help="who (default: the OS user)")] = None,
) -> None:
    """Move the alias `champion` to VERSION, only if its audit passed (or --force --reason)."""
    name = model_name()
    target = get_version(name, version)
    audit = json.loads(target.tags.get("audit", "{}"))
    if not audit:
        fail(f"version {version} carries no audit (it was not registered by the pipeline)")
    if force and not reason:
        fail("--force needs --reason \"...\": every override is recorded with why")
    if not audit.get("passed") and not force:
        figures = "; ".join(f"{k}: {c['rule']}" for k, c in audit["checks"].items()
                            if not c["passed"])
        fail(f"version {version} failed its audit, refusing to promote ({figures}). "
             "Use --force --reason \"...\" to override.", code=1)
    current = version_by_alias(name, CHAMPION)
    before = int(current.version) if current else None
    if before == version:
        console.print(f"version {version} is already '{CHAMPION}'")
        return
    if not yes:
        if not sys.stdin.isatty():
            fail("not a terminal: pass --yes to confirm the promotion")
        typer.confirm(f"Promote {name} v{version} to '{CHAMPION}' (was v{before})?", abort=True)
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "by": by or getpass.getuser(), "from": before, "to": version, "forced": force,
             "reason": reason, "audit": {"passed": audit.get("passed"),
                                         "failed": audit.get("failed", [])}}
    log_key = f"{PROMOTION_PREFIX}{len(promotions(name)) + 1:04d}"
    client().set_registered_model_tag(name, log_key, json.dumps(entry))
    client().set_registered_model_alias(name, CHAMPION, str(version))
    console.print(f"{name} v{version} is now '{CHAMPION}'" + (" (FORCED)" if force else ""))


@app.command()
def report(out: Annotated[Path, typer.Option(help="where to write the page")] =
           Path("reports/report.html")) -> None:
    """Write a self-contained HTML report of the last pipeline run (and log it to MLflow)."""
    from flows.report import write_report

    try:
        write_report(out)
    except ParamsError as exc:
        fail(str(exc))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    app()
