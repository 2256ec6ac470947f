"""What a reviewer reads on a registered model version, without code: which params a stage
reads, the method's variant, the forget scope in words, flat audit tags, and the version's
Markdown description (flows/ops/review.py writes it at registration and again at promotion).

Pure functions over plain dicts: the record `register` keeps as the version's
`review/record.json` artifact, and the version's tags.
"""

from __future__ import annotations

from typing import Any

from components.params import Params, UnlearnParams

# the blocks each method's forgetting phase reads besides its own `unlearn.<method>`
EXTRA_BLOCKS = {"decouple_literal": ("unlearn.decouple",), "retrain": ("train",)}
MODEL_COMMON = ("model.source", "model.family", "model.task", "model.inpaint_box",
                "model.outpaint_border")
NO_REQUESTS = "none"  # the `requests` tag of a version that covers no deletion request


def method_keys(method: str, retention: bool) -> tuple[str, ...]:
    """The params a method reads: its own block, the blocks it borrows, and the retention
    block when the `finetune` stage's retention runs after it."""
    keys = ("unlearn.method", *EXTRA_BLOCKS.get(method, ()), f"unlearn.{method}")
    return (*keys, "unlearn.finetune") if retention else keys


def model_keys(params: Params) -> tuple[str, ...]:
    """The `model` params of the configured family only (not every family's block)."""
    return (*MODEL_COMMON, f"model.{params.model.family}")


