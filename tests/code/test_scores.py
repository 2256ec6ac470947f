"""Kept per-model figures: an unchanged model file is not scored again, anything that changes
its figures (the file, the stage's params, the splits, the code) scores it again."""

from components.params import parse_params
from flows.runtime import scores
from flows.runtime.scores import scored, stage_key

SPLITS = {"forget": "f" * 64, "retain": "r" * 64}


def counting_scorer(calls):
    def score(names):
        calls.append(sorted(names))
        return {n: {"psnr": float(len(n)), "n": 3} for n in names}
    return score


def test_only_changed_model_files_are_scored_again(tmp_path):
    calls = []
    key = stage_key("audit", parse_params({}), ("audit",), SPLITS)
    hashes = {"original": "a" * 64, "unlearned": "b" * 64}
    first, fresh = scored(key, hashes, counting_scorer(calls), tmp_path)
    assert fresh == ["original", "unlearned"] and first["original"] == {"psnr": 8.0, "n": 3}
    again, fresh = scored(key, {**hashes, "unlearned": "c" * 64}, counting_scorer(calls),
                          tmp_path)
    assert fresh == ["unlearned"] and calls == [["original", "unlearned"], ["unlearned"]]
    assert again == first  # the kept figures are the scored ones, in the same order
    _, fresh = scored(key, {**hashes, "unlearned": "c" * 64}, counting_scorer(calls), tmp_path)
    assert fresh == [] and len(calls) == 2  # nothing to score: the scorer is not called


def test_the_key_moves_with_params_splits_seed_and_code(monkeypatch, tmp_path):
    base = stage_key("audit", parse_params({}), ("audit",), SPLITS)
    assert stage_key("audit", parse_params({}), ("audit",), SPLITS) == base
    assert stage_key("evaluate", parse_params({}), ("audit",), SPLITS) != base
    assert stage_key("audit", parse_params({"audit": {"max_samples": 10}}), ("audit",),
                     SPLITS) != base
    # a param the stage does not read leaves its figures, and the key, alone
    assert stage_key("audit", parse_params({"unlearn": {"method": "scrub"}}), ("audit",),
                     SPLITS) == base
    assert stage_key("audit", parse_params({"seed": 1}), ("audit",), SPLITS) != base
    assert stage_key("audit", parse_params({}), ("audit",), {**SPLITS, "forget": "0" * 64}) \
        != base
    code = tmp_path / "components"
    code.mkdir()
    (code / "metrics.py").write_text("X = 1\n")
    monkeypatch.setattr(scores, "CODE_ROOTS", (code,))
    edited = stage_key("audit", parse_params({}), ("audit",), SPLITS)
    (code / "metrics.py").write_text("X = 2\n")
    assert stage_key("audit", parse_params({}), ("audit",), SPLITS) != edited != base
