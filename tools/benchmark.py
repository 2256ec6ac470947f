"""`make benchmark`: every method, plus doing nothing, x seeds x scenarios, through the same
building blocks as the pipeline: a Prefect flow, one Ray Train job per scenario and seed
(`benchmark.parallel_jobs` at once), MLflow runs grouped under one parent run.

Writes reports/benchmark.json (DVC metrics), reports/benchmark.md and reports/benchmark.png.

    python -m tools.benchmark [--dataset cifar10 --data DIR] [--seeds 0,1] [--scenarios class]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import mlflow
import ray
import typer
from mlflow.entities import Metric
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from components.benchmark import summarize
from components.benchmark_report import check_bar, plot, to_markdown, verdict_agreement
from components.metrics import GAP_TERMS
from components.params import Params, ParamsError, merge_tree, override
from components.splits import whole_class_share
from components.verdict import audit_verdict
from flows.ops.cli import fail
from flows.runtime.common import (
    REPORT_DIR,
    StageError,
    draw_splits,
    eval_images,
    eval_splits,
    job_sets,
    load_sets,
    model_shape,
    read_json,
    run_stage,
    stage_flow,
    stage_params,
    write_json,
)
from flows.runtime.jobs import connect, run_job
from flows.runtime.progress import Steps, progress_bar
from flows.runtime.tracking import client, flatten, log_figures, setup

KEYS = [*GAP_TERMS, "forget_ssim", "retain_ssim", "test_ssim", "trigger_ssim", "mia_efficacy",
        "retrain_gap", "cost_ratio", "cost_ratio_grads", "unlearn_seconds", "audit_passed",
        "audit_passed_free"]
MIA_VISIBLE = 0.6  # the memorize scenario is only informative if the original's MIA AUC is above
# the running flow's progress bar: the cases run in the flow's thread pool and report their own
# start and end (Prefect records a task's parameters, so the bar cannot travel as one)
_steps: Steps | None = None


def scenario_params(base: Params, name: str, seed: int, cpus: float) -> Params:
    """The params of one case: the scenario's overrides merged over params.yaml."""
    update = merge_tree(base.benchmark.scenarios[name],
                        {"seed": seed, "ray": {"cpus_per_worker": cpus}})
    try:
        return override(base, update)
    except ParamsError as exc:
        raise ParamsError(f"benchmark scenario '{name}': {exc}") from None


@task(name="benchmark-case", cache_policy=NO_CACHE)
def run_benchmark_case(name: str, params: Params, parent_id: str, experiment_id: str) -> dict:
    """One scenario and seed as one Ray Train job, logged to a child run of the benchmark."""
    label = f"{name}/seed {params.seed}"
    if _steps:
        _steps.start(label)
    sets = load_sets(params)
    splits = draw_splits(params, sets)
    chosen = eval_splits(splits, params.audit.max_samples, params.seed)
    mlflow_client = client()
    run = mlflow_client.create_run(experiment_id, run_name=f"{name}-seed{params.seed}", tags={
        "mlflow.parentRunId": parent_id, "scenario": name, "seed": str(params.seed)})
    train_sets = job_sets(sets, train=[splits["retain"], splits["forget"]],
                          retain=[splits["retain"]], forget=[splits["forget"]],
                          heldout=[splits["heldout"]])
    share = whole_class_share(splits["forget"], splits["retain"])
    info, _ = run_job("benchmark", f"bench-{name}-s{params.seed}", params, model_shape(sets),
                      train_sets, run.info.run_id, eval=eval_images(chosen, sets),
                      methods=params.benchmark.methods)
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run.info.run_id, metrics=[
        Metric(f"{row}.{key}", float(value), now, 0)
        for row, figures in info.items() if isinstance(figures, dict)
        for key, value in figures.items()])
    mlflow_client.set_terminated(run.info.run_id)
    if _steps:
        _steps.done(label)
    return {**info, "whole_class_share": share}


