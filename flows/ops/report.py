"""`unlearn report`: reports/report.html for the last pipeline run, also logged to MLflow.

A header naming what the page is about (registered model and version, forget scope,
certificate), image grids (inputs and the original, unlearned and retrained outputs on
forget, retain and triggered inputs), the audit table with the verdict, the (ε, δ)
certificate (what it covers, in words), and per-sample loss histograms.

The page is logged on the run of the version it describes (reports/registered.json, when
that version's artifact is models/unlearned.pt) and linked from the version both ways: the
version's `report.uri` / `report.link` tags and its description point to the page, the page
names the version.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from components.audits import eval_pairs
from components.certificate import make_certificate
from components.models import model_from_file
from components.params import Params
from components.report_html import histogram_png, img_tag, render_page, table, to_png
from components.review import forget_scope
from components.splits import file_sha256
from components.training import per_sample_loss, predict
from components.verdict import AUDITS
from flows.ops.gate import ARTIFACT_TAG
from flows.ops.review import link_report
from flows.runtime.common import (
    MODEL_DIR,
    REPORT_DIR,
    SPLIT_DIR,
    eval_images,
    eval_splits,
    load_sets,
    load_splits,
    read_json,
    read_model_file,
    reference_model,
    stage_params,
    task_spec,
)
from flows.runtime.tracking import client, setup

MODELS = ("original", "unlearned", "retrained")
GRID = 8  # images per grid row
CPU = torch.device("cpu")


def _grids(models: dict, data: dict) -> str:
    rows = []
    for name, label in (("forget", "forget set (should look like the retrained column)"),
                        ("retain", "retain set (should be unchanged)"),
                        ("triggered", "held-out + trigger (should look like the retrained "
                                      "column: the garment, not the pattern and not a dark "
                                      "or broken image)")):
        inputs = data[name][0][:GRID]
        cells = [["input", img_tag(to_png(inputs), f"{name} inputs")]]
        cells += [[m, img_tag(to_png(predict(model, inputs, CPU)), f"{name} {m}")]
                  for m, model in models.items()]
        rows.append(f"<h3>{label}</h3>" + table(["model", "images"], cells))
    return "\n".join(rows)


def _audit_table(audit: dict, verdict: dict) -> str:
    rows = []
    for key in (*AUDITS, "trigger_ssim", "trigger_clean_psnr", "trigger_content_psnr"):
        if key not in audit["models"]["unlearned"]:
            continue
        check = verdict.get("checks", {}).get(key)
        mark = "" if not check else (
            f"<span class='{'pass' if check['passed'] else 'fail'}'>"
            f"{'ok' if check['passed'] else 'FAIL'}</span> {check['rule']}")
        judged = [m for m in MODELS if m in audit["models"]]
        rows.append([key, *(f"{audit['models'][m][key]:.3f}" for m in judged), mark])
    head = ["audit", *[m for m in MODELS if m in audit["models"]], "verdict check"]
    status = "pass" if verdict.get("passed") else "fail"
    against = verdict.get("against", "?")
    if against == "reference-free":
        against += ": held-out data and the model's own figures"
    return (f"<p>Verdict: <span class='{status}'>{status.upper()}</span> (against: {against})"
            "</p>" + table(head, rows))


def _certificate(cert: dict) -> str:
    rows = [[k, html.escape(str(cert[k]))] for k in
            ("covers", "epsilon", "delta", "mechanism", "relation", "sigma", "model_sha256")]
    return f"<p>{html.escape(cert['statement'])}</p>" + table(["", "certificate"], rows)


def registered_version(model_sha256: str) -> dict | None:
    """reports/registered.json if the version it names holds models/unlearned.pt (None: not
    registered yet, or registered from another model file, or the registry is unreachable)."""
    path = REPORT_DIR / "registered.json"
    if not path.exists():
        return None
    registered = read_json(path)
    try:
        version = client().get_model_version(registered["model_name"],
                                             str(registered["version"]))
    except MlflowException:
        return None
    return registered if version.tags.get(ARTIFACT_TAG) == model_sha256 else None


def _header(params: Params, summary: dict, cert: dict, registered: dict | None) -> str:
    """What the page is about, first: the version, the forget scope, the certificate."""
    what = (f"{registered['model_name']} version {registered['version']} "
            f"(<code>{registered['model_uri']}</code>)" if registered else
            "models/unlearned.pt (not registered: run the register stage)")
    rows = [["model", what],
            ["method", html.escape(params.unlearn.method)],
            ["forget scope", html.escape(f"{forget_scope(summary, params)}: "
                                         f"{summary['counts']['forget']:,} training images")],
            ["deletion requests", html.escape(", ".join(summary.get("requests", [])) or "none")],
            ["forget split sha256", f"<code>{summary['hashes']['forget'][:12]}</code>"],
            ["certificate", html.escape(f"covers {cert['covers']} (ε = {cert['epsilon']})")],
            ["model file sha256", f"<code>{cert['model_sha256'][:12]}</code>"]]
    return table(["", "this report is about"], rows)


def write_report(out: Path) -> Path:
    """Build the page from the pipeline's outputs and write it to `out`.

    Returns:
        The written path.
    """
    params = stage_params()
    sets = load_sets(params)
    spec = task_spec(params)
    chosen = eval_splits(load_splits(sets), params.audit.max_samples, params.seed)
    data = eval_pairs(eval_images(chosen, sets), spec)
    blobs = {m: read_model_file(MODEL_DIR / f"{m}.pt") for m in MODELS}
    if reference_model(blobs["retrained"]) is None:  # audited reference-free
        del blobs["retrained"]
    models = {m: model_from_file(blob) for m, blob in blobs.items()}
    audit = read_json(REPORT_DIR / "audit.json")
    metrics = read_json(REPORT_DIR / "metrics.json")
    losses = {m: {s: per_sample_loss(model, *data[s], CPU).numpy()
                  for s in ("forget", "retain", "heldout")} for m, model in models.items()}
    summary = read_json(SPLIT_DIR / "summary.json")
    sha = file_sha256(MODEL_DIR / "unlearned.pt")
    cert = make_certificate(read_json(REPORT_DIR / "decouple.json"),
                            read_json(REPORT_DIR / "finetune.json"), summary["hashes"]["forget"],
                            sha)
    setup(params)
    registered = registered_version(sha)
    quality = [[k, *("—" if metrics[m].get(k) is None else f"{metrics[m][k]:.3f}"
                     for m in models)]
               for k in ("forget_psnr", "retain_psnr", "test_psnr", "forget_ssim", "trigger_psnr",
                         "retrain_gap")]
    cost = "no model was retrained to compare with" if metrics.get("cost_ratio") is None else \
        f"{metrics['cost_ratio']:.3f}"
    title = f"Unlearning report: {params.unlearn.method} on {params.data.dataset}"
    if registered:
        title += f", {registered['model_name']} v{registered['version']}"
    page = render_page(
        title,
        [("About", _header(params, summary, cert, registered)),
         ("Audit", _audit_table(audit, audit.get("verdict", {}))),
         ("Quality", table(["metric", *models], quality)
          + f"<p>cost ratio (unlearning / retraining compute): {cost}</p>"),
         ("Certificate", _certificate(cert)),
         ("Outputs", _grids(models, data)),
         ("Per-sample losses", "<p>forget vs retain vs held-out; after unlearning the forget "
          "curve should sit where the retrained model puts it.</p>"
          + img_tag(histogram_png(losses), "loss histograms"))],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    if registered:
        run = client().get_run(registered["run_id"])
        link_report(registered["model_name"], registered["version"], out,
                    run.info.experiment_id)
    else:
        print("[report] not logged to MLflow: no registered version holds models/unlearned.pt "
              "(run the register stage, then unlearn report)")
    return out

