"""Per-model figures of the audit and evaluate stages, kept so that an unchanged model is not
scored again.

DVC reruns `audit` and `evaluate` whenever one of their inputs changes, and they score every
model (original, decoupled, unlearned, retrained). After a change to the unlearning alone
(`-S unlearn.finetune.steps=...`), three of the four models are the files they were; keeping
their figures took evaluate's flow from 17 to 11 s and audit's from 5 to 3 s here
(reports/runtime.json). A model's figures are a function of its file, the data the stage
draws (the split manifests, which hold every sample's sha256), the params the stage reads,
the seed, the code that scores and the device kind: all of that is the key, so any change
scores again. Entries are small JSON files under `.cache/scores/` (not versioned; deleting
the folder only costs time; a cycle keeps them in its workspace's).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from components.params import Params
from flows.runtime.tracking import pick
from flows.runtime.warm import code_digest

T = TypeVar("T")
# UNLEARN_SCORE_CACHE: a deletion cycle keeps them in its workspace, not in its short-lived clone
CACHE_ENV = "UNLEARN_SCORE_CACHE"
# the code a model's figures come from: any edit under it scores every model again
CODE_ROOTS = (Path(__file__).resolve().parents[2] / "components",)


def _code_digest() -> str:
    h = hashlib.sha256(torch.__version__.encode())
    for root in CODE_ROOTS:
        h.update(code_digest(root.parent, (root.name,)).encode())
    return h.hexdigest()


def stage_key(stage: str, params: Params, keys: tuple[str, ...], split_hashes: dict) -> str:
    """What a stage's figures of one model depend on besides the model file."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = {"stage": stage, "seed": params.seed, "splits": split_hashes, "device": device,
              "params": pick(params.model_dump(mode="json"), keys), "code": _code_digest()}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def scored(key: str, hashes: dict[str, str], score: Callable[[list[str]], dict[str, Any]],
           cache: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """Every model's figures: kept ones for model files seen under this key, `score(names)`
    for the rest (then kept). Returns (name -> figures, the names scored now).

    Args:
        key: stage_key's digest.
        hashes: model name -> sha256 of its file.
        score: names -> {name: figures} for at least those names.
        cache: where entries live (default: $UNLEARN_SCORE_CACHE, else .cache/scores).
    """
    cache = _cache_dir(cache)
    files = {name: cache / f"{key[:32]}-{sha[:32]}.json" for name, sha in hashes.items()}
    results = {name: json.loads(f.read_text()) for name, f in files.items() if f.exists()}
    todo = [name for name in hashes if name not in results]
    if todo:
        fresh = score(todo)
        cache.mkdir(parents=True, exist_ok=True)
        for name in todo:
            tmp = files[name].with_suffix(".tmp")
            tmp.write_text(json.dumps(fresh[name], sort_keys=True))
            tmp.replace(files[name])  # whole or absent, never half-written
        results.update(fresh)
    return {name: results[name] for name in hashes}, todo


def kept(key: str, name: str, build: Callable[[], T], save: Callable[[T, Path], None],
         load: Callable[[Path], T], cache: Path | None = None) -> tuple[T, bool]:
    """Something a stage builds from what `key` holds alone, not from any model (evaluate's
    domain classifier: 7 s of CPU here): read back when kept under this key, else built and
    kept. Returns (it, whether it was kept)."""
    path = _cache_dir(cache) / f"{key[:32]}-{name}.pt"
    if path.exists():
        return load(path), True
    made = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save(made, tmp)
    tmp.replace(path)  # whole or absent, never half-written
    return made, False


def _cache_dir(cache: Path | None) -> Path:
    return cache or Path(os.environ.get(CACHE_ENV, ".cache/scores"))


def kept_line(stage: str, names: list[str], fresh: list[str]) -> str:
    """The stage's line on which models it scored and which figures it kept."""
    kept = [n for n in names if n not in fresh]
    return (f"[{stage}] scored {', '.join(n for n in fresh if n in names) or 'none'}; kept the "
            f"figures of {', '.join(kept) or 'none'} (unchanged files)")
