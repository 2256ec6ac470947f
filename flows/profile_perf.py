"""Profile one pipeline-path unlearning job (the one `make bench-perf` times) with py-spy.

Run:  python -m flows.profile_perf [--repeats N] [--rate HZ] [--no-spy] [--out DIR]

What it does, reusing flows.perf's own functions (draw_case, unlearn_plain, unlearn_pipeline):
trains (or reloads from a temp-dir cache) the default original model as a plain loop, runs
the plain unlearning loop once (the reference time), starts Ray and Prefect once (as flows.perf
does, reported apart), then runs the `perf-unlearn` Prefect flow (decouple + finetune, two Ray
Train jobs) `--repeats` times. Meanwhile:
- py-spy samples the driver (`record --pid <own pid> --idle --threads`: wall time, every
  thread) and every Ray worker process (`ray::...` / default_worker.py: the future
  TrainController and RayTrainWorker actors, on-CPU samples) from the moment a 0.2 s poll sees
  it (`--format raw --function`); at the end the stacks are added up per role (driver,
  TrainController, RayTrainWorker, each helper actor) into DIR/<role>.folded.gz;
- a watcher records every Ray process's title changes (ray::IDLE -> ray::TrainController ...)
  and its CPU time, and the driver marks the moments of its calls (flow, Prefect task,
  TorchTrainer.fit, checkpoint read back);
- Ray's own task timeline (ray.timeline(), trimmed) goes to DIR/ray_timeline.json.
It prints and writes DIR/summary.json: the timeline of each job in seconds, the driver's marks,
top frames (self and total) and import samples per process, every Ray process's titles and CPU
seconds. A Ray cluster already running on the machine stops it (connect would join it).
--no-spy runs the same without py-spy (timings without the sampler's cost).
"""

from __future__ import annotations

import argparse
import collections
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import ray
import torch
from ray.train.torch import TorchTrainer

import flows.jobs
import flows.perf as perf
from components.params import Params
from flows.common import load_sets, read_model_file, stage_params

OUT = Path("reports/profile")
# a Ray worker process: its title once Ray names it, or the script it starts as
_RAY_WORKER = re.compile(r"^ray::|default_worker\.py")
# import machinery frames, left out of the per-role files (the <module> frames stay)
_PLUMBING = ("_find_and_load", "_load_unlocked", "_LoaderBasics.exec_module",
             "_call_with_frames_removed", "_handle_fromlist", "SourceLoader.get_code",
             "_gcd_import", "_find_spec", "FileFinder.find_spec", "PathFinder")
_PY_SPY_CANDIDATES = ("py-spy", "/tmp/pyspy/bin/py-spy")


def _say(line: str) -> None:
    print(f"[profile] {line}", flush=True)


def _py_spy() -> str:
    for c in _PY_SPY_CANDIDATES:
        if path := shutil.which(c):
            return path
    raise SystemExit("py-spy not found: `uv pip install py-spy` (or put it on PATH)")


