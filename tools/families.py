"""`make families`: every model family through the whole pipeline on an ImageFolder dataset.

    python -m tools.families [--names mae,diffusion] [--set forget.classes=[8]] [--out NAME]

1. Exports `families.dataset` into ImageNet's folder layout at `families.path` (once; reused).
2. Clones HEAD into `.families/repo`, so the workspace and its outputs stay as they are; the
   runs log to the workspace's MLflow (each family registers as `imagefolder-<family>`) and
   share one DVC cache, `.families/cache` (unchanged stages are restored, not rerun).
3. Per family, exactly what a user types:
   `dvc exp run -S model.family=<f> -S data.dataset=imagefolder -S data.path=<export> ...`
   plus `families.set` (`model.task: inpaint` and the CPU-sized knobs), logged to
   `.families/<f>.log`.
4. Writes `reports/families.{json,md}`: original -> unlearned PSNR / SSIM / FD / cosine on
   the forget and retain sets, the retrained reference, the audit, and the check asked of
   every family: the forget-set quality drops by at least `families.min_forget_drop_db`
   while the retain set loses at most `families.max_retain_drop_db`.
A family that fails is recorded with its error; the others still run; exit 1 if any failed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from components.data import DataError
from components.export import export_splits
from components.params import FamiliesParams, Params, ParamsError, override
from flows.ops.cycle import clone_env, sh
from flows.runtime.common import REPORT_DIR, StageError, read_json, stage_params, write_json
from flows.runtime.progress import progress_bar

WORKDIR = Path(".families")
SETS = ("forget", "retain")


def export_dataset(cfg: FamiliesParams, root: Path) -> Path:
    """The ImageFolder export of cfg.dataset: made the first time, reused while the export
    settings stay the same (`export.json`, written last, records them)."""
    out = (root / cfg.path).resolve()
    spec = {"dataset": cfg.dataset, "source_path": cfg.source_path,
            "per_class": cfg.per_class, "val_per_class": cfg.val_per_class}
    marker = out / "export.json"
    if marker.exists() and read_json(marker) == spec:
        return out
    if out.exists():
        shutil.rmtree(out)  # other settings, or a half-written export from an interrupted run
    written = export_splits(cfg.dataset, cfg.source_path, out, cfg.per_class,
                            cfg.val_per_class)
    print(f"[families] exported {written} images to {out}", flush=True)
    write_json(marker, spec)
    return out


def settings(cfg: FamiliesParams, family: str, data: Path) -> dict[str, Any]:
    """Dotted params key -> value for one family's run."""
    return {"model.family": family, "data.dataset": "imagefolder", "data.path": str(data),
            "mlflow.model_name": f"imagefolder-{family}", **cfg.set}


