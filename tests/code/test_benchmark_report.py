"""Reading a benchmark: the bar, the table and the plot, on figures whose answer is known."""

import pytest

from components.benchmark import summarize
from components.benchmark_report import check_bar, plot, to_markdown


def row(gap, cost=0.05, asr=0.0, **extra):
    return {"retrain_gap": gap, "cost_ratio": cost, "backdoor_asr": asr, "mia_auc": 0.5,
            "ood_auroc": 0.6, "forget_psnr": 20.0, "retain_psnr": 21.0, "test_psnr": 21.0,
            **extra}


def case(decouple_gap, decouple_cost=0.05):
    return {"original": row(0.2, 0.0, 0.9), "decouple": row(decouple_gap, decouple_cost),
            "neggrad_plus": row(0.04, 0.03), "retrain": row(0.01, 1.0),
            "reference": row(0.0, 0.0)}


def summary(cases):
    return summarize(cases, list(cases[0]), ["retrain_gap", "cost_ratio", "backdoor_asr",
                                             "mia_auc", "ood_auroc", "forget_psnr",
                                             "retain_psnr", "test_psnr"])


def test_summarize_means_and_stds_over_seeds():
    s = summary([case(0.01), case(0.03)])
    assert s["decouple"]["retrain_gap"] == pytest.approx({"mean": 0.02, "std": 0.01})


def test_bar_passes_and_fails_for_the_right_reasons():
    good = check_bar("class", summary([case(0.02)]))
    assert good["best_other"] == "neggrad_plus" and good["noise_floor"] == pytest.approx(0.01)
    assert all(c["passed"] for c in good["checks"].values())
    bad = check_bar("class", summary([case(0.06, decouple_cost=0.3)]))["checks"]
    assert not bad["gap_vs_best_other"]["passed"] and not bad["cost"]["passed"]
    assert bad["gap_vs_original"]["passed"] and bad["backdoor"]["passed"]
    assert "backdoor" not in check_bar("memorize", summary([case(0.02)]))["checks"]


def test_markdown_bolds_the_best_and_states_the_bar(tmp_path):
    cases = [case(0.02)]
    for name, passed in (("decouple", 1.0), ("neggrad_plus", 0.0), ("original", 0.0)):
        cases[0][name]["audit_passed"] = passed  # judged rows; the reference row is not
    methods = summarize(cases, list(cases[0]), ["retrain_gap", "cost_ratio", "audit_passed"])
    report = {"dataset": "toy", "seeds": [0], "scenarios": {"class": {
        "methods": methods, "bar": check_bar("class", summary([case(0.02)]))}}}
    text = to_markdown(report)
    assert "| decouple | **0.020 ± 0.000** | 0.050 ± 0.000 | **1.000 ± 0.000** |" in text
    assert "- PASS cost: 0.050 <= 0.1" in text
    plot(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_bar_without_other_methods_checks_what_it_can():
    rows = summary([{k: v for k, v in case(0.02).items() if k != "neggrad_plus"}])
    bar = check_bar("class", rows)
    assert bar["best_other"] is None and "gap_vs_best_other" not in bar["checks"]
    assert bar["checks"]["gap_vs_original"]["passed"] and bar["checks"]["backdoor"]["passed"]


def test_verdict_agreement_counts_and_names_the_unsafe_passes():
    from components.benchmark_report import verdict_agreement

    def rec(row, ref, free, failed=()):
        return {"scenario": "class", "seed": 0, "row": row, "retrained": ref,
                "reference_free": free, "failed_retrained": list(failed),
                "failed_reference_free": []}

    records = [rec("decouple", True, True), rec("li2024", False, False, ["ood_auroc"]),
               rec("salun", False, True, ["ood_auroc"]),
               rec("finetune", False, True, ["backdoor_asr", "trigger_psnr"])]
    out = verdict_agreement(records)
    assert out["table"] == {"pass/pass": 1, "pass/fail": 0, "fail/pass": 2, "fail/fail": 1}
    assert out["agreement"] == 0.5 and [r["row"] for r in out["unsafe"]] == ["finetune"]
    assert [r["row"] for r in out["disagreements"]] == ["salun", "finetune"]
