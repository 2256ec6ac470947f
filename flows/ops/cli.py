"""`unlearn`: the reviewer's command line over the MLflow registry.

    unlearn review [--json]                      candidate and champion side by side
    unlearn promote --version N [--yes]          move `champion` to N if its audit passed
    unlearn promote --version N --force --reason "..."   override, recorded
    unlearn report                               reports/report.html (images, audits)
    unlearn import-model STATE_DICT --out F      wrap a state dict trained elsewhere
    unlearn forget add --ids ID,... | --file F --reason "..."   file a deletion request
    unlearn forget list [--json]                 requests: pending -> unlearned -> promoted
    unlearn run --once                           one unlearning cycle over pending requests
    unlearn calibrate                            a cycle's verdict vs a retrained reference
    unlearn serve                                the cycle on schedule.cron (Prefect)

The registered model is `mlflow.model_name` from params.yaml, or the one derived from the
dataset, family and task (components.params.registered_model_name); MLflow is
MLFLOW_TRACKING_URI or the project's mlflow.db. MLflow keeps no alias history, so every
promotion is appended to the registered model as a tag `promotion.NNNN.<8 hex>` (who, when,
why, from -> to, audit summary, artifact hash), and the promoted version gets `promoted.by`,
`promoted.at`, `promoted.reason` and a description that says so (flows/ops/review.py). Who is a
person: `--by` or UNLEARN_REVIEWER, never the OS user. The gate's tolerances are
policy.yaml's, not params.yaml's (components/policy.py); `promote` re-reads the version's
artifacts first (flows/ops/gate.py).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from mlflow.exceptions import MlflowException
from rich.console import Console
from rich.table import Table

from components.data import DataError
from components.ledger import LEDGER_DIR, PROMOTED, LedgerError, add_request, mark, read_ledger
from components.params import ParamsError, registered_model_name
from components.policy import load_policy, looser_than
from components.review import request_ids
from components.verdict import AUDITS
from flows.ops.gate import (
    ARTIFACT_TAG,
    PROMOTION_PREFIX,
    champion_problems,
    inspect_version,
    promotions,
)
from flows.ops.review import refresh_description, review_blocks
from flows.runtime.common import SPLIT_DIR, stage_params
from flows.runtime.tracking import client, tracking_uri

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True, add_completion=False)
forget_app = typer.Typer(help="Deletion requests: file them, list them.", no_args_is_help=True)
app.add_typer(forget_app, name="forget")
CANDIDATE, CHAMPION = "candidate", "champion"
REVIEWER_ENV = "UNLEARN_REVIEWER"
console = Console()


def fail(message: str, code: int = 2) -> NoReturn:
    """One clear line on stderr and a non-zero exit: no traceback for a user mistake."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def model_name() -> str:
    try:
        return registered_model_name(stage_params())
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
    """The review block of one model version, from the tags and the review/record.json
    that `register` wrote (or the JSON tags of a version registered before the record)."""
    tags = version.tags
    blocks = review_blocks(version)
    return {
        "version": int(version.version),
        "method": tags.get("method"),
        "variant": tags.get("method.variant"),
        "forget_scope": tags.get("forget.scope"),
        "forget_count": int(tags["forget.count"]) if "forget.count" in tags else None,
        "requests": request_ids(tags.get("requests")),
        "forget_split_hash": tags.get("forget_split_hash"),
        "dvc_lock_hash": tags.get("dvc_lock_hash"),
        "audit": blocks["audit"],
        "certificate": blocks["certificate"],
        "artifact_sha256": tags.get(ARTIFACT_TAG),
        "metrics": blocks["metrics"],
        "report": tags.get("report.uri"),
        "promoted": {k.removeprefix("promoted."): v for k, v in tags.items()
                     if k.startswith("promoted.")} or None,
        "run_id": version.run_id,
        "run_url": f"{tracking_uri()} run {version.run_id}",
        "aliases": list(getattr(version, "aliases", []) or []),
    }