class Spy:
    """py-spy recorders (driver + Ray workers), the Ray processes' titles and CPU times."""

    def __init__(self, out: Path, rate: int, enabled: bool):
        self.out, self.rate, self.enabled = out, rate, enabled
        self.exe = _py_spy() if enabled else ""
        self.procs: dict[int, dict[str, Any]] = {}  # pid -> titles, cpu, create time
        self.spies: dict[int, subprocess.Popen] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.me = os.getpid()

    def record(self, pid: int, name: str, idle: bool) -> None:
        if not self.enabled:
            return
        cmd = [self.exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format",
               "raw", "--function", "--threads", "--nonblocking", "-o",
               str(self.out / f"{name}-{pid}.txt")] + (["--idle"] if idle else [])
        self.spies[pid] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL)

    def start(self) -> None:
        self.record(self.me, "driver", idle=True)
        self.thread.start()

    def _watch(self) -> None:
        spy_pids = set()
        while not self.stop.is_set():
            now = time.time()
            spy_pids = {p.pid for p in self.spies.values()}
            try:
                kids = psutil.Process(self.me).children(recursive=True)
            except psutil.Error:
                kids = []
            for p in kids:
                if p.pid in spy_pids:
                    continue
                try:
                    with p.oneshot():
                        title = " ".join(p.cmdline())[:120]
                        cpu = p.cpu_times()
                        created = p.create_time()
                except psutil.Error:
                    continue
                rec = self.procs.setdefault(p.pid, {"created": created, "titles": [],
                                                    "cpu_s": 0.0})
                rec["cpu_s"] = cpu.user + cpu.system
                short = _short_title(title)
                if not rec["titles"] or rec["titles"][-1][1] != short:
                    rec["titles"].append((now, short))
                if p.pid not in self.spies and _RAY_WORKER.search(title):
                    self.record(p.pid, "worker", idle=False)
            time.sleep(0.2)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        for spy in self.spies.values():
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for spy in self.spies.values():
            try:
                spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                spy.kill()
        # name each worker's file by the role its process ended up with
        for pid, rec in self.procs.items():
            src = self.out / f"worker-{pid}.txt"
            if src.exists():
                role = _role([t for _, t in rec["titles"]])
                dst = self.out / f"{role}-{pid}.txt"
                src.rename(dst)
                rec["profile"] = dst.name


def _short_title(title: str) -> str:
    if title.startswith("ray::"):
        return title.split()[0]
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env",
                "default_worker.py", "monitor.py", "agent"):
        if key in title:
            return key
    return title.split()[0].rsplit("/", 1)[-1] if title else "?"


def _role(titles: list[str]) -> str:
    """The Ray actor class a worker process ended up running (IDLE: none)."""
    for t in titles:
        if t.startswith("ray::") and t != "ray::IDLE":
            return t[5:].split(".")[0]
    return "IDLE"


# ---------------------------------------------------------------- driver marks

MARKS: list[tuple[float, str]] = []


def _mark(name: str) -> None:
    MARKS.append((time.time(), name))


def _instrument(worker_mlflow: bool) -> None:
    """Mark the driver's calls: the Prefect task run_job, TorchTrainer.fit, checkpoint read
    (worker_mlflow False: an experiment, the jobs get no MLflow run id, so the rank-0 worker
    neither imports MLflow nor logs)."""
    job = perf.run_job

    @functools.wraps(job)
    def timed_job(*args: Any, **kwargs: Any) -> Any:
        if not worker_mlflow:
            args = (*args[:5], None, *args[6:])
        _mark(f"run_job:{args[1]}:call")
        out = job(*args, **kwargs)
        _mark(f"run_job:{args[1]}:return")
        job_info.append(dict(out[0]))
        return out

    perf.run_job = timed_job
    fit = TorchTrainer.fit

    @functools.wraps(fit)
    def timed_fit(self: TorchTrainer) -> Any:
        _mark("fit:start")
        out = fit(self)
        _mark("fit:end")
        return out

    TorchTrainer.fit = timed_fit
    load = torch.load

    @functools.wraps(load)
    def timed_load(*args: Any, **kwargs: Any) -> Any:
        _mark("ckpt_read:start")
        out = load(*args, **kwargs)
        _mark("ckpt_read:end")
        return out

    flows.jobs.torch.load = timed_load  # flows.jobs reads the final checkpoint with it


job_info: list[dict] = []


