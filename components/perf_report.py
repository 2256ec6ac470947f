"""The figures of `make bench-perf` (tools/perf.py): spreads over repeats, where a pipeline
job's time goes, the Markdown table and the scaling plot. Pure functions of measured numbers.
"""

from __future__ import annotations

import statistics
from pathlib import Path

# a pipeline job's wall time, from the driver's call to its return, in consecutive parts
JOB_PARTS = ("spinup_s", "payload_s", "compute_s", "log_s", "checkpoint_s", "teardown_s")


def spread(values: list[float]) -> dict[str, float | list[float]]:
    """Median, min and max of repeated measurements (these machines are noisy)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": list(values)}


def job_breakdown(call_start: float, call_end: float, info: dict) -> dict[str, float]:
    """Split one Ray Train job's wall time into its parts.

    Args:
        call_start, call_end: wall-clock time (time.time()) around the driver's run_job call.
        info: the job's figures (flows.runtime.worker.train_loop's timing entries).

    Returns:
        JOB_PARTS -> seconds. spinup: Prefect task, object-store put, Ray Train controller,
        worker process and process group until the worker's first line; payload: the
        worker's fetch of the data; compute: the loop (building pairs included) minus the
        logging and checkpoint writes it made; teardown: the final report, checkpoint read
        back and shutdown until the driver has the weights.
    """
    log_s, ckpt_s = info["log_seconds"], info["checkpoint_seconds"]
    return {
        "spinup_s": info["worker_start"] - call_start,
        "payload_s": info["payload_seconds"],
        "compute_s": info["job_seconds"] - log_s - ckpt_s,
        "log_s": log_s,
        "checkpoint_s": ckpt_s,
        "teardown_s": call_end - info["worker_end"],
    }


def add_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    """The sum of several jobs' breakdowns, part by part."""
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def to_markdown(report: dict) -> str:
    """The report as the Markdown that `make bench-perf` prints and writes."""
    m = report["machine"]
    o, c = report["overhead"], report["cost"]
    modes = report["modes"]
    starts = "Prefect" if report["job_mode"] == "local" else "Ray and Prefect"
    lines = [
        "# Performance (make bench-perf)", "",
        f"Machine: {m['cpus']} CPU cores, {m['device']}, torch {m['torch']}; "
        f"{report['repeats']} repeats, median [min, max]. The default unlearning job through "
        f"the pipeline, its jobs run `ray.job_mode: {report['job_mode']}` (auto's choice on "
        "one machine); the other mode beside it.", "",
        "| figure | value | target |", "|---|---|---|",
        f"| overhead_ratio (pipeline / plain PyTorch, same job) | {_fmt(report['overhead_ratio'])}"
        " | ≤ 1.3 (aim 1.1) |",
        f"| fixed_overhead_s per stage (pipeline wall − loop compute) | "
        f"{_fmt(report['fixed_overhead_s'])} | ≤ 2 |",
        f"| cost_ratio (unlearning / retraining, pipeline wall time) | {_fmt(report['cost_ratio'])}"
        " | ≤ 0.15 (aim 0.10) |",
        f"| cost_ratio_grads (the same in sample-gradient evaluations, deterministic) | "
        f"{report['cost_ratio_grads']:.3f} | |",
        f"| cost_ratio_plain (the same, plain loops) | {_fmt(report['cost_ratio_plain'])} | |",
        f"| overhead_ratio_retrain (retraining: pipeline / plain) | "
        f"{_fmt(report['overhead_ratio_retrain'])} | |",
        f"| unlearning through the pipeline (s) | {_fmt(o['pipeline_s'])} | |",
        f"| unlearning as a plain loop (s) | {_fmt(o['plain_s'])} | |",
        f"| retraining through the pipeline (s) | {_fmt(c['retrain_pipeline_s'])} | |",
        f"| retraining as a plain loop (s) | {_fmt(c['retrain_plain_s'])} | |",
        f"| overhead_ratio_cold (with the start of {starts}) | "
        f"{_fmt(report['overhead_ratio_cold'])} | |",
        f"| Ray start / Prefect start, once per process (s) | {o['ray_start_s']:.1f} / "
        f"{o['prefect_start_s']:.1f} | |",
        f"| training throughput, plain loop (images/s) | {report['train_images_per_s']:.0f} | |",
        f"| peak RSS driver / worker (MiB) | {report['memory']['driver_max_rss_mb']:.0f} / "
        f"{report['memory']['worker_max_rss_mb']:.0f} | |",
        "", "## The unlearning job's two ways (`ray.job_mode`)", "",
        "| figure | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes),
    ]
    for key, label in (("pipeline_s", "through the pipeline (s)"),
                       ("overhead_ratio", "overhead_ratio"),
                       ("fixed_overhead_s", "fixed_overhead_s per stage"),
                       ("cost_ratio", "cost_ratio"),
                       ("overhead_ratio_cold", "overhead_ratio_cold")):
        lines.append(f"| {label} | " + " | ".join(_fmt(v[key]) for v in modes.values()) + " |")
    lines += ["", "## Where the pipeline's unlearning time goes (both jobs, median seconds)", "",
              "| part | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for part in o["breakdown"]:
        lines.append(f"| {part} | " + " | ".join(
            f"{v['breakdown'][part]:.2f} ({v['breakdown'][part] / v['pipeline_s']['median']:.0%})"
            for v in modes.values()) + " |")
    lines += ["", "## Scaling with the forget set (plain loops, seconds)", "",
              "| forget fraction | forget samples | unlearn_s | retrain_s | ratio |",
              "|---|---|---|---|---|"]
    for row in report["scaling"]:
        lines.append(f"| {row['forget_fraction']:.0%} | {row['forget_samples']} | "
                     f"{row['unlearn_s']:.1f} | {row['retrain_s']:.1f} | "
                     f"{row['unlearn_s'] / row['retrain_s']:.3f} |")
    return "\n".join(lines) + "\n"


def _fmt(figure: dict) -> str:
    return f"{figure['median']:.3g} [{figure['min']:.3g}, {figure['max']:.3g}]"


def plot_scaling(report: dict, path: Path) -> None:
    """Unlearning and retraining time against the forget fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["scaling"]
    x = [r["forget_fraction"] * 100 for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(x, [r["unlearn_s"] for r in rows], "o-", color="tab:red", label="unlearn (decouple)")
    ax.plot(x, [r["retrain_s"] for r in rows], "s-", color="tab:blue", label="retrain")
    ax.set_xlabel("forget set (% of the training data)")
    ax.set_ylabel("wall time of the loop (s)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
