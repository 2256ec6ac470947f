"""Reading a benchmark: the bar `decouple` must clear, a Markdown table, a gap-vs-cost plot."""

from __future__ import annotations

from pathlib import Path

COLUMNS = ["retrain_gap", "cost_ratio_grads", "cost_ratio", "backdoor_asr", "trigger_psnr",
           "mia_auc", "mia_efficacy", "ood_auroc", "forget_psnr", "retain_psnr", "test_psnr",
           "audit_passed"]
# columns where lower is better; for the others, closer to the retrained reference is better
LOWER_IS_BETTER = {"retrain_gap", "cost_ratio", "cost_ratio_grads"}
HIGHER_IS_BETTER = {"audit_passed"}  # a share of seeds; the reference row has none
NOT_RANKED = {"original", "reference"}  # rows shown for reading, never "best"
COST_BAR = 0.10
ASR_MARGIN = 0.05


def _mean(summary: dict, row: str, key: str) -> float:
    return summary[row][key]["mean"]


def check_bar(scenario: str, summary: dict, method: str = "decouple") -> dict:
    """Does `method` clear the bar of the methods issue in this scenario?

    The noise floor is the retrain gap of a second retraining (the `retrain` row): two models
    retrained from scratch differ by that much.

    Returns:
        {"noise_floor", "best_other", "best_other_gap", "checks": {name: {"passed", "detail"}}};
        best_other is None, and its check left out, when no other method ran.
    """
    floor = _mean(summary, "retrain", "retrain_gap")
    others = {r: _mean(summary, r, "retrain_gap") for r in summary
              if r not in NOT_RANKED | {method, "retrain"}}
    best = min(others, key=others.get) if others else None  # a run of decouple + retrain only
    # the cost bar reads sample-gradient evaluations where measured: wall time swings with
    # the load of the shared machine (two cases run at once here)
    cost_key = "cost_ratio_grads" if "cost_ratio_grads" in summary[method] else "cost_ratio"
    gap, cost = _mean(summary, method, "retrain_gap"), _mean(summary, method, cost_key)
    original = _mean(summary, "original", "retrain_gap")
    checks = {}
    if best is not None:
        checks["gap_vs_best_other"] = (gap <= others[best] + floor,
                                       f"{gap:.4f} <= {others[best]:.4f} ({best}) + {floor:.4f}")
    checks["gap_vs_original"] = (gap < original - floor,
                                 f"{gap:.4f} < {original:.4f} - {floor:.4f}")
    checks["cost"] = (cost <= COST_BAR, f"{cost:.3f} <= {COST_BAR} ({cost_key})")
    if scenario in ("class", "sample"):  # the scenarios with a backdoor planted
        asr, ref = _mean(summary, method, "backdoor_asr"), _mean(summary, "retrain", "backdoor_asr")
        checks["backdoor"] = (asr <= ref + ASR_MARGIN, f"{asr:.3f} <= {ref:.3f} + {ASR_MARGIN}")
    if "audit_passed" in summary[method]:  # the pipeline's verdict, trigger fidelity in
        rate = _mean(summary, method, "audit_passed")
        checks["audit"] = (rate == 1.0, f"passed in {rate:.0%} of the seeds")
    return {"noise_floor": floor, "best_other": best, "best_other_gap": others.get(best),
            "checks": {k: {"passed": bool(ok), "detail": d} for k, (ok, d) in checks.items()}}


# a reference-free pass is unsafe where the reference-based audit failed on these: the model
# keeps the backdoor, or answers the trigger unlike a retrained model
UNSAFE = ("backdoor_asr", "trigger_psnr")


def verdict_agreement(records: list[dict]) -> dict:
    """How far the reference-free verdict can be trusted: a 2x2 table of the two verdicts
    over every judged (scenario, seed, row), their agreement, the disagreements, and the
    unsafe ones (reference-free passed, while against the reference the backdoor or the
    trigger fidelity failed).

    Args:
        records: tools.benchmark.judge_cases's records.

    Returns:
        {"table": {"pass/pass", "pass/fail", "fail/pass", "fail/fail"} (retrained/free),
         "agreement", "cases", "disagreements": [...], "unsafe": [...]}.
    """
    table = {f"{a}/{b}": 0 for a in ("pass", "fail") for b in ("pass", "fail")}
    disagree, unsafe = [], []
    for r in records:
        table[f"{'pass' if r['retrained'] else 'fail'}/"
              f"{'pass' if r['reference_free'] else 'fail'}"] += 1
        if r["retrained"] != r["reference_free"]:
            disagree.append(r)
            if r["reference_free"] and set(r["failed_retrained"]) & set(UNSAFE):
                unsafe.append(r)
    n = len(records)
    return {"table": table, "cases": n, "agreement": (n - len(disagree)) / n if n else None,
            "disagreements": disagree, "unsafe": unsafe}