def _original(params: Params, case: dict, path: Path | None) -> dict:
    """The original's weights: flows.perf trains it as a plain loop (done here once, cached
    in the temp dir), or `path`'s (a model file such as models/original.pt: same model and
    data, trained by the train stage; quicker on a busy machine)."""
    if path is not None:
        return read_model_file(path)["state_dict"]
    key = hashlib.sha256(json.dumps(params.model_dump(mode="json"), sort_keys=True)
                         .encode()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"profile_perf_original-{key}.pt"
    if cache.exists():
        return torch.load(cache, map_location="cpu", weights_only=True)
    _say(f"training the original ({params.train.epochs} epochs, plain loop; cached to {cache})")
    _, _, state = perf.train_plain(case, "trainable")
    torch.save(state, cache)
    return state


# ---------------------------------------------------------------- timeline

def _job_timeline(marks: list[tuple[float, str]], info: dict, procs: dict,
                  window: tuple[float, float]) -> list[tuple[str, float]]:
    """Consecutive phases of one Ray Train job, from the driver's call to its return."""
    at = {n.split(":", 2)[-1] if n.startswith("run_job") else n: t for t, n in marks}
    call, ret = at["call"], at["return"]
    # the processes that became this job's controller / worker during the call
    def became(word: str) -> float | None:
        # "ray::Class.method": a method running (the idle "ray::Class" title of the previous
        # job's actor can change inside this window)
        moments = [t for rec in procs.values() for t, title in rec["titles"]
                   if f"{word}." in title and window[0] <= t <= window[1]]
        return min(moments) if moments else None

    ctrl, worker = became("TrainController"), became("RayTrainWorker")
    fit0, fit1 = at["fit:start"], at["fit:end"]
    ws, we = info["worker_start"], info["worker_end"]
    payload, log, ckpt = info["payload_seconds"], info["log_seconds"], info["checkpoint_seconds"]
    loop = info["job_seconds"]
    rows = [("Prefect task start + ray.put + TorchTrainer()", fit0 - call)]
    if ctrl and worker and fit0 <= ctrl <= worker <= ws:
        rows += [("controller actor scheduled (fit -> ray::TrainController title)", ctrl - fit0),
                 ("controller start (imports, placement group, worker actor created)",
                  worker - ctrl),
                 ("worker actor start (RayTrainWorker up -> train_loop runs: imports,"
                  " process group, train fn)", ws - worker)]
    else:
        rows += [("controller + worker actor start (fit -> train_loop runs)", ws - fit0)]
    rows += [("payload fetch (ray.get in the worker)", payload),
             ("setup before the loop (parse params, logger thread)",
              max(0.0, (we - ws) - payload - loop)),
             ("compute loop (pairs + steps)", loop - log - ckpt),
             ("MLflow logging (blocking part)", log),
             ("checkpoint writes (blocking part)", ckpt),
             ("final report + controller/worker shutdown (train_loop end -> fit returns)",
              fit1 - we),
             ("checkpoint read back + Prefect task end", ret - fit1)]
    return rows


# ---------------------------------------------------------------- folded stacks

def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    return stack.split(";"), int(count)


def _short(frame: str) -> str:
    frame = re.sub(r"\(/.*?/site-packages/", "(", frame)
    frame = re.sub(r"\(/.*?/lib/python3\.\d+/", "(", frame)
    return re.sub(r"\(" + re.escape(str(Path.cwd())) + "/", "(", frame)


def _summarize(path: Path, top: int, tid: int | None = None) -> dict[str, Any]:
    """Top frames by self and total samples, and import samples by the first module imported
    (`tid`: only that thread's samples)."""
    self_c: collections.Counter = collections.Counter()
    total_c: collections.Counter = collections.Counter()
    imports: collections.Counter = collections.Counter()
    n = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, count = _frames(line)
        if tid is not None and not frames[0].startswith(f"thread ({tid})"):
            continue
        frames = [f for f in frames if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        n += count
        frames = [_short(f) for f in frames]
        self_c[frames[-1]] += count
        for f in set(frames):
            total_c[f] += count
        for i, f in enumerate(frames):  # the top-level module an import sample is under
            if f.startswith("_find_and_load") and i + 1 < len(frames):
                mods = [m for m in frames[i:] if m.startswith("<module>")]
                if mods:
                    imports[re.sub(r"<module> \((.*?)(/__init__)?\.py.*", r"\1",
                                   mods[0]).replace("/", ".")] += count
                break
    return {"samples": n, "self": self_c.most_common(top), "total": total_c.most_common(top),
            "imports_by_first_module": imports.most_common(top),
            "import_samples": sum(imports.values())}


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=1, help="pipeline flow runs (default 1)")
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--no-spy", action="store_true", help="no py-spy: timings only")
    ap.add_argument("--original", type=Path, default=None,
                    help="start from this model file's weights instead of training the "
                    "original as flows.perf does (e.g. models/original.pt)")
    ap.add_argument("--worker-no-mlflow", action="store_true",
                    help="experiment: the Ray workers do not log to MLflow (no run id)")
    ap.add_argument("--keep-raw", action="store_true",
                    help="keep py-spy's per-process files next to the per-role ones")
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT})")
    args = ap.parse_args()
    busy = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"]
    if busy and not os.environ.get("RAY_ADDRESS"):
        # flows.jobs.connect would join that cluster (ray.init finds the latest local one):
        # its jobs, and any faults they inject, would share the measured job's 2 cores
        raise SystemExit(f"a Ray cluster is already running here (raylet pid {busy}): "
                         "stop it or wait, so that the profile measures this job alone")
    args.out.mkdir(parents=True, exist_ok=True)
    for old in [*args.out.glob("*-*.txt"), *args.out.glob("*.folded.gz")] * (not args.no_spy):
        old.unlink()  # the previous profile (a --no-spy run keeps it)
    proc_start = psutil.Process().create_time()
    t_imported = time.time()
    params = stage_params()
    sets = load_sets(params)
    case = perf.draw_case(params, sets, None)
    case["original"] = _original(params, case, args.original)
    perf._CASES["default"] = case
    plain_s, _ = perf.unlearn_plain(case)
    _say(f"plain unlearning loop: {plain_s:.2f} s")
    spy = Spy(args.out, args.rate, not args.no_spy)
    spy.start()
    time.sleep(1.0)  # let py-spy attach to the driver before the measured part
    _instrument(not args.worker_no_mlflow)
    t0 = time.time()
    ray_s, _ = perf._timed(perf.connect, params)
    prefect_s, _ = perf._timed(perf._warmup)
    _say(f"Ray start {ray_s:.2f} s, Prefect start {prefect_s:.2f} s")
    runs = []
    for r in range(args.repeats):
        MARKS.clear()
        job_info.clear()
        _mark("flow:call")
        t_flow = time.time()
        perf.unlearn_pipeline("default", "workers")  # the Ray Train jobs it profiles
        t_end = time.time()
        _mark("flow:return")
        runs.append({"pipeline_s": t_end - t_flow, "marks": list(MARKS),
                     "jobs": [dict(i) for i in job_info]})
        _say(f"repeat {r + 1}/{args.repeats}: pipeline {t_end - t_flow:.2f} s "
             f"(plain {plain_s:.2f} s, ratio {(t_end - t_flow) / plain_s:.2f})")
    t_done = time.time()
    try:
        _write_timeline(args.out / "ray_timeline.json", t0)
    except Exception as exc:  # the timeline is extra: say why it is missing, go on
        _say(f"ray.timeline() failed: {exc!r}")
    spy.finish()
    summary = _report(runs, spy, plain_s, ray_s, prefect_s, t_imported - proc_start,
                      (t0, t_done), args)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    _say(f"wrote {args.out}/summary.json")