@stage_flow("benchmark")
def benchmark(dataset: str | None = None, data: str | None = None, seeds: list[int] | None = None,
              scenarios: list[str] | None = None, methods: list[str] | None = None,
              out: str = "benchmark") -> dict:
    update: dict = {"data": {k: v for k, v in (("dataset", dataset), ("path", data)) if v}}
    if methods:
        update["benchmark"] = {"methods": methods}
    base = override(stage_params(), update)
    seeds = seeds or base.benchmark.seeds
    names = scenarios or list(base.benchmark.scenarios)
    unknown = set(names) - set(base.benchmark.scenarios)
    if unknown:
        raise ParamsError(f"unknown benchmark scenario(s) {sorted(unknown)} "
                          f"(known: {', '.join(base.benchmark.scenarios)})")
    connect(base)
    cpus = max(1.0, ray.cluster_resources().get("CPU", 1) // base.benchmark.parallel_jobs)
    cases = {(n, s): scenario_params(base, n, s, cpus) for n in names for s in seeds}
    t0 = time.perf_counter()
    experiment_id = setup(base)
    with mlflow.start_run(experiment_id=experiment_id, run_name="benchmark",
                          tags={"stage": "benchmark", "dataset": base.data.dataset}) as parent:
        mlflow.log_params({"seeds": str(seeds), "scenarios": str(names),
                           **flatten(base.benchmark.scenarios, "scenario.")})
        global _steps
        with progress_bar(out, len(cases)) as _steps:
            try:
                futures = {key: run_benchmark_case.submit(key[0], p, parent.info.run_id,
                                                          experiment_id)
                           for key, p in cases.items()}
                results = {key: f.result() for key, f in futures.items()}
            finally:
                _steps = None
        # every case's figures, for readings the summary cannot give (per-seed verdicts)
        write_json(REPORT_DIR / f"{out}_cases.json",
                   {f"{n}/{s}": case for (n, s), case in results.items()})
        report, paths = write_report(base, seeds, names, results, out,
                                     time.perf_counter() - t0)
        for name in names:
            for row, figures in report["scenarios"][name]["methods"].items():
                log_figures(f"{name}.{row}", {k: v["mean"] for k, v in figures.items()})
        for path in paths.values():
            mlflow.log_artifact(str(path))
    print(paths["md"].read_text())
    print(f"[benchmark] {len(cases)} cases in {report['wall_seconds'] / 60:.1f} min")
    return report


def write_report(base: Params, seeds: list[int], names: list[str],
                 results: dict[tuple[str, int], dict], out: str, seconds: float
                 ) -> tuple[dict, dict[str, Path]]:
    """reports/<out>.{json,md,png} from the cases' figures."""
    report = build_report(base, seeds, names, results)
    report["wall_seconds"] = seconds
    paths = {ext: REPORT_DIR / f"{out}.{ext}" for ext in ("json", "md", "png")}
    write_json(paths["json"], report)
    paths["md"].write_text(to_markdown(report))
    plot(report, paths["png"])
    return report, paths


def rebuild(out: str) -> None:
    """Write reports/<out>.* again from reports/<out>_cases.json, running nothing: a new
    reading (a verdict, a column) of figures that took an hour to measure."""
    cases = read_json(REPORT_DIR / f"{out}_cases.json")
    results = {(key.split("/")[0], int(key.split("/")[1])): case for key, case in cases.items()}
    old = read_json(REPORT_DIR / f"{out}.json")
    first = next(iter(results.values()))
    methods = [r for r, v in first.items()
               if isinstance(v, dict) and r not in ("original", "reference")]
    base = override(stage_params(), {"data": {"dataset": old["dataset"]},
                                     "benchmark": {"methods": methods}})
    names = list(dict.fromkeys(n for n, _ in results))
    _, paths = write_report(base, old["seeds"], names, results, out, old["wall_seconds"])
    print(paths["md"].read_text())


def judge_cases(base: Params, results: dict[tuple[str, int], dict]) -> list[dict]:
    """Judge each row of each case twice, as the pipeline's audit stage would: against the
    case's retrained reference (audit_passed: 1 or 0, so that its mean over seeds is the pass
    rate) and without it (audit_passed_free).

    Returns:
        One record per (scenario, seed, row): both verdicts and the checks each failed
        (components.benchmark_report.verdict_agreement reads them).
    """
    records = []
    for (name, seed), case in results.items():
        params = scenario_params(base, name, seed, 1.0)
        if "whole_class_share" not in case:  # cases written before it was recorded
            splits = draw_splits(params, load_sets(params))
            case["whole_class_share"] = whole_class_share(splits["forget"], splits["retain"])
        # as the audit stage gives it: has a forgotten class moved since the original
        moved = {"original_ood_auroc": case["original"]["ood_auroc"],
                 "whole_class_share": case["whole_class_share"]}
        for row, figures in case.items():
            if not isinstance(figures, dict) or row == "reference":
                continue
            against = audit_verdict(figures, case["reference"], params.audit)
            free = audit_verdict({**figures, **moved}, None, params.audit)
            figures["audit_passed"] = float(against["passed"])
            figures["audit_passed_free"] = float(free["passed"])
            records.append({"scenario": name, "seed": seed, "row": row,
                            "retrained": against["passed"], "reference_free": free["passed"],
                            "failed_retrained": against["failed"],
                            "failed_reference_free": free["failed"]})
    return records


def build_report(base: Params, seeds: list[int], names: list[str],
                 results: dict[tuple[str, int], dict]) -> dict:
    """reports/benchmark.json: per scenario, per row, mean and std over seeds, and the bar."""
    rows = ["original", *base.benchmark.methods, "reference"]
    report = {"dataset": base.data.dataset, "seeds": seeds, "scenarios": {},
              "verdicts": verdict_agreement(judge_cases(base, results))}
    for name in names:
        cases = [results[(name, s)] for s in seeds]
        block = {"methods": summarize(cases, rows, KEYS),
                 "retrain_seconds": sum(c["retrain_seconds"] for c in cases) / len(cases)}
        if {"decouple", "retrain"} <= set(base.benchmark.methods):
            block["bar"] = check_bar(name, block["methods"])
        if name == "memorize":
            mia = block["methods"]["original"]["mia_auc"]["mean"]
            block["notes"] = [
                f"The original's MIA AUC on the forget set is {mia:.3f} "
                + (f"(≥ {MIA_VISIBLE}: membership is visible, the MIA audit can tell methods "
                   "apart)." if mia >= MIA_VISIBLE else
                   f"(< {MIA_VISIBLE}: membership is NOT visible; the MIA column says little).")]
        report["scenarios"][name] = block
    return report


def benchmark_command(
    dataset: Annotated[str | None, typer.Option(
        help="data.dataset for every scenario (e.g. cifar10)")] = None,
    data: Annotated[str | None, typer.Option(help="data.path of that dataset")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="comma-separated seeds (default: benchmark.seeds)")] = None,
    scenarios: Annotated[str | None, typer.Option(
        help="comma-separated scenarios (default: all)")] = None,
    methods: Annotated[str | None, typer.Option(
        help="comma-separated methods or benchmark.variants (default: benchmark.methods)")
    ] = None,
    out: Annotated[str, typer.Option(help="report name: reports/<out>.{json,md,png}")
                   ] = "benchmark",
    rebuild_only: Annotated[bool, typer.Option(
        "--rebuild", help="write the report again from reports/<out>_cases.json; run nothing")
    ] = False,
) -> None:
    """Every method, plus doing nothing, x seeds x scenarios -> reports/<out>.{json,md,png}."""
    if rebuild_only:
        try:
            rebuild(out)
        except (ParamsError, StageError) as exc:
            fail(str(exc))
        return
    try:
        seed_list = [int(s) for s in seeds.split(",")] if seeds else None
    except ValueError:
        fail(f"--seeds takes integers, got {seeds!r}")
    try:
        workers = stage_params().benchmark.parallel_jobs
    except ParamsError as exc:
        fail(str(exc))
    flow = benchmark.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
    run_stage(flow, dataset=dataset, data=data, seeds=seed_list, scenarios=_csv(scenarios),
              methods=_csv(methods), out=out)


def _csv(text: str | None) -> list[str] | None:
    return text.split(",") if text else None


def main() -> None:
    typer.run(benchmark_command)


if __name__ == "__main__":
    main()
