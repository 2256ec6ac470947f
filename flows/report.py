"""`unlearn report`: reports/report.html for the last pipeline run, also logged to MLflow.

Image grids (inputs and the original, unlearned and retrained outputs on forget, retain and
triggered inputs), the audit table with the verdict, the (ε, δ) certificate (what it covers,
in words), and per-sample loss histograms.
"""

from __future__ import annotations

import html
from pathlib import Path

import mlflow
import torch

from components.audits import eval_pairs
from components.certificate import make_certificate
from components.models import model_from_file
from components.report_html import histogram_png, img_tag, render_page, table, to_png
from components.splits import file_sha256
from components.training import per_sample_loss, predict
from components.verdict import AUDITS
from flows.common import (
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
from flows.tracking import stage_run

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


def _certificate(split_hash: str) -> str:
    cert = make_certificate(read_json(REPORT_DIR / "decouple.json"),
                            read_json(REPORT_DIR / "finetune.json"), split_hash,
                            file_sha256(MODEL_DIR / "unlearned.pt"))
    rows = [[k, html.escape(str(cert[k]))] for k in
            ("covers", "epsilon", "delta", "mechanism", "relation", "sigma", "model_sha256")]
    return f"<p>{html.escape(cert['statement'])}</p>" + table(["", "certificate"], rows)


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
    split_hash = read_json(SPLIT_DIR / "summary.json")["hashes"]["forget"]
    quality = [[k, *("—" if metrics[m].get(k) is None else f"{metrics[m][k]:.3f}"
                     for m in models)]
               for k in ("forget_psnr", "retain_psnr", "test_psnr", "forget_ssim", "trigger_psnr",
                         "retrain_gap")]
    cost = "no model was retrained to compare with" if metrics.get("cost_ratio") is None else \
        f"{metrics['cost_ratio']:.3f}"
    page = render_page(
        f"Unlearning report: {params.unlearn.method} on {params.data.dataset}",
        [("Audit", _audit_table(audit, audit.get("verdict", {}))),
         ("Quality", table(["metric", *models], quality)
          + f"<p>cost ratio (unlearning / retraining compute): {cost}</p>"),
         ("Certificate", _certificate(split_hash)),
         ("Outputs", _grids(models, data)),
         ("Per-sample losses", "<p>forget vs retain vs held-out; after unlearning the forget "
          "curve should sit where the retrained model puts it.</p>"
          + img_tag(histogram_png(losses), "loss histograms"))],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    with stage_run("report", params, ("unlearn",), {"forget_split_hash": split_hash}):
        mlflow.log_artifact(str(out))
    return out

