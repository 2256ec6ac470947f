"""The deletion-request ledger: ids checked before anything is written, append-only history."""

import json

import pytest

from components.ledger import (
    PENDING,
    PROMOTED,
    REQUESTS,
    STATUS,
    UNLEARNED,
    LedgerError,
    add_request,
    mark,
    pending,
    read_ledger,
    requested_ids,
)

KNOWN = {f"digits:train:{i}" for i in range(20)}


def test_a_request_is_appended_pending(tmp_path):
    req = add_request(tmp_path, ["digits:train:1", "digits:train:2"], "GDPR art. 17", "ana",
                      KNOWN)
    assert req.request_id == "req-0001" and req.status == PENDING
    second = add_request(tmp_path, ["digits:train:3"], "opt-out", "bo", KNOWN)
    assert second.request_id == "req-0002"
    ledger = read_ledger(tmp_path)
    assert [(r.request_id, r.ids, r.requester) for r in ledger] == [
        ("req-0001", ["digits:train:1", "digits:train:2"], "ana"),
        ("req-0002", ["digits:train:3"], "bo")]
    assert requested_ids(ledger) == {"digits:train:1": "req-0001", "digits:train:2": "req-0001",
                                     "digits:train:3": "req-0002"}


def test_bad_ids_refuse_the_whole_request_and_name_each(tmp_path):
    add_request(tmp_path, ["digits:train:1"], "first", "ana", KNOWN)
    before = (tmp_path / REQUESTS).read_bytes()
    bad = ["digits:train:2", "digits:train:2", "digits:train:1", "digits:train:999",
           "nonsense", "digits:test:3"]
    with pytest.raises(LedgerError) as err:
        add_request(tmp_path, bad, "second", "bo", KNOWN)
    text = str(err.value)
    assert "5 bad id(s)" in text
    assert "digits:train:2: listed twice" in text
    assert "digits:train:1: already requested in req-0001" in text
    assert "digits:train:999: not in the training data" in text
    assert "'nonsense': malformed" in text
    assert "digits:test:3: not in the training data" in text
    assert (tmp_path / REQUESTS).read_bytes() == before  # nothing written


@pytest.mark.parametrize("ids, reason, message", [
    ([], "why", "no sample ids given"),
    (["digits:train:1"], "  ", "needs --reason"),
])
def test_empty_requests_are_refused(tmp_path, ids, reason, message):
    with pytest.raises(LedgerError, match=message):
        add_request(tmp_path, ids, reason, "ana", KNOWN)
    assert not (tmp_path / REQUESTS).exists()


def test_status_moves_forward_by_appending_only(tmp_path):
    for i in range(3):
        add_request(tmp_path, [f"digits:train:{i}"], "why", "ana", KNOWN)
    requests_before = (tmp_path / REQUESTS).read_bytes()
    mark(tmp_path, ["req-0001", "req-0002"], UNLEARNED, 4)
    status_before = (tmp_path / STATUS).read_bytes()
    mark(tmp_path, ["req-0001"], PROMOTED, 4)
    assert (tmp_path / REQUESTS).read_bytes() == requests_before
    assert (tmp_path / STATUS).read_bytes().startswith(status_before)
    ledger = {r.request_id: r for r in read_ledger(tmp_path)}
    assert (ledger["req-0001"].status, ledger["req-0001"].model_version) == (PROMOTED, 4)
    assert [h["status"] for h in ledger["req-0001"].history] == [UNLEARNED, PROMOTED]
    assert ledger["req-0002"].status == UNLEARNED
    assert [r.request_id for r in pending(list(ledger.values()))] == ["req-0003"]


def test_a_corrupt_ledger_line_is_named(tmp_path):
    add_request(tmp_path, ["digits:train:1"], "why", "ana", KNOWN)
    with (tmp_path / REQUESTS).open("a") as f:
        f.write('{"request_id": "req-0002", "ids": [\n')
    with pytest.raises(LedgerError, match=r"requests.jsonl:2: not a JSON line"):
        read_ledger(tmp_path)
    (tmp_path / STATUS).write_text(json.dumps({"request_id": "req-0099", "status": "unlearned"})
                                   + "\n")
    (tmp_path / REQUESTS).write_text((tmp_path / REQUESTS).read_text().splitlines()[0] + "\n")
    with pytest.raises(LedgerError, match="status for unknown request req-0099"):
        read_ledger(tmp_path)
