"""Metrics and audits on inputs whose answer is known."""

import pytest
import torch

from components.audits import backdoor_asr, mia_auc, mia_efficacy, ood_auroc, triggered_inputs
from components.backdoor import attack_success_rate, pattern_similarity, target_pattern
from components.metrics import GAP_TERMS, psnr, retrain_gap, ssim
from components.tasks import TaskSpec


def test_psnr_of_known_error():
    target = torch.zeros(4, 1, 8, 8)
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert psnr(target + 0.01, target) == pytest.approx(40.0, abs=1e-3)


def test_ssim_identical_is_one_and_noise_is_lower():
    x = torch.rand(4, 1, 28, 28)
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    assert ssim(torch.rand(4, 1, 28, 28), x) < 0.2
    small = torch.rand(3, 1, 8, 8)  # 8x8 digits need a window smaller than 11
    assert ssim(small, small) == pytest.approx(1.0, abs=1e-5)


def test_retrain_gap_hand_computed():
    retrained = {k: 0.5 for k in GAP_TERMS} | {"forget_psnr": 20.0, "retain_psnr": 21.0,
                                               "test_psnr": 21.0}
    assert retrain_gap(retrained, retrained) == 0.0
    model = dict(retrained, forget_psnr=25.0, backdoor_asr=1.0)  # +5 dB -> 0.5, ASR +0.5
    assert retrain_gap(model, retrained) == pytest.approx((0.5 + 0.5) / len(GAP_TERMS))


def test_mia_auc_members_with_lower_loss_score_one():
    members, outsiders = torch.full((50,), 0.01), torch.full((50,), 0.2)
    assert mia_auc(members, outsiders) == pytest.approx(1.0)
    assert mia_auc(outsiders, members) == pytest.approx(0.0)
    same = torch.rand(500, generator=torch.Generator().manual_seed(0))
    assert mia_auc(same[:250], same[250:]) == pytest.approx(0.5, abs=0.07)


def test_ood_auroc_forget_with_higher_loss_scores_one():
    assert ood_auroc(torch.full((10,), 0.5), torch.full((10,), 0.1)) == pytest.approx(1.0)
    assert ood_auroc(torch.full((10,), 0.1), torch.full((10,), 0.1)) == pytest.approx(0.5)


def test_attack_success_rate_on_pattern_and_on_images():
    pattern = target_pattern(1, 8, 8, 2)
    assert set(pattern.unique().tolist()) == {0.0, 1.0}
    assert pattern[0, 0, 0] != pattern[0, 0, 2]  # cells of 2 px alternate
    hits = pattern.expand(5, 1, 8, 8) * 0.8 + 0.1  # scaled P still correlates perfectly
    assert pattern_similarity(hits, pattern) == pytest.approx(torch.ones(5))
    assert attack_success_rate(hits, pattern, 0.5) == 1.0
    smooth = torch.linspace(0, 1, 64).reshape(1, 1, 8, 8).expand(5, 1, 8, 8)
    assert attack_success_rate(smooth, pattern, 0.5) == 0.0
    spec = TaskSpec(pattern_cell=2, trigger_size=2)
    assert backdoor_asr(torch.cat([hits, smooth]), spec, 0.5) == pytest.approx(0.5)


def test_triggered_inputs_carry_the_trigger_under_every_task():
    images = torch.zeros(2, 1, 16, 16)
    for task in ("reconstruction", "inpaint", "outpaint"):
        out = triggered_inputs(images, TaskSpec(task=task, trigger_size=3, outpaint_border=0.25))
        assert out.sum() == 2 * 9, task  # the 3x3 white square survives the task's mask


def test_learned_mia_calls_high_loss_samples_non_members():
    gen = torch.Generator().manual_seed(0)
    retain = 0.01 * (1 + 0.1 * torch.rand(300, generator=gen))  # members: low loss
    test = 0.05 * (1 + 0.1 * torch.rand(300, generator=gen))    # non-members: high loss
    assert mia_efficacy(test[:100], retain, test) > 0.95  # look never-seen
    assert mia_efficacy(retain[:100], retain, test) < 0.05  # look like members


def test_learned_mia_is_stable_where_members_cannot_be_told_apart():
    """No overfitting: retain and test losses from one distribution. The hard share of
    non-member calls depends on where an arbitrary threshold falls (0.00 vs 0.43 for two
    retrainings on Fashion-MNIST); the soft share is 0.5 give or take sampling noise."""
    shares = []
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        retain, test, forget = (0.01 * (1 + torch.rand(n, generator=gen)) for n in (500, 500, 200))
        shares.append(mia_efficacy(forget, retain, test))
    assert all(abs(s - 0.5) < 0.05 for s in shares)


def test_auc_standard_error_matches_hanley_mcneil():
    """Hanley & McNeil (1982), table 1 style values: AUC 0.5 with 100 + 100 samples has
    SE sqrt((0.25 + 2 * 99 * (1/3 - 1/4)) / 10^4) = 0.0409; more samples, smaller error."""
    from components.verdict import auc_standard_error

    assert auc_standard_error(0.5, 100, 100) == pytest.approx(0.0409, abs=1e-4)
    assert auc_standard_error(0.5, 5374, 600) < auc_standard_error(0.5, 2, 600)