def pick(tree: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The flat params `keys` name: a dotted key to a block gives every leaf under it.

    Example: pick({"a": {"b": 1, "c": {"d": 2}}}, ("a.c",)) == {"a.c.d": 2}.
    """
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        out.update(_flat(node, key))
    return out


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, Any] = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}.{k}"))
    return out


def method_variant(params: Params, retention: bool) -> str:
    """The method's knobs that differ from the schema's defaults, as `key=value` (dropping
    the `unlearn.` prefix), or `defaults`: what the `method` tag alone does not say."""
    keys = [k for k in method_keys(params.unlearn.method, retention)
            if k.startswith("unlearn.") and k != "unlearn.method"]
    now = pick({"unlearn": params.unlearn.model_dump(mode="json")}, tuple(keys))
    default = pick({"unlearn": UnlearnParams().model_dump(mode="json")}, tuple(keys))
    changed = [f"{k.removeprefix('unlearn.')}={_value(v)}" for k, v in now.items()
               if default.get(k) != v]
    return ", ".join(changed) or "defaults"


def _value(v: Any) -> str:
    return "null" if v is None else str(v)


def forget_scope(summary: dict, params: Params) -> str:
    """The forget set in words, e.g. `class 7 (sneaker) of fashion-mnist`.

    Args:
        summary: data/splits/summary.json (dataset, counts, forget_classes, requests).
        params: the params the split was drawn with (forget.kind, classes, fraction).
    """
    dataset, forget = summary.get("dataset", params.data.dataset), params.forget
    requests = summary.get("requests", [])
    if forget.kind == "class":
        names = summary.get("forget_classes", [])
        named = [str(c) for c in forget.classes]
        if all(isinstance(c, int) for c in forget.classes) and len(forget.classes) == 1 \
                and len(names) == 1 and not requests:
            what = f"class {named[0]} ({names[0]})"
        else:
            what = f"class{'es' if len(named) > 1 else ''} {', '.join(named)}"
    elif forget.kind == "sample":
        what = f"a seeded random {forget.fraction:.2%} of the training samples"
    else:
        what = "the deletion requests"
    if requests and forget.kind != "ledger":
        what += f" and {len(requests)} deletion request{'s' if len(requests) > 1 else ''}"
    return f"{what} of {dataset}"


def requests_tag(requests: list[str]) -> str:
    """The `requests` tag: the ids, comma-separated, or `none` (an empty tag reads as missing)."""
    return ",".join(requests) or NO_REQUESTS


def request_ids(tag: str | None) -> list[str]:
    """The ids a `requests` tag holds (an empty tag, from before `none`, holds none)."""
    return [r for r in (tag or "").split(",") if r and r != NO_REQUESTS]


def audit_tags(verdict: dict) -> dict[str, str]:
    """One flat tag per check of the verdict: `audit.<check>.rule` = `ok: <rule>` or
    `FAIL: <rule>`, so that a reviewer filters on and reads each rule in the tag list."""
    return {f"audit.{name}.rule": f"{'ok' if c['passed'] else 'FAIL'}: {c['rule']}"
            for name, c in verdict.get("checks", {}).items()}


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _short(sha: str | None) -> str:
    return f"`{(sha or 'none')[:12]}`"


def _audit_section(audit: dict) -> list[str]:
    passed = "PASSED" if audit.get("passed") else f"FAILED ({', '.join(audit.get('failed', []))})"
    against = audit.get("against", "retrained")
    where = ("the retrained reference (a model trained without the forget set)"
             if against == "retrained" else
             "held-out data and absolute bounds (reference-free: no model was retrained)")
    lines = [f"### Audit: {passed}, against {where}", "",
             "| check | value | against | reference or bound | tolerance | rule | ok |",
             "|---|---|---|---|---|---|---|"]
    for name, c in audit.get("checks", {}).items():
        lines.append(f"| {name} | {_num(c.get('value'))} | {c.get('against', '')} | "
                     f"{_num(c.get('bound'))} | {_num(c.get('tolerance'))} | "
                     f"`{c.get('rule', '')}` | {'ok' if c.get('passed') else '**FAIL**'} |")
    return lines


def _certificate_section(cert: dict) -> list[str]:
    covers = cert.get("covers", "none")
    eps = cert.get("epsilon")
    head = {"released model": f"covers the released model (ε = {eps}, δ = {cert.get('delta')})",
            "decoupled model only": "covers the decoupled model only; the released model has "
                                    "no bound (ε = ∞)",
            "none": "covers nothing (ε = ∞): no calibrated noise, the audit is the only "
                    "evidence"}.get(covers, covers)
    return [f"### Certificate: {head}", "", cert.get("statement", "")]


def _promotion_section(tags: dict[str, str]) -> list[str]:
    # the aliases stay out: MLflow shows them live beside the description, which would go
    # stale each time an alias moves
    if "promoted.by" not in tags:
        return ["### Promotion", "",
                "Not promoted through `unlearn promote`. Promote with "
                "`unlearn promote --version N --by <you>`; MLflow's own alias controls move "
                "`champion` past the gate, which `unlearn review` then flags."]
    forced = " (**FORCED** past a failed check)" if tags.get("promoted.forced") == "true" \
        else ""
    return ["### Promotion", "",
            f"Promoted to `champion` by **{tags['promoted.by']}** at {tags.get('promoted.at')}"
            f"{forced}: {tags.get('promoted.reason', '')}"]


def version_description(record: dict, tags: dict[str, str]) -> str:
    """The Markdown description of a registered version.

    Args:
        record: the version's review/record.json (written by `register`).
        tags: the version's tags now (`promoted.*` and `report.*` are added after
            registration).
    """
    scope, prov, model = record["scope"], record["provenance"], record["model"]
    counts = scope.get("counts", {})
    requests = scope.get("requests", [])
    method = record["method"]
    lines = [f"## {record['model_name']} v{record['version']}: `{method}` unlearning of "
             f"{scope['text']}", "",
             f"**Method** `{method}`, variant: {record['variant']} "
             f"(every knob: this version's run, params `unlearn.*`). Model: {model['family']}, "
             f"task {model['task']}, images {model['shape']}.", "",
             "### Forget scope", "",
             f"- **Forgotten:** {scope['text']}: {counts.get('forget', 0):,} training images"
             + (f" ({scope['poisoned']:,} of them carry the backdoor trigger)"
                if scope.get("poisoned") else ""),
             f"- **Kept:** {counts.get('retain', 0):,} retain images; held-out "
             f"{counts.get('heldout', 0):,}, test {counts.get('test', 0):,}",
             "- **Deletion requests:** " + (", ".join(f"`{r}`" for r in requests) or "none"),
             f"- **Splits:** `data/splits` (DVC, md5 {_short(scope.get('splits_md5'))}); "
             f"forget split sha256 {_short(scope.get('forget_split_hash'))}, retain "
             f"{_short(scope.get('retain_split_hash'))} (the run's Datasets)", ""]
    lines += _audit_section(record["audit"]) + [""]
    lines += _certificate_section(record["certificate"]) + [""]
    report = tags.get("report.link")
    lines += ["### Report", "",
              f"[report.html]({report}) on this version's run (`{tags.get('report.uri')}`)"
              if report else "Not generated yet: `unlearn report` writes it and logs it on "
              "this version's run (then linked here).", ""]
    lines += ["### Provenance", "",
              f"- git commit {_short(prov.get('git_commit'))}, dvc.lock sha256 "
              f"{_short(prov.get('dvc_lock_hash'))}",
              f"- model file sha256 {_short(prov.get('artifact_sha256'))} "
              "(`checkpoint/unlearned.pt`, checked again by `unlearn promote`)",
              f"- pipeline run `{prov.get('pipeline', 'none')}`, register run "
              f"`{prov.get('run_id')}`", ""]
    lines += _promotion_section(tags)
    return "\n".join(lines) + "\n"
