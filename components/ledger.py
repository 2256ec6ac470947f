"""The deletion-request ledger: who asked for which samples to be forgotten, and what came of it.

Two append-only JSON-lines files (git-versioned; `requests.jsonl` is also a dependency of the
`prepare` stage, so dvc.lock records the exact ledger each model was unlearned from):

    requests.jsonl  one line per accepted request:
                    {"request_id", "ids", "reason", "requester", "at"}
    status.jsonl    one line per change of a request's status:
                    {"request_id", "status", "model_version", "at"}

A request's status is its last status line (none: `pending`), moving pending -> unlearned
(with the model version that removed it) -> promoted (that version became champion). Lines are
never rewritten: the history is the audit trail. Sample ids are `<dataset>:<split>:<index>`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

LEDGER_DIR = Path("ledger")
REQUESTS, STATUS = "requests.jsonl", "status.jsonl"
PENDING, UNLEARNED, PROMOTED = "pending", "unlearned", "promoted"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+:(train|test):\d+$")


class LedgerError(ValueError):
    """A request that cannot be accepted, or a ledger file that cannot be read."""


@dataclass
class Request:
    """One deletion request and its current status."""

    request_id: str
    ids: list[str]
    reason: str
    requester: str
    at: str
    status: str = PENDING
    model_version: int | None = None
    history: list[dict] = field(default_factory=list)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise LedgerError(f"{path}:{n}: not a JSON line ({exc.msg})") from None
    return rows


def _append(path: Path, rows: Iterable[dict]) -> None:
    """Append whole lines in one write (a crash leaves the file as it was or complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    with path.open("a") as f:
        f.write(text)
        f.flush()


def read_ledger(root: Path = LEDGER_DIR) -> list[Request]:
    """Every request in filing order, with its status folded from the status lines.

    Args:
        root: the ledger folder.

    Returns:
        The requests.
    """
    requests = {}
    for row in _read_lines(root / REQUESTS):
        requests[row["request_id"]] = Request(**{k: row[k] for k in
                                                 ("request_id", "ids", "reason", "requester",
                                                  "at")})
    for row in _read_lines(root / STATUS):
        req = requests.get(row["request_id"])
        if req is None:
            raise LedgerError(f"{root / STATUS}: status for unknown request {row['request_id']}")
        req.status, req.model_version = row["status"], row.get("model_version")
        req.history.append(row)
    return list(requests.values())


def check_ids(ids: list[str], known: set[str], requests: list[Request]) -> list[str]:
    """Every problem with a batch of sample ids, one line each (empty: all good).

    Args:
        ids: the ids of a new request.
        known: the ids of the training data (the forget and retain manifests).
        requests: the ledger so far (an id already requested is a duplicate).

    Returns:
        Problems, each naming the id.
    """
    if not ids:
        return ["no sample ids given"]
    owner = {sid: r.request_id for r in requests for sid in r.ids}
    problems, seen = [], set()
    for sid in ids:
        if not ID_PATTERN.match(sid):
            problems.append(f"{sid!r}: malformed (expected <dataset>:<split>:<index>)")
        elif sid in seen:
            problems.append(f"{sid}: listed twice in this request")
        elif sid in owner:
            problems.append(f"{sid}: already requested in {owner[sid]}")
        elif sid not in known:
            problems.append(f"{sid}: not in the training data (unknown id, or held-out/test)")
        seen.add(sid)
    return problems


def add_request(root: Path, ids: list[str], reason: str, requester: str,
                known: set[str]) -> Request:
    """Validate and append one request; nothing is written if any id is bad.

    Args:
        root: the ledger folder.
        ids: the sample ids to forget.
        reason: why (kept with the request).
        requester: who asked.
        known: the ids of the training data.

    Returns:
        The accepted request (status pending).

    Raises:
        LedgerError: listing every bad id.
    """
    if not reason.strip():
        raise LedgerError("a request needs --reason \"...\" (kept in the ledger)")
    requests = read_ledger(root)
    problems = check_ids(ids, known, requests)
    if problems:
        raise LedgerError(f"request refused, {len(problems)} bad id(s):\n  "
                          + "\n  ".join(problems))
    req = Request(f"req-{len(requests) + 1:04d}", list(ids), reason, requester, _now())
    _append(root / REQUESTS, [{k: v for k, v in asdict(req).items()
                               if k in ("request_id", "ids", "reason", "requester", "at")}])
    return req


def mark(root: Path, request_ids: list[str], status: str, model_version: int) -> None:
    """Append a status line for each request (unlearned by / promoted with `model_version`)."""
    _append(root / STATUS, [{"request_id": r, "status": status, "model_version": model_version,
                             "at": _now()} for r in request_ids])


def pending(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.status == PENDING]


def requested_ids(requests: list[Request]) -> dict[str, str]:
    """sample id -> request id, over every request (the forget set is cumulative)."""
    return {sid: r.request_id for r in requests for sid in r.ids}
