"""The demo's closing table (from reports/metrics.json) and where to look next."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.runtime.common import REPORT_DIR, StageError, read_json

ROWS = [
    ("forget PSNR (dB)", "forget_psnr", "{:.2f}"), ("retain PSNR (dB)", "retain_psnr", "{:.2f}"),
    ("test PSNR (dB)", "test_psnr", "{:.2f}"), ("forget SSIM", "forget_ssim", "{:.3f}"),
    ("retain SSIM", "retain_ssim", "{:.3f}"), ("test SSIM", "test_ssim", "{:.3f}"),
    ("MIA AUC", "mia_auc", "{:.3f}"), ("MIA efficacy", "mia_efficacy", "{:.3f}"),
    ("OOD AUROC", "ood_auroc", "{:.3f}"),
    ("backdoor ASR", "backdoor_asr", "{:.3f}"),
    ("trigger PSNR (dB)", "trigger_psnr", "{:.2f}"), ("retrain gap", "retrain_gap", "{:.3f}"),
]  # fmt: skip
COLUMNS = ("original", "decoupled", "unlearned", "retrained")
DEMO_LOG = Path("logs/demo.log")  # `make demo` runs its stages with `flows.stack --log` there


def print_summary(metrics: dict, console: Console | None = None) -> None:
    """Print the metrics table of the three models (plus the decoupled intermediate)."""
    console = console or Console()
    columns = [c for c in COLUMNS if c in metrics]  # no retrained column without a reference
    against = "vs retraining" if "retrained" in metrics else "(reference-free audit)"
    table = Table(title=f"unlearning with '{metrics.get('method', '?')}' {against}")
    table.add_column("metric")
    for col in columns:
        table.add_column(col, justify="right")
    for label, key, fmt in ROWS:
        table.add_row(label, *("—" if metrics[c].get(key) is None else
                               fmt.format(metrics[c][key]) for c in columns))
    console.print(table)
    if metrics.get("cost_ratio") is None:
        console.print(f"unlearning compute: {metrics['unlearn_seconds']:.1f} s (no model was "
                      "retrained to compare it with)")
        return
    grads = metrics.get("cost_ratio_grads")
    if grads is not None:
        console.print(f"cost ratio in sample-gradient evaluations: {grads:.3f}")
    console.print(f"cost ratio (unlearning / retraining compute): {metrics['cost_ratio']:.3f}  "
                  f"({metrics['unlearn_seconds']:.1f} s vs {metrics['retrain_seconds']:.1f} s)")


def main() -> None:
    try:
        metrics = read_json(REPORT_DIR / "metrics.json")
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print_summary(metrics)
    if DEMO_LOG.exists():
        print(f"\nEvery stage's output (DVC, Prefect, Ray, MLflow): {DEMO_LOG}")
    print("\nNext:\n"
          "  dvc metrics show reports/metrics.json              # the figures, per DVC\n"
          "  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db   # runs + registry\n"
          "  dvc exp run -S forget.classes=[7] -S seed=11       # another experiment")


if __name__ == "__main__":
    main()