def gate_block(name: str, version: Any, role: str) -> dict:
    """Whether the gate vouches for a version: its artifacts agree with its tags, and for
    the champion, it got there through `unlearn promote` (flows/ops/gate.py)."""
    if role == CHAMPION:
        problems = champion_problems(name, version)
    else:
        problems = inspect_version(version)["problems"]
    return {"ok": not problems, "problems": problems}


def _certificate_cell(cert: dict) -> str:
    if not cert:
        return ""
    covers, eps = cert.get("covers", "none"), cert.get("epsilon")
    if covers == "none":
        return "none (ε = ∞)"
    kind = "unlearning" if cert.get("start_radius") is not None else "ascent update only"
    bound = f"ε = {eps}, δ = {cert.get('delta')}" if covers == "released model" else \
        f"ε = ∞ (decoupled model: ε = {cert.get('decoupled', {}).get('epsilon')})"
    return f"{covers}: {bound} ({kind})"


@app.command()
def review(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Candidate and champion side by side: method, audit vs the retrained reference,
    certificate, metrics, artifact hash, MLflow run, the promotion log, and a flag on a
    version the gate cannot vouch for (e.g. a champion moved outside `unlearn promote`)."""
    name = model_name()
    try:
        client().get_registered_model(name)
    except MlflowException:
        fail(f"no registered model '{name}' at {tracking_uri()} (run `make demo` or `dvc repro`)")
    cand, champ = version_by_alias(name, CANDIDATE), version_by_alias(name, CHAMPION)
    out = {"model": name, "candidate": None, "champion": None, "promotions": promotions(name)}
    for role, version in ((CANDIDATE, cand), (CHAMPION, champ)):
        if version:
            out[role] = {**describe(version), "gate": gate_block(name, version, role)}
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return
    table = Table(title=f"{name}: candidate vs champion")
    table.add_column("")
    for role in ("candidate", "champion"):
        block = out[role]
        table.add_column(f"{role} v{block['version']}" if block else f"{role} (none)")
    rows = [("method", lambda b: b["method"] + (f" ({b['variant']})" if b["variant"] else "")),
            ("forget scope", lambda b: b["forget_scope"] or ""),
            ("requests", lambda b: ", ".join(b["requests"]) or "none"),
            ("audit", lambda b: "PASSED" if b["audit"].get("passed") else
             f"FAILED: {', '.join(b['audit'].get('failed', []))}"),
            ("audited against", lambda b: b["audit"].get("against", "retrained"))]
    for key in AUDITS:
        rows.append((key, lambda b, k=key: _vs_reference(b["audit"], k)))
    rows.append(("certificate", lambda b: _certificate_cell(b["certificate"])))
    rows.append(("retrain gap", lambda b: "-" if b["metrics"].get("retrain_gap") is None else
                 f"{b['metrics']['retrain_gap']:.3f}"))
    rows.append(("forget split", lambda b: (b["forget_split_hash"] or "")[:12]))
    rows.append(("artifact", lambda b: (b["artifact_sha256"] or "none")[:12]))
    rows.append(("report", lambda b: b["report"] or "none (unlearn report)"))
    rows.append(("promoted", lambda b: "" if not b["promoted"] else
                 f"by {b['promoted'].get('by')} at {b['promoted'].get('at')}"))
    rows.append(("gate", lambda b: "ok" if b["gate"]["ok"] else "FLAGGED"))
    for label, get in rows:
        table.add_row(label, *(get(out[r]) if out[r] else "" for r in ("candidate", "champion")))
    console.print(table)
    for role in (CANDIDATE, CHAMPION):
        for problem in (out[role]["gate"]["problems"] if out[role] else []):
            console.print(f"[bold red]FLAG:[/] {role} v{out[role]['version']}: {problem}",
                          highlight=False)
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
    by: Annotated[str | None, typer.Option("--by", help=f"who promotes: a person, recorded "
                                           f"on the version (default: ${REVIEWER_ENV})")] = None,
) -> None:
    """Move the alias `champion` to VERSION, only if its artifact is the one its audit judged,
    its audit passed, and it was audited under tolerances no looser than policy.yaml (the
    last two can be overridden with --force --reason, recorded as forced). The version gets
    `promoted.by/at/reason` tags and a description that says so; `candidate` leaves it."""
    name = model_name()
    target = get_version(name, version)
    if "audit.passed" not in target.tags and "audit" not in target.tags:
        fail(f"version {version} carries no audit (it was not registered by the pipeline)")
    if force and not reason:
        fail("--force needs --reason \"...\": every override is recorded with why")
    try:
        policy = load_policy()
    except ParamsError as exc:
        fail(str(exc))
    # the artifacts, not the tags, are what is judged: a broken link is never overridable
    checked = inspect_version(target)
    if checked["problems"]:
        fail(f"version {version} cannot be promoted: {checked['problems'][0]}")
    verdict = checked["verdict"]
    if not verdict["passed"] and not force:
        figures = "; ".join(f"{k}: {c['rule']}" for k, c in verdict["checks"].items()
                            if not c["passed"])
        fail(f"version {version} failed its audit, refusing to promote ({figures}). "
             "Use --force --reason \"...\" to override.", code=1)
    looser = looser_than(checked["audit_params"], policy)
    if looser and not force:
        fail(f"version {version} was audited under looser tolerances than policy.yaml "
             f"({'; '.join(looser)}), refusing to promote. Audit it under the policy, or use "
             "--force --reason \"...\" to override.", code=1)
    current = version_by_alias(name, CHAMPION)
    before = int(current.version) if current else None
    # an alias moved there outside the gate is promoted again, so that the log vouches for it
    if before == version and not champion_problems(name, current, checked):
        console.print(f"version {version} is already '{CHAMPION}'")
        return
    # asked only now: a version the gate refuses is refused whoever asks
    reviewer = (by or os.environ.get(REVIEWER_ENV, "")).strip()
    if not reviewer:
        fail(f"say who promotes: --by NAME or {REVIEWER_ENV}=NAME (a person, recorded on the "
             "version; the OS user is not one)")
    if not yes:
        if not sys.stdin.isatty():
            fail("not a terminal: pass --yes to confirm the promotion")
        typer.confirm(f"Promote {name} v{version} to '{CHAMPION}' (was v{before})?", abort=True)
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "by": reviewer, "from": before, "to": version, "forced": force,
             "reason": reason or "audit passed", "sha256": checked["sha256"],
             "audit": {"passed": verdict["passed"], "failed": verdict["failed"],
                       "looser_than_policy": looser}}
    # a random suffix keeps two promotions racing each other from writing the same key
    # (MLflow has no compare-and-set): the log stays append-only, ordered by its number
    log_key = f"{PROMOTION_PREFIX}{len(promotions(name)) + 1:04d}.{uuid.uuid4().hex[:8]}"
    client().set_registered_model_tag(name, log_key, json.dumps(entry))
    client().set_registered_model_alias(name, CHAMPION, str(version))
    for key in ("by", "at", "reason", "forced"):
        client().set_model_version_tag(name, str(version), f"promoted.{key}",
                                       str(entry[key]).lower() if key == "forced" else entry[key])
    # a promoted candidate is no longer a candidate: the alias would point a reviewer at it
    cand = version_by_alias(name, CANDIDATE)
    if cand is not None and int(cand.version) == version:
        client().delete_registered_model_alias(name, CANDIDATE)
    refresh_description(name, version)
    console.print(f"{name} v{version} is now '{CHAMPION}'" + (" (FORCED)" if force else ""))
    covered = set(request_ids(target.tags.get("requests")))
    done = [r.request_id for r in read_ledger(LEDGER_DIR)
            if r.request_id in covered and r.status != PROMOTED]
    if done:
        mark(LEDGER_DIR, done, PROMOTED, version)
        console.print(f"deletion requests now promoted: {', '.join(done)}")


@app.command()
def report(out: Annotated[Path, typer.Option(help="where to write the page")] =
           Path("reports/report.html")) -> None:
    """Write a self-contained HTML report of the last pipeline run (and log it to MLflow)."""
    from flows.ops.report import write_report

    try:
        write_report(out)
    except ParamsError as exc:
        fail(str(exc))
    console.print(f"wrote {out}")


@app.command("relocate-store")
def relocate_store_cmd(
    old: Annotated[Path | None, typer.Option("--from", help="the artifact folder the store "
                                             "points at (default: its experiment's)")] = None,
) -> None:
    """Point a copied or moved embedded store (mlflow.db) at the mlartifacts/ beside it:
    MLflow records artifact locations as absolute paths, so a copy otherwise keeps serving,
    and writing to, the folder it came from (docs/operations.md, "Moving the store")."""
    from flows.runtime.tracking import relocate_store

    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        fail(f"MLflow is {uri}: only the embedded SQLite store records local paths (a server "
             "with --artifacts-destination or S3 needs no relocation)")
    if old is None:
        try:
            exp = client().get_experiment_by_name(stage_params().mlflow.experiment)
        except ParamsError as exc:
            fail(str(exc))
        if exp is None:
            fail("no experiment in this store: nothing to relocate")
        old = Path(exp.artifact_location.removeprefix("file://"))
    new = Path("mlartifacts").resolve()
    if old.resolve() == new:
        console.print(f"the store already points at {new}")
        return
    changed = relocate_store(Path(uri.removeprefix("sqlite:///")), str(old), str(new))
    console.print(f"artifact locations {old} -> {new}: "
                  + ", ".join(f"{k} {n}" for k, n in changed.items() if n))


@app.command("import-model")
def import_model(
    state_dict: Annotated[Path, typer.Argument(help="a .pt file holding a plain state dict "
                                               "(torch.save(model.state_dict(), f))")],
    out: Annotated[Path, typer.Option(help="the model file to write (then: model.source)")] =
    Path("models/imported.pt"),
    channels: Annotated[int | None, typer.Option(help="image channels (default: the "
                                                 "dataset's)")] = None,
    size: Annotated[int | None, typer.Option(help="image side in pixels (default: the "
                                             "dataset's)")] = None,
) -> None:
    """Wrap a state dict trained elsewhere into the pipeline's model file (docs/byo-model.md):
    its weights are checked against params' `model` block (family, task, architecture)."""
    import torch

    from components.models import wrap_state_dict
    from flows.runtime.common import load_sets, model_shape

    try:
        params = stage_params()
        if channels is None or size is None:
            c, side = model_shape(load_sets(params))
            channels, size = channels or c, size or side
    except (ParamsError, DataError) as exc:
        fail(str(exc))
    if not state_dict.is_file():
        fail(f"{state_dict}: no such file")
    try:
        weights = torch.load(state_dict, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or pickled code (weights_only refuses it)
        fail(f"{state_dict} cannot be read as a state dict ({type(exc).__name__}: "
             f"{str(exc).splitlines()[0][:200]})")
    if not isinstance(weights, dict):
        fail(f"{state_dict} holds a {type(weights).__name__}, not a state dict")
    if "state_dict" in weights and "model" in weights:
        fail(f"{state_dict} is already a model file: set model.source to it")
    try:
        blob = wrap_state_dict(weights, params.model, channels, size,
                               {"wrapped_from": str(state_dict)})
    except ValueError as exc:
        fail(f"{state_dict}: {exc}")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    console.print(f"wrote {out} (model.family={params.model.family}, task "
                  f"{params.model.task}, {channels}x{size}x{size}); unlearn it with: "
                  f"dvc exp run -S model.source={out} -S audit.reference=none")


def training_ids() -> set[str]:
    """The sample ids of the training data: the forget and retain manifests' first column."""
    ids = set()
    for name in ("forget", "retain"):
        path = SPLIT_DIR / f"{name}.csv"
        if not path.exists():
            fail(f"{path} missing: the split manifests are needed to check ids "
                 "(run `dvc repro`, or `dvc pull` in a fresh clone)")
        with path.open() as f:
            next(f)
            ids.update(line.split(",", 1)[0] for line in f)
    return ids


def read_id_file(path: Path) -> list[str]:
    """Ids from a CSV: the `id` column if there is a header with one, else the first column."""
    if not path.exists():
        fail(f"id file not found: {path}")
    rows = [line.strip().split(",") for line in path.read_text().splitlines() if line.strip()]
    if rows and "id" in rows[0]:
        col = rows[0].index("id")
        return [r[col].strip() for r in rows[1:] if len(r) > col]
    return [r[0].strip() for r in rows]


@forget_app.command("add")
def forget_add(
    reason: Annotated[str, typer.Option("--reason", help="why (kept in the ledger)")],
    ids: Annotated[str | None, typer.Option("--ids", help="comma-separated sample ids, "
                                            "<dataset>:<split>:<index>")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="CSV of ids")] = None,
    requester: Annotated[str | None, typer.Option("--requester", help="who asked "
                                                  "(default: the OS user)")] = None,
) -> None:
    """File a deletion request: every id is checked against the split manifests; one bad id
    refuses the whole request and nothing is written."""
    if (ids is None) == (file is None):
        fail("give the sample ids with exactly one of --ids ID,... or --file ids.csv")
    wanted = [i.strip() for i in ids.split(",")] if ids is not None else read_id_file(file)
    try:
        req = add_request(LEDGER_DIR, wanted, reason, requester or getpass.getuser(),
                          training_ids())
    except LedgerError as exc:
        fail(str(exc))
    console.print(f"{req.request_id}: {len(req.ids)} sample(s) pending; the next cycle "
                  "(`unlearn run --once`, or the schedule) unlearns them")


@forget_app.command("list")
def forget_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False
                ) -> None:
    """Every deletion request with its status and the model version that removed it."""
    try:
        requests = read_ledger(LEDGER_DIR)
    except LedgerError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps([{"request_id": r.request_id, "ids": r.ids, "status": r.status,
                           "model_version": r.model_version, "reason": r.reason,
                           "requester": r.requester, "at": r.at, "history": r.history}
                          for r in requests], indent=2))
        return
    table = Table(title=f"deletion requests ({LEDGER_DIR})")
    for col in ("request", "status", "version", "samples", "requester", "filed", "reason"):
        table.add_column(col)
    for r in requests:
        table.add_row(r.request_id, r.status, str(r.model_version or ""), str(len(r.ids)),
                      r.requester, r.at, r.reason)
    console.print(table)