def agreement_markdown(verdicts: dict) -> list[str]:
    """The verdict-agreement section of benchmark.md."""
    t = verdicts["table"]
    lines = ["## Reference-free verdict vs the retrained reference", "",
             "Every (scenario, seed, method) judged twice, as the audit stage would: against "
             "the retrained reference, and reference-free (held-out data and the model's own "
             "figures only; components/verdict.py).", "",
             "| | reference-free passes | reference-free fails |", "|---|---|---|",
             f"| retrained-reference passes | {t['pass/pass']} | {t['pass/fail']} |",
             f"| retrained-reference fails | {t['fail/pass']} | {t['fail/fail']} |", "",
             f"Agreement: {verdicts['agreement']:.1%} of {verdicts['cases']} cases. Unsafe "
             f"passes (reference-free passes a model whose backdoor or trigger fidelity "
             f"fails against the reference): {len(verdicts['unsafe'])}.", ""]
    if verdicts["disagreements"]:
        lines += ["| scenario | seed | method | against the reference | reference-free |",
                  "|---|---|---|---|---|"]
        for r in verdicts["disagreements"]:
            cells = ["passed" if r[k] else "failed: " + ", ".join(r[f"failed_{k}"])
                     for k in ("retrained", "reference_free")]
            lines.append(f"| {r['scenario']} | {r['seed']} | {r['row']} | {cells[0]} | "
                         f"{cells[1]} |")
        lines.append("")
    return lines


def _best(summary: dict, key: str) -> str:
    """The unlearning method with the best value of `key` (retraining itself is not ranked)."""
    rows = [r for r in summary if r not in NOT_RANKED | {"retrain"} and key in summary[r]]
    if key in LOWER_IS_BETTER:
        return min(rows, key=lambda r: _mean(summary, r, key))
    if key in HIGHER_IS_BETTER:
        return max(rows, key=lambda r: _mean(summary, r, key))
    target = _mean(summary, "reference", key)
    return min(rows, key=lambda r: abs(_mean(summary, r, key) - target))


def to_markdown(report: dict) -> str:
    """The benchmark as Markdown: one table per scenario, methods as rows, best value bold
    (lowest gap and cost; otherwise closest to the retrained reference), then the bar."""
    lines = [f"# Benchmark: {report['dataset']}, seeds {report['seeds']}", "",
             "Mean ± std over seeds. `reference`: the model retrained without the forget set "
             "that every gap is measured to; `retrain`: a second retraining (another seed), "
             "whose gap is the noise floor. Bold: lowest gap / cost, otherwise closest to the "
             "reference.", ""]
    for scenario, block in report["scenarios"].items():
        summary = block["methods"]
        columns = [k for k in COLUMNS if any(k in f for f in summary.values())]
        best = {k: _best(summary, k) for k in columns}
        lines += [f"## {scenario}", "", "| method | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for row, figures in summary.items():
            cells = []
            for key in columns:
                if key not in figures:
                    cells.append("")
                    continue
                text = f"{figures[key]['mean']:.3f} ± {figures[key]['std']:.3f}"
                cells.append(f"**{text}**" if best[key] == row else text)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        bar = block.get("bar")
        if bar:
            lines += ["", f"Noise floor (retrain gap of a second retraining): "
                      f"{bar['noise_floor']:.4f}. Bar for decouple:", ""]
            lines += [f"- {'PASS' if c['passed'] else 'FAIL'} {name}: {c['detail']}"
                      for name, c in bar["checks"].items()]
        for note in block.get("notes", []):
            lines += ["", note]
        lines.append("")
    if report.get("verdicts"):
        lines += agreement_markdown(report["verdicts"])
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Retrain gap vs cost ratio per method, one panel per scenario, error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(report["scenarios"])
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.5 * len(scenarios), 4.5),
                             squeeze=False)
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        summary = report["scenarios"][scenario]["methods"]
        for row, figures in summary.items():
            cost = "cost_ratio_grads" if "cost_ratio_grads" in figures else "cost_ratio"
            if row == "reference" or cost not in figures:
                continue
            x, y = figures[cost], figures["retrain_gap"]
            ax.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="o", capsize=3,
                        color="tab:red" if row == "decouple" else "tab:blue")
            ax.annotate(row, (x["mean"], y["mean"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set_xlabel("cost ratio (sample-gradient evaluations, unlearning / retraining)")
        ax.set_ylabel("retrain gap (lower is closer to retraining)")
        ax.set_title(scenario)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
