"""Kept per-model figures: an unchanged model file is not scored again, anything that changes
its figures (the file, the stage's params, the splits, the code) scores it again."""

from components.params import parse_params
from flows.runtime import scores
from flows.runtime.scores import scored, stage_key
from tests.conftest import REPO

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


def test_the_code_a_key_covers_is_the_repositorys_components():
    """A root that is not there would leave edits to the scoring code out of every key (the
    reorganisation moved scores.py one folder down and its root to flows/components)."""
    assert all(root.is_dir() and any(root.rglob("*.py")) for root in scores.CODE_ROOTS)
    assert scores.CODE_ROOTS == (REPO / "components",)


def test_a_kept_domain_classifier_judges_as_the_one_trained(tmp_path):
    """evaluate keeps its judge under the stage's key: read back, it gives the same figures,
    and it is trained once."""
    import numpy as np
    import torch

    from components.metrics import Judge, load_judge, make_judge, quality_metrics, save_judge
    from components.models import build_model
    from flows.runtime.scores import kept

    params = parse_params({"model": {"ae": {"widths": [4, 8], "latent_dim": 8}}})
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (64, 1, 8, 8), dtype=np.uint8), np.arange(64) % 4
    targets = {s: torch.rand(16, 1, 8, 8) for s in ("forget", "retain")}
    cpu, trained = torch.device("cpu"), []

    def build():
        trained.append(1)
        return make_judge(images, labels, 4, targets, params.evaluate, 0, cpu)

    key = stage_key("evaluate", params, ("evaluate",), SPLITS)
    first, was_kept = kept(key, "judge", build, save_judge, load_judge, tmp_path)
    again, kept_now = kept(key, "judge", build, save_judge, load_judge, tmp_path)
    assert (was_kept, kept_now, len(trained)) == (False, True, 1)
    model, data = build_model(params.model, 1, 8), {s: (t, t) for s, t in targets.items()}
    assert quality_metrics(model, data, cpu, judge=again) == \
        quality_metrics(model, data, cpu, judge=first)

    with_fid = Judge(first.classifier, first.sets, {"forget": (np.arange(3.0), np.eye(3))}, 7)
    save_judge(with_fid, tmp_path / "fid.pt")
    back = load_judge(tmp_path / "fid.pt")
    assert back.fid_max_samples == 7 and back.sets == first.sets
    assert np.array_equal(back.fid_reference["forget"][1], np.eye(3))