@app.command("run")
def run_cycle(once: Annotated[bool, typer.Option("--once", help="run one cycle now")] = False
              ) -> None:
    """One unlearning cycle over the pending deletion requests (see flows/ops/cycle.py)."""
    if not once:
        fail("`unlearn run` needs --once (for the schedule: `unlearn serve`)")
    from flows.ops.cycle import unlearning_cycle

    state = unlearning_cycle(root=str(Path.cwd()), return_state=True)
    if state.is_failed() or state.is_crashed():
        fail(f"the cycle failed: {state.message}", code=1)


@app.command()
def calibrate() -> None:
    """Check the cycles' reference-free verdict against a model retrained without every
    request so far (an explicit, occasional action: it trains); recorded in
    ledger/calibrations.jsonl, nothing registered."""
    from flows.ops.cycle import calibration

    state = calibration(root=str(Path.cwd()), return_state=True)
    if state.is_failed() or state.is_crashed():
        fail(f"the calibration failed: {state.message}", code=1)


@app.command()
def serve() -> None:
    """Serve the cycle as a Prefect deployment on schedule.cron (blocks; Ctrl-C stops)."""
    import asyncio

    from prefect import serve as prefect_serve

    from flows.ops.cycle import DEPLOYMENT, clear_stale_runs, cycle_deployment

    try:
        params = stage_params()
    except ParamsError as exc:
        fail(str(exc))
    deployment = cycle_deployment(params, Path.cwd())
    dropped = asyncio.run(clear_stale_runs(deployment.apply()))
    console.print(f"deployment '{DEPLOYMENT}': cron '{params.schedule.cron}' (UTC)"
                  + (f"; {dropped} run(s) planned by an older schedule dropped" if dropped
                     else ""))
    prefect_serve(deployment)


if __name__ == "__main__":
    app()