def overrides(cfg: FamiliesParams, family: str, data: Path) -> list[str]:
    """The `-S key=value` arguments of one family's `dvc exp run` (strings as typed, other
    values as JSON, which DVC reads as YAML)."""
    return [arg for k, v in settings(cfg, family, data).items()
            for arg in ("-S", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]


def check_settings(params: Params, family: str, data: Path) -> None:
    """Validate one family's params before any run starts: a typo in families.set fails at
    once, naming the key, instead of in each family's `prepare`."""
    tree: dict[str, Any] = {}
    for key, value in settings(params.families, family, data).items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    override(params, tree)


def judge(metrics: dict[str, Any], cfg: FamiliesParams) -> dict[str, Any]:
    """Forget-set quality drop and retain-set change (dB of PSNR, unlearned vs original)."""
    orig, unl, ref = metrics["original"], metrics["unlearned"], metrics["retrained"]
    forget_drop = orig["forget_psnr"] - unl["forget_psnr"]
    retain_drop = orig["retain_psnr"] - unl["retain_psnr"]
    return {"forget_drop_db": forget_drop, "retain_drop_db": retain_drop,
            "retrained_forget_drop_db": orig["forget_psnr"] - ref["forget_psnr"],
            "passed": forget_drop >= cfg.min_forget_drop_db
            and retain_drop <= cfg.max_retain_drop_db}


def run_family(ws: Path, family: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One `dvc exp run` in the clone; its figures, or its error."""
    log = WORKDIR.resolve() / f"{family}.log"
    log.unlink(missing_ok=True)
    print(f"[families] {family}: dvc exp run {' '.join(args)} (log: {log})", flush=True)
    t0 = time.perf_counter()
    try:
        sh(["dvc", "exp", "run", "-n", f"{family}-imagefolder", *args], ws, env, log)
    except StageError as exc:
        return {"family": family, "error": str(exc).splitlines()[0],
                "seconds": time.perf_counter() - t0}
    metrics = read_json(ws / REPORT_DIR / "metrics.json")
    audit = read_json(ws / REPORT_DIR / "audit.json")["verdict"]
    return {"family": family, "seconds": time.perf_counter() - t0, "metrics": metrics,
            "audit_passed": audit["passed"], "audit_failed": audit["failed"]}


def write_markdown(rows: list[dict[str, Any]], cfg: FamiliesParams, path: Path) -> None:
    lines = ["# Model families on an ImageFolder dataset (`make families`)", "",
             f"`{cfg.dataset}` exported to ImageNet's layout ({cfg.per_class} train / "
             f"{cfg.val_per_class} val images per class), `dvc exp run` per family with "
             f"`{json.dumps(cfg.set)}`. Check: forget PSNR drops ≥ {cfg.min_forget_drop_db} dB, "
             f"retain PSNR drops ≤ {cfg.max_retain_drop_db} dB (unlearned vs original).", "",
             "| family | set | PSNR orig → unl (retr) | SSIM orig → unl | FD orig → unl "
             "(retr) | cosine orig → unl | ASR orig → unl | audit | check | min |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['family']} | | failed: {row['error']} | | | | | | ✗ | "
                         f"{row['seconds'] / 60:.1f} |")
            continue
        m, j = row["metrics"], row["judge"]
        o, u, r = m["original"], m["unlearned"], m["retrained"]
        for s in SETS:
            lines.append(
                f"| {row['family']} | {s} | {o[f'{s}_psnr']:.2f} → {u[f'{s}_psnr']:.2f} "
                f"({r[f'{s}_psnr']:.2f}) | {o[f'{s}_ssim']:.3f} → {u[f'{s}_ssim']:.3f} | "
                f"{o[f'{s}_fd']:.3g} → {u[f'{s}_fd']:.3g} ({r[f'{s}_fd']:.3g}) | "
                f"{o[f'{s}_cosine']:.3f} → {u[f'{s}_cosine']:.3f} | "
                f"{o['backdoor_asr']:.2f} → {u['backdoor_asr']:.2f} | "
                f"{'passed' if row['audit_passed'] else 'failed ' + ','.join(row['audit_failed'])}"
                f" | {'✓' if j['passed'] else '✗'} | {row['seconds'] / 60:.1f} |")
    path.write_text("\n".join(lines) + "\n")


def families(
    names: Annotated[str | None, typer.Option(
        help="comma-separated families (default: families.names)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="KEY=VALUE on top of families.set (repeatable), e.g. forget.classes=[8]")]
    = None,
    out: Annotated[str, typer.Option(help="report name: reports/<out>.{json,md}")] = "families",
) -> None:
    """Run every family's `dvc exp run` on the ImageFolder export; reports/families.*."""
    root = Path.cwd()
    try:
        params = stage_params()
        extra = {}
        for item in set_ or []:
            key, sep, value = item.partition("=")
            if not sep:
                raise ParamsError(f"--set {item!r}: expected KEY=VALUE")
            extra[key] = yaml.safe_load(value)
        cfg = params.families.model_copy(update={"set": {**params.families.set, **extra}})
        params = params.model_copy(update={"families": cfg})
        chosen = names.split(",") if names else list(cfg.names)
        data = (root / cfg.path).resolve()
        for family in chosen:
            check_settings(params, family, data)
        export_dataset(cfg, root)
    except (DataError, ParamsError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    ws, env = WORKDIR.resolve() / "repo", clone_env(root)
    shutil.rmtree(ws, ignore_errors=True)
    sh(["git", "clone", "-q", str(root), str(ws)], root, env)
    # one DVC cache for every clone: its run-cache restores a stage whose deps and params
    # are unchanged (prepare, decouple, ...); not `train`, whose persistent output DVC never
    # run-caches (measured: a rerun with another finetune budget retrained diffusion)
    sh(["dvc", "cache", "dir", "--local", str(WORKDIR.resolve() / "cache")], ws, env)
    rows = []
    with progress_bar("families", len(chosen)) as steps:
        for family in chosen:
            steps.start(family)
            row = run_family(ws, family, overrides(cfg, family, data), env)
            if "metrics" in row:
                row["judge"] = judge(row["metrics"], cfg)
            rows.append(row)
            write_json(REPORT_DIR / f"{out}.json", {"params": cfg.model_dump(), "rows": rows})
            write_markdown(rows, cfg, REPORT_DIR / f"{out}.md")
            steps.done(family, "" if "metrics" in row else f" (failed: {row['error']})")
    print((REPORT_DIR / f"{out}.md").read_text())
    if any("error" in r or not r["judge"]["passed"] for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(families)
