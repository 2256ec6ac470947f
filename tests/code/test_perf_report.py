"""Reading `make bench-perf`: a job's wall time split into parts, spreads, the table, the plot."""

import pytest

from components.perf_report import add_parts, job_breakdown, plot_scaling, spread, to_markdown


def timing(start, compute=5.0, log=0.5, ckpt=1.0):
    return {"worker_start": start, "payload_seconds": 0.2, "job_seconds": compute + log + ckpt,
            "log_seconds": log, "checkpoint_seconds": ckpt, "worker_end": start + 8.0}


def test_job_parts_add_up_to_the_call_when_the_worker_runs_back_to_back():
    info = timing(start=115.0)
    parts = job_breakdown(100.0, 126.0, info)
    assert parts["spinup_s"] == pytest.approx(15.0) and parts["teardown_s"] == pytest.approx(3.0)
    assert parts["compute_s"] == pytest.approx(5.0)
    # the worker's 8 s = payload 0.2 + loop 6.5 + 1.3 s outside both (imports, final report)
    assert sum(parts.values()) == pytest.approx(26.0 - 1.3)
    both = add_parts([parts, job_breakdown(200.0, 230.0, timing(start=219.0))])
    assert both["spinup_s"] == pytest.approx(34.0) and both["log_s"] == pytest.approx(1.0)


def test_spread_reports_median_and_range():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0,
                                       "values": [3.0, 1.0, 2.0]}


def mode(pipeline, spinup):
    s = spread([1.0, 2.0, 3.0])
    return {"pipeline_s": spread([pipeline / 2, pipeline, pipeline * 1.5]), "overhead_ratio": s,
            "fixed_overhead_s": spread([0.5, 0.8, 1.1]), "cost_ratio": s,
            "overhead_ratio_cold": s, "breakdown": {"spinup_s": spinup, "compute_s": 5.0}}


def report():
    s = spread([1.0, 2.0, 3.0])
    modes = {"local": mode(8.0, 0.4), "workers": mode(20.0, 15.0)}
    return {
        "machine": {"cpus": 2, "device": "no GPU (CPU)", "torch": "2.13.0"}, "repeats": 3,
        "job_mode": "local", "modes": modes, "fixed_overhead_s": spread([0.5, 0.8, 1.1]),
        "overhead_ratio": s, "overhead_ratio_cold": s, "overhead_ratio_retrain": s,
        "cost_ratio": spread([0.2, 0.3, 0.4]), "cost_ratio_plain": s, "cost_ratio_grads": 0.0921,
        "overhead": {"plain_s": s, "pipeline_s": modes["local"]["pipeline_s"],
                     "ray_start_s": 6.0, "prefect_start_s": 10.0,
                     "breakdown": modes["local"]["breakdown"]},
        "cost": {"retrain_pipeline_s": s, "retrain_plain_s": s}, "train_images_per_s": 900.0,
        "memory": {"driver_max_rss_mb": 800.0, "worker_max_rss_mb": 700.0},
        "scaling": [{"forget_fraction": 0.01, "forget_samples": 540, "unlearn_s": 4.0,
                     "retrain_s": 80.0},
                    {"forget_fraction": 0.3, "forget_samples": 16200, "unlearn_s": 8.0,
                     "retrain_s": 56.0}],
    }


def test_markdown_quotes_the_figures_and_targets(tmp_path):
    text = to_markdown(report())
    assert "| overhead_ratio (pipeline / plain PyTorch, same job) | 2 [1, 3] | ≤ 1.3" in text
    assert "| fixed_overhead_s per stage (pipeline wall − loop compute) | 0.8 [0.5, 1.1] | ≤ 2 |" \
        in text
    assert "| cost_ratio_grads (the same in sample-gradient evaluations, deterministic) | 0.092 |" \
        in text
    # each mode's parts, with their share of that mode's median pipeline time
    assert "| spinup_s | 0.40 (5%) | 15.00 (75%) |" in text
    assert "| through the pipeline (s) | 8 [4, 12] | 20 [10, 30] |" in text
    assert "| 30% | 16200 | 8.0 | 56.0 | 0.143 |" in text
    plot_scaling(report(), tmp_path / "perf.png")
    assert (tmp_path / "perf.png").read_bytes()[:4] == b"\x89PNG"
