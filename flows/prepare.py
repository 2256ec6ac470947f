"""Stage `prepare`: validate params, load the dataset, write the split manifests (DVC outs).

Manifests list every sample of forget / retain / held-out / test as `<dataset>:<split>:<index>`
with its image's sha256; the forget manifest flags the samples that carry the backdoor and
names the deletion request (ledger/requests.jsonl) each requested sample was forgotten for.
"""

from __future__ import annotations

from components.splits import SPLITS, write_manifest
from flows.runtime.common import (
    SPLIT_DIR,
    draw_splits,
    load_sets,
    run_stage,
    stage_flow,
    stage_params,
    write_json,
)
from flows.runtime.tracking import log_figures, stage_run

KEYS = ("data", "forget", "backdoor")  # the params it reads, logged on its run


@stage_flow("prepare")
def prepare() -> dict:
    params = stage_params()
    sets = load_sets(params)
    splits = draw_splits(params, sets)
    hashes = {n: write_manifest(SPLIT_DIR / f"{n}.csv", splits[n], sets[splits[n].source])
              for n in SPLITS}
    forget = splits["forget"]
    summary = {
        "dataset": params.data.dataset,
        "counts": {n: len(splits[n]) for n in SPLITS},
        "poisoned": int(forget.poisoned.sum()),
        "forget_classes": sorted({sets["train"].class_names[c] for c in forget.labels}),
        "requests": sorted({r for r in forget.requests if r}),
        "hashes": hashes,
    }
    write_json(SPLIT_DIR / "summary.json", summary)
    with stage_run("prepare", params, KEYS, {"forget_split_hash": hashes["forget"]},
                   splits=summary):
        log_figures("count", summary["counts"])
        log_figures("", {"poisoned": summary["poisoned"]})
    print(f"[prepare] {params.data.dataset}: " + ", ".join(
        f"{n} {c}" for n, c in summary["counts"].items())
        + f"; {summary['poisoned']} forget samples carry the backdoor trigger"
        + (f"; {len(summary['requests'])} deletion request(s)" if summary["requests"] else ""))
    return summary


if __name__ == "__main__":
    run_stage(prepare)