def _write_timeline(path: Path, t0: float) -> None:
    """Ray's task events (chrome trace), kept to the events longer than 20 ms."""
    events = ray.timeline()
    keep = [e for e in events if e.get("dur", 0) >= 20_000 or e.get("ph") == "M"]
    path.write_text(json.dumps({"t0_us": t0 * 1e6, "events": keep}))


def _report(runs: list[dict], spy: Spy, plain_s: float, ray_s: float, prefect_s: float,
            import_s: float, window: tuple[float, float], args: argparse.Namespace) -> dict:
    out: dict[str, Any] = {"plain_s": plain_s, "ray_start_s": ray_s, "prefect_start_s": prefect_s,
                           "driver_imports_s": import_s, "py_spy": not args.no_spy,
                           "worker_mlflow": not args.worker_no_mlflow,
                           "rate_hz": args.rate, "runs": []}
    for run in runs:
        marks = run["marks"]
        calls = [i for i, (_, n) in enumerate(marks) if n.endswith(":call") and "run_job" in n]
        rets = [i for i, (_, n) in enumerate(marks) if n.endswith(":return") and "run_job" in n]
        jobs = []
        for k, (a, b) in enumerate(zip(calls, rets, strict=True)):
            sub = marks[a:b + 1]
            label = marks[a][1].split(":")[1]
            win = (marks[a][0], marks[b][0])
            rows = _job_timeline(sub, run["jobs"][k], spy.procs, win)
            jobs.append({"label": label, "seconds": win[1] - win[0], "phases": rows})
        flow0, flow1 = marks[0][0], marks[-1][0]
        first, last = marks[calls[0]][0], marks[rets[-1]][0]
        between = sum(marks[calls[i + 1]][0] - marks[rets[i]][0] for i in range(len(calls) - 1))
        out["runs"].append({
            "pipeline_s": run["pipeline_s"], "ratio": run["pipeline_s"] / plain_s,
            "flow_start_s": first - flow0, "between_jobs_s": between,
            "flow_end_s": flow1 - last, "jobs": jobs,
            "marks": [[round(t - window[0], 3), n] for t, n in marks]})
        _say(f"flow start (Prefect flow run + MLflow run) {first - flow0:.2f} s, "
             f"between jobs {between:.2f} s, flow end {flow1 - last:.2f} s")
        for job in jobs:
            _say(f"job {job['label']}: {job['seconds']:.2f} s")
            for name, s in job["phases"]:
                _say(f"    {s:7.2f}  {name}")
    out["processes"] = {
        str(pid): {"titles": [[round(t - window[0], 2), n] for t, n in rec["titles"]],
                   "created_s": round(rec["created"] - window[0], 2),
                   "cpu_s": round(rec["cpu_s"], 2), "profile": rec.get("profile")}
        for pid, rec in spy.procs.items()}
    out["profiles"] = {}
    for f in sorted(args.out.glob("*-*.txt")):
        out["profiles"][f.name] = _summarize(f, 25)
        if f.name.startswith("driver-"):
            out["profiles"][f.name + ":MainThread"] = _summarize(f, 25, tid=os.getpid())
    _condense(args.out, args.keep_raw)
    return out


def _condense(out: Path, keep_raw: bool) -> None:
    """One folded-stack file per role (driver, TrainController, RayTrainWorker, ...): frames
    without their directories, thread ids dropped, identical stacks of a role's processes
    added up. The per-process files are removed unless keep_raw."""
    merged: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for f in sorted(out.glob("*-*.txt")):
        role = f.name.rsplit("-", 1)[0]
        for line in f.read_text().splitlines():
            if not line.strip():
                continue
            frames, count = _frames(line)
            frames = [re.sub(r"^thread \(\d+\)(: )?", "thread ", _short(fr)) for fr in frames
                      if not fr.startswith(_PLUMBING)]
            merged[role][";".join(frames)] += count
        if not keep_raw:
            f.unlink()
    for role, stacks in merged.items():  # gzip: deep stacks, a few MB of text per role
        with gzip.open(out / f"{role}.folded.gz", "wt", compresslevel=9) as fh:
            fh.writelines(f"{k} {v}\n" for k, v in sorted(stacks.items()))


if __name__ == "__main__":
    main()
