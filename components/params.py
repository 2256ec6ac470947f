"""The schema of params.yaml: every knob of the pipeline, validated once, early.

Unknown keys are refused with the closest known key suggested, so a typo such as
`unlearn.decoupel.lr` fails in `prepare` instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import json
import math
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from components.presets import PRESETS


class ParamsError(ValueError):
    """A user mistake in params.yaml (or a -S override): the message says what and where."""


def _check_methods(names: list[str]) -> list[str]:
    """Refuse names that are no method, suggesting the closest."""
    known = method_names()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown method {name!r} (known: {', '.join(sorted(known))}){hint}")
    return names


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


FILE_DATASETS = ("imagefolder", "places365", "webdataset")  # read from image files


class DataParams(Strict):
    dataset: Literal["fashion-mnist", "cifar10", "digits", "shapes", "imagefolder", "places365",
                     "webdataset"] = Field(
        "fashion-mnist", description="which dataset: the bundled ones, or images read from files "
        "(imagefolder, places365, webdataset: docs/datasets.md)")
    path: str = Field(
        "/usr/share/datasets/fashion-mnist", description="directory of the dataset files, or "
        "s3://bucket/prefix for webdataset (the default: Debian's dataset-fashion-mnist, IDX "
        "files)")
    heldout_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of the train split never trained on: calibrates λ "
        "and is the membership audits' reference")
    max_train: int | None = Field(
        None, gt=0, description="cap on train images for quick runs (null: all)")
    max_test: int | None = Field(None, gt=0, description="cap on test images (null: all)")
    image_size: int | None = Field(
        None, ge=4, description="resize the shorter side to this and centre-crop a square (null: "
        "the images' own size)")
    max_per_class: int | None = Field(
        None, gt=0, description="keep the first N images per class and split (null: all)")
    channels: Literal[1, 3] | None = Field(
        None, description="image-file datasets only: 1 (grey) or 3 (RGB); null: 3")
    endpoint_url: str | None = Field(
        None, description="S3-compatible server for an s3:// data.path (null: AWS_ENDPOINT_URL, "
        "or AWS)")

    @model_validator(mode="after")
    def _file_options(self) -> DataParams:
        if self.channels is not None and self.dataset not in FILE_DATASETS:
            raise ValueError(f"data.channels applies to {', '.join(FILE_DATASETS)} only "
                             f"({self.dataset} has fixed channels)")
        if self.endpoint_url is not None and not self.path.startswith("s3://"):
            raise ValueError("data.endpoint_url applies to an s3:// data.path only")
        return self


class ForgetParams(Strict):
    kind: Literal["class", "sample", "ledger"] = Field(
        "class", description="class: whole classes; sample: a random share of the samples; "
        "ledger: exactly the deletion requests (every kind also forgets what the ledger holds: "
        "ledger/)")
    classes: list[int | str] = Field(
        default_factory=lambda: [7], description="kind=class: class indices or names (7 = sneaker "
        "in Fashion-MNIST)")
    fraction: float = Field(
        0.01, gt=0, lt=1, description="kind=sample: share of the trainable samples to forget")
    preset: Literal["li2024-imagenet", "li2024-places"] | None = Field(
        None, description="Li et al.'s class splits: sets forget.classes to the class list's "
        "first N (docs/datasets.md); null: no preset")
    class_list: str | None = Field(
        None, description="the preset's class file: its N forget classes, then N retain ones")

    @model_validator(mode="after")
    def _preset_classes(self) -> ForgetParams:
        """A preset forgets the class list's first N classes, which the loader puts at
        indices 0..N-1: `classes` becomes those indices."""
        if self.preset is None:
            if self.class_list is not None:
                raise ValueError("forget.class_list is read only with a forget.preset")
            return self
        if self.class_list is None:
            raise ValueError(f"forget.preset {self.preset} needs forget.class_list (a file, one "
                             "class per line: the forget classes first, then the retain ones)")
        if self.kind != "class":
            raise ValueError(f"forget.preset forgets whole classes: forget.kind must be class, "
                             f"not {self.kind}")
        self.classes = list(range(PRESETS[self.preset].forget_classes))
        return self


class BackdoorParams(Strict):
    enabled: bool = Field(True, description="plant the trigger (false: no backdoor audit)")
    fraction: float = Field(
        0.1, gt=0, le=1, description="share of the forget set that carries the trigger")
    trigger_size: int = Field(
        4, ge=1, description="side of the white trigger square, bottom-right (px)")
    pattern_cell: int = Field(4, ge=1, description="cell of the checkerboard target P (px)")
    threshold: float = Field(
        0.5, gt=-1, lt=1, description="an output whose correlation with P exceeds this is a hit")


class AEParams(Strict):
    widths: list[int] = Field(
        default_factory=lambda: [16, 32], min_length=2, max_length=2, description="channels of "
        "the two stride-2 conv stages")
    latent_dim: int = Field(64, ge=1, description="bottleneck size (~216k parameters at 28x28)")


class TransformerParams(Strict):
    """Transformer sizes shared by mae and vqtoken: the heads must divide both widths."""

    dim: int = Field(64, ge=4, description="the encoder's token width")
    depth: int = Field(2, ge=1, description="the encoder's transformer blocks")
    heads: int = Field(4, ge=1, description="attention heads; must divide dim and decoder_dim")
    decoder_dim: int = Field(32, ge=4, description="the decoder's token width")
    decoder_depth: int = Field(1, ge=1, description="the decoder's transformer blocks")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerParams:
        if self.dim % self.heads or self.decoder_dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim}) and "
                             f"decoder_dim ({self.decoder_dim})")
        return self


class MAEParams(TransformerParams):
    patch_size: int = Field(
        4, ge=1, description="side of a patch (px); must divide the image side (8x8 digits: 2)")
    mask_ratio: float = Field(
        0.5, gt=0, lt=1, description="share of the visible patches dropped in training")


class VQTokenParams(TransformerParams):
    patch_size: int = Field(
        4, ge=1, description="one token per patch of this side (px); must divide the image side")
    codebook_size: int = Field(64, ge=2, description="codes in the VQ codebook")
    code_dim: int = Field(16, ge=1, description="width of a code")
    width: int = Field(32, ge=1, description="the tokenizer's conv channels")
    commitment: float = Field(0.25, ge=0, description="VQ-VAE commitment weight")
    mask_ratio: float = Field(
        0.5, gt=0, lt=1, description="share of the visible tokens masked (training and eval loss)")


class DiffusionParams(Strict):
    widths: list[int] = Field(
        default_factory=lambda: [16, 32], min_length=2, max_length=2, description="channels at "
        "full and half resolution ([16, 32]: ~11x the AE's step time at 28x28 on CPU; [32, 64] "
        "was ~39x)")
    time_dim: int = Field(32, ge=2, description="width of the timestep embedding")
    timesteps: int = Field(100, ge=2, description="DDPM steps of the cosine noise schedule")
    sample_steps: int = Field(
        10, ge=1, description="DDIM steps when generating (at most timesteps)")
    eval_draws: int = Field(
        4, ge=1, description="(step, noise) draws averaged in an eval-mode loss")

    @model_validator(mode="after")
    def _fewer_sampler_steps(self) -> DiffusionParams:
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps ({self.sample_steps}) cannot exceed timesteps "
                             f"({self.timesteps})")
        return self


class ModelParams(Strict):
    source: str = Field(
        "train", min_length=1, description="where the model to unlearn comes from: `train` "
        "(the train stage trains it), a model file (docs/byo-model.md; `unlearn import-model` "
        "wraps a plain state dict), or an MLflow model URI of this project's registry "
        "(models:/<name>@<alias> or models:/<name>/<version>)")
    family: Literal["ae", "mae", "vqtoken", "diffusion"] = Field(
        "ae", description="ae (conv autoencoder), mae (ViT masked autoencoder), vqtoken (VQ "
        "tokenizer + masked-token transformer) or diffusion (conditional UNet): components/models/")
    task: Literal["reconstruction", "inpaint", "outpaint"] = Field(
        "reconstruction", description="what the model maps an image to: itself (reconstruction), "
        "or the image with a blanked centre box (inpaint) or border (outpaint) filled in")
    inpaint_box: float = Field(
        0.5, gt=0, lt=1, description="inpaint: side of the blanked centre box / image side")
    outpaint_border: float = Field(
        0.25, gt=0, lt=0.5, description="outpaint: width of the blanked border / image side")
    ae: AEParams = Field(default_factory=AEParams, description="the conv autoencoder (family ae)")
    mae: MAEParams = Field(
        default_factory=MAEParams, description="the ViT masked autoencoder (family mae, "
        "components/models/mae.py)")
    vqtoken: VQTokenParams = Field(
        default_factory=VQTokenParams, description="the VQ tokenizer + masked-token transformer "
        "(family vqtoken, MAGE-like)")
    diffusion: DiffusionParams = Field(
        default_factory=DiffusionParams, description="the conditional UNet denoiser (family "
        "diffusion, Palette-like; DDPM training, DDIM sampling)")


class TrainParams(Strict):
    epochs: int = Field(5, ge=1, description="passes over the training data, at least")
    min_steps: int = Field(
        1000, ge=0, description="optimizer steps at least: a small dataset gets more epochs "
        "(1,437 images at batch 128 are 12 steps an epoch; 5 epochs left every family at the "
        "quality of a blank guess); Fashion-MNIST's 5 epochs are 2,320 steps")
    batch_size: int = Field(128, ge=1, description="images per optimizer step")
    lr: float = Field(1e-3, gt=0, description="Adam step size")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay")
    min_gain_db: float = Field(
        1.0, ge=0, description="the original must beat the best trivial generator (the mean "
        "image; with inpaint/outpaint, the visible pixels copied over it) by this many dB of "
        "held-out PSNR, or the pipeline stops before unlearning: an audit of a model that "
        "learned nothing passes and means nothing")


class NoiseParams(Strict):
    epsilon: float | None = Field(
        None, description="ε of the bound; σ follows from (ε, δ, Δ = η·T·C); null: no noise (ε = "
        "∞)")
    delta: float = Field(1e-5, description="δ of the bound")

    @field_validator("epsilon")
    @classmethod
    def _positive_epsilon(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError("epsilon must be a finite number > 0 (or null for no noise)")
        return v

    @field_validator("delta")
    @classmethod
    def _delta_in_unit(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("delta must lie in (0, 1)")
        return v


class DecoupleParams(Strict):
    threshold: Literal["pair", "quantile"] = Field(
        "pair", description="pair: λ_i = the loss a never-seen pair would have "
        "(components/ood.py); quantile: one λ = a held-out loss quantile (the literal reading)")
    quantile: float = Field(
        0.5, gt=0, lt=1, description="q: of the Lipschitz fit (threshold pair) or of the held-out "
        "loss (threshold quantile)")
    pool_size: int = Field(
        2000, ge=10, description="held-out pairs standing in for never-seen ones (threshold pair)")
    stop: Literal["sample", "mean"] = Field(
        "sample", description="sample: a pair leaves the ascent at its λ_i; mean: stop when the "
        "mean forget loss reaches λ")
    params: Literal["encoder", "decoder", "all"] = Field(
        "all", description="parameter group the ascent moves")
    lr: float = Field(0.01, gt=0, description="η: SGD step of the ascent")
    clip_norm: float = Field(
        1.0, gt=0, description="C: gradient clip, so each step moves the weights at most η·C")
    max_steps: int = Field(10, ge=0, description="T: step budget of the ascent")
    batch_size: int = Field(128, ge=1, description="forget pairs per ascent step")
    probe_size: int = Field(
        512, ge=1, description="forget samples on which the stop rule is checked")
    check_every: int = Field(5, ge=1, description="steps between stop-rule checks")
    memorised_ratio: float = Field(
        10.0, gt=1, description="κ: a forget pair is memorised when λ_i >= κ · its loss "
        "under the original (components/ood.py memorised_residual)")
    coherence: float = Field(
        2.0, gt=0, description="z: a pixel of the memorised residual is kept when its mean "
        "exceeds z standard deviations")
    noise: NoiseParams = Field(
        default_factory=NoiseParams, description="Gaussian noise on the ascended weights, for an "
        "(ε, δ) bound on the ascent (docs/certificate.md)")


class DecoupleLiteralParams(Strict):
    quantile: float = Field(
        0.95, gt=0, lt=1, description="λ = this quantile of the original's held-out loss")
    max_steps: int = Field(200, ge=1, description="step budget of the ascent")


class FinetuneParams(Strict):
    steps: int = Field(
        120, ge=0, description="retention steps at most (the budget may cut them: Fashion-MNIST "
        "98)")
    lr: float = Field(1e-3, gt=0, description="Adam step size")
    batch_size: int = Field(128, ge=1, description="retain pairs per step")
    distill: float = Field(
        0.0, ge=0, description="weight of ||f(x_r) - f0(x_r)||², distillation from the original "
        "(0: off)")
    keep_decoupled: float = Field(
        0.003, ge=0, description="γ: weight of the mean share of its decoupling a forget pair "
        "has undone, relu(λ_i - l_i) / λ_i (components/retention.py); 0: plain fine-tuning")
    forget_batch_size: int = Field(32, ge=1, description="forget pairs per step for the γ term")
    budget: float | None = Field(
        0.065, gt=0, description="cap on retention's sample gradients, as a share of what "
        "retraining on the retain set costs under `train` (epochs x images): steps are cut to "
        "fit; null: `steps` as given")
    transplant: float = Field(
        0.3, ge=0, description="τ: weight of retain images carrying the memorised residual "
        "as content (components/retention.py); 0: the trigger is suppressed, not forgotten")
    transplant_target: float = Field(
        0.5, ge=0, le=1, description="α: the share of the residual the target reproduces "
        "(0: ignore it, 1: reproduce it)")
    transplant_share: float = Field(
        0.5, gt=0, lt=1, description="share of each retain batch that carries the residual")


class GradientAscentParams(Strict):
    steps: int = Field(25, ge=1, description="SGD ascent steps")
    lr: float = Field(0.01, gt=0, description="SGD step size")
    clip_norm: float = Field(1.0, gt=0, description="gradient clip (L2 norm)")


class NegGradPlusParams(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(1e-3, gt=0, description="Adam step size")
    beta: float = Field(
        0.99, gt=0, lt=1, description="weight of the retain loss; 1 - beta on the forget ascent")


class Li2024Params(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, description="AdamW step size")
    alpha_r: float = Field(1.0, ge=0, description="weight of the retain term")
    alpha_f: float = Field(0.2, ge=0, description="weight of the forget term")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    clip_norm: float = Field(3.0, gt=0, description="gradient clip (L2 norm)")


class RandomEncoderParams(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(3e-3, gt=0, description="Adam step size")
    alpha_r: float = Field(1.0, ge=0, description="weight of the retain term")
    alpha_f: float = Field(0.2, ge=0, description="weight of the forget term")
    stats_samples: int = Field(
        2048, ge=2, description="retain samples for the teacher embedding's mean and std")


class RetainLabelParams(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(3e-4, gt=0, description="Adam step size")


class SalunParams(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(1e-3, gt=0, description="Adam step size")
    sparsity: float = Field(
        0.5, gt=0, le=1, description="share of the weights (largest |gradient of the forget "
        "loss|) that move")


class ScrubParams(Strict):
    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(1e-3, gt=0, description="Adam step size")
    max_steps: int = Field(
        30, ge=0, description="max (forget) steps, alternating with min steps at the start")
    alpha: float = Field(
        1.0, ge=0, description="weight of the distance to the teacher on retain inputs")


class RetrainParams(Strict):
    epochs: int | None = Field(None, ge=1, description="training epochs (null: train.epochs)")


class CertifiedParams(Strict):
    """`certified`: noisy fine-tuning on the retain set whose (ε, δ) certificate covers the
    released model (Koloskova et al., ICML 2025; components/methods/certified.py)."""

    epsilon: float = Field(16.0, gt=0, description="ε of the certificate (finite)")
    delta: float = Field(1e-5, gt=0, lt=1, description="δ of the certificate")
    steps: int = Field(100, ge=1, description="T: noisy clipped SGD steps on the retain set")
    lr: float = Field(0.01, gt=0, description="η: the noisy steps' SGD step")
    clip_norm: float = Field(1.0, gt=0, description="C1: each step's gradient is clipped to "
                             "this L2 norm")
    start_radius: float = Field(1.0, gt=0, description="C0: the start model is projected onto "
                                "the ball of this L2 radius around a public initialisation")
    batch_size: int = Field(128, ge=1, description="retain pairs per step (both phases)")
    finish_steps: int = Field(800, ge=0, description="noiseless Adam steps on the retain set "
                              "after the noisy ones (post-processing: the bound holds)")
    finish_lr: float = Field(1e-3, gt=0, description="Adam step of the finishing phase")

    @field_validator("epsilon")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("epsilon must be finite: ε = ∞ certifies nothing")
        return v


class UnlearnParams(Strict):
    """`method`, then one settings block per method, named as the method: the blocks are the
    list of methods (method_names), and the registry (components/methods) holds one method
    for each. Their order is the benchmark's default row order."""

    method: str = Field(
        "decouple", description="the unlearning method: the name of one of the unlearn.* "
        "settings blocks")
    decouple: DecoupleParams = Field(
        default_factory=DecoupleParams, description="the seed method's forgetting phase (stage "
        "decouple)")
    decouple_literal: DecoupleLiteralParams = Field(
        default_factory=DecoupleLiteralParams, description="the seed method read literally (its "
        "other settings from unlearn.decouple)")
    li2024: Li2024Params = Field(
        default_factory=Li2024Params, description="Li et al. 2024: their code's defaults, the "
        "budget scaled")
    gradient_ascent: GradientAscentParams = Field(
        default_factory=GradientAscentParams, description="gradient ascent on the forget loss, a "
        "fixed budget")
    neggrad_plus: NegGradPlusParams = Field(
        default_factory=NegGradPlusParams, description="NegGrad+: joint retain descent and forget "
        "ascent")
    random_encoder: RandomEncoderParams = Field(
        default_factory=RandomEncoderParams, description="encoder outputs on forget inputs pulled "
        "to noise")
    retain_label: RetainLabelParams = Field(
        default_factory=RetainLabelParams, description="forget inputs trained towards random "
        "retain targets")
    finetune: FinetuneParams = Field(
        default_factory=FinetuneParams, description="knowledge retention, the second phase of "
        "every method that has one (stage finetune), and the finetune baseline")
    salun: SalunParams = Field(
        default_factory=SalunParams, description="SalUn: relabelling on the weights most salient "
        "to the forget loss")
    scrub: ScrubParams = Field(
        default_factory=ScrubParams, description="SCRUB: away from the teacher on forget inputs, "
        "with it on retain inputs")
    retrain: RetrainParams = Field(
        default_factory=RetrainParams, description="retraining from scratch on the retain set "
        "(the reference)")
    certified: CertifiedParams = Field(
        default_factory=CertifiedParams, description="certified unlearning: the (ε, δ) bound "
        "covers the released model (docs/certificate.md)")

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _check_methods([v])[0]


def method_names() -> list[str]:
    """Every valid `unlearn.method`: the names of UnlearnParams' settings blocks."""
    return [name for name in UnlearnParams.model_fields if name != "method"]


# Every audit figure lies in [0, 1] and the membership and OOD scores of a retrained model
# sit near 0.5 (no signal): a tolerance above 0.5 accepts every value there, and an ASR
# tolerance above 0.5 accepts a backdoor that still fires on most triggered inputs. Looser
# than the gate's policy.yaml but within these bounds is possible, and promote says so.
MAX_TOLERANCE = 0.5
# a trigger-fidelity tolerance wider than this accepts the suppressing model (12 dB below the
# retrained one on Fashion-MNIST, components/audits.py)
MAX_TRIGGER_DB = 6.0


class ToleranceParams(Strict):
    backdoor_asr: float = Field(
        0.05, ge=0, le=MAX_TOLERANCE, description="backdoor attack success rate above the "
        "reference's")
    mia_auc: float = Field(
        0.05, ge=0, le=MAX_TOLERANCE, description="membership-inference AUC, either side of the "
        "reference's")
    mia_efficacy: float = Field(
        0.1, ge=0, le=MAX_TOLERANCE, description="membership-inference efficacy, either side of "
        "the reference's")
    ood_auroc: float = Field(
        0.1, ge=0, le=MAX_TOLERANCE, description="OOD AUROC, either side of the reference's")
    trigger_psnr: float = Field(
        1.0, ge=0, le=MAX_TRIGGER_DB, description="dB, |unlearned - retrained| PSNR on triggered "
        "held-out inputs (two retrainings differ by 0.3-0.9 dB on Fashion-MNIST: "
        "components/audits.py)")


class AbsoluteParams(Strict):
    backdoor_asr: float = Field(
        0.05, ge=0, le=1, description="backdoor attack success rate at most")
    mia_auc: float = Field(0.55, ge=0, le=1, description="membership-inference AUC at most")
    ood_auroc: float = Field(0.95, ge=0, le=1, description="OOD AUROC at most")
    trigger_psnr: float = Field(
        1.0, ge=0, le=MAX_TRIGGER_DB, description="dB a model may fall below trigger_content_psnr "
        "(the trigger reproduced as content)")
    z: float = Field(3.0, gt=0, le=6.0, description="standard errors the forget set's "
                     "membership and OOD figures may stand from the held-out data's "
                     "(components/verdict.py); wider than 6 passes anything at these sizes")


class AuditParams(Strict):
    reference: Literal["retrained", "none"] = Field(
        "retrained", description="what the verdict reads the unlearned model against: a model "
        "retrained without the forget set (the train stage trains it; the demo and the "
        "benchmark, which exist to measure), or none: held-out data only, the production "
        "setting where retraining is what unlearning avoids (components/verdict.py)")
    max_samples: int = Field(
        2000, ge=10, description="samples per set for the loss-based audits and the attack "
        "success rate")
    tolerance: ToleranceParams = Field(
        default_factory=ToleranceParams, description="the verdict against the retrained "
        "reference: the attack success rate at most the reference's + its tolerance, the others "
        "within theirs on either side")
    absolute: AbsoluteParams = Field(
        default_factory=AbsoluteParams, description="the reference-free verdict: upper bounds on "
        "held-out data alone (components/verdict.py)")


class ClassifierParams(Strict):
    max_samples: int = Field(
        4000, ge=10, description="retain + forget training images it learns from (a seeded draw)")
    epochs: int = Field(3, ge=1, description="training epochs")
    batch_size: int = Field(128, ge=1, description="images per step")
    lr: float = Field(3e-3, gt=0, description="Adam step size")
    width: int = Field(16, ge=4, description="channels of the first conv stage (features: 4x this)")


class EvaluateParams(Strict):
    max_samples: int = Field(
        2000, ge=10, description="samples per set for PSNR, SSIM, FD and cosine")
    fid: bool = Field(
        False, description="TF-Inception FID on the forget and retain sets (needs the [fid] extra)")
    fid_max_samples: int = Field(
        500, ge=10, description="samples per set for FID (Inception: ~0.2-0.5 s per image on a "
        "CPU core)")
    classifier: ClassifierParams = Field(
        default_factory=ClassifierParams, description="the domain classifier behind the *_fd and "
        "*_cosine metrics")


class RayParams(Strict):
    address: str | None = Field(
        None, description="Ray cluster address (null: RAY_ADDRESS, or a local Ray with this "
        "machine's CPUs)")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data parallel)")
    use_gpu: Literal["auto", True, False] = Field(
        "auto", description="train on GPUs (auto: when there is one)")
    data_on_device: Literal["auto", True, False] = Field(
        "auto", description="a loop's pairs held on the GPU whole (auto: when they take at most a "
        "quarter of its free memory), else pinned host batches")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs per worker (null: the cluster's CPUs shared among the "
        "workers)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement of the workers (STRICT_SPREAD: one per node)")
    storage_path: str = Field(
        ".ray_results", description="Ray Train checkpoints: a path or s3://bucket/prefix")
    max_failures: int = Field(
        1, ge=0, description="restarts of a failed job from its last checkpoint")
    checkpoint_every: int = Field(
        50, ge=1, description="steps between checkpoints of step-based loops")
    job_mode: Literal["auto", "local", "workers"] = Field(
        "auto", description="how a job runs: workers = a Ray Train job with its own worker "
        "processes, restarted from its last checkpoint on a failure (max_failures); local = "
        "Ray Train's local mode, the same loop in the stage's process (no Ray start, no "
        "process start-up: ~13 s less per job here, no restarts); auto = local for the "
        "unlearning jobs (forget, retain) and the audits' scoring of one worker on this "
        "machine (no address of another machine's cluster, a local storage_path), workers for "
        "training and the benchmark's cases")

    @model_validator(mode="after")
    def _local_is_one_process(self) -> RayParams:
        if self.job_mode == "local" and self.num_workers > 1:
            raise ValueError("ray.job_mode local runs one loop in the stage's process: "
                             "num_workers must be 1 (or job_mode auto | workers)")
        if self.job_mode == "local" and "://" in self.storage_path:
            raise ValueError("ray.job_mode local writes checkpoints to a local storage_path, "
                             f"not {self.storage_path} (or job_mode auto | workers)")
        return self


class MlflowParams(Strict):
    experiment: str = Field(
        "i2i-unlearning", description="MLflow experiment of the pipeline's runs")
    model_name: str | None = Field(
        None, min_length=1, description="registered model each run adds a version to (alias "
        "candidate); null: <dataset>-<family>[-<task> unless reconstruction]; a name given here "
        "is used as is, even for versions of another family, task or image shape")


class ScheduleParams(Strict):
    cron: str = Field(
        "0 3 * * *", description="when `unlearn serve` runs a cycle (5-field cron, UTC)")
    start_from: Literal["champion", "original"] = Field(
        "champion", description="champion: unlearn only new requests, from the current champion; "
        "original: every request, from the original model")
    workdir: str = Field(
        ".cycles", description="each cycle's own git clone (DVC locks a workspace per repro)")
    branch: str = Field(
        "unlearning", min_length=1, description="the branch each cycle commits dvc.lock and the "
        "ledger to")
    retries: int = Field(
        2, ge=0, description="retries of a cycle's push and register steps before it fails")
    retry_delay_s: float = Field(10.0, ge=0, description="seconds between those retries")
    audit_reference: Literal["none", "retrained"] = Field(
        "none", description="audit.reference of a cycle: none trains no model (a cycle "
        "costs a fraction of a retraining); `unlearn calibrate` checks it against a "
        "retrained reference when asked")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str) -> str:
        if len(v.split()) != 5:
            raise ValueError(f"cron must have 5 fields (minute hour day month weekday), got {v!r}")
        return v




DEFAULT_SCENARIOS: dict[str, dict[str, Any]] = {
    # forget one class, a backdoor planted in a tenth of it
    "class": {"forget": {"kind": "class", "classes": [7]},
              "backdoor": {"enabled": True, "fraction": 0.1}},
    # the same class with no backdoor, as a production request comes: the hinge's old
    # batch-normalised form over-forgot it (forget PSNR 19.5 dB vs 20.4 retrained)
    "clean_class": {"forget": {"kind": "class", "classes": [7]},
                    "backdoor": {"enabled": False}},
    # forget 1 % of the training samples, the backdoor planted in half of exactly those
    # (all of them would leave no clean forget sample for the membership audit)
    "sample": {"forget": {"kind": "sample", "fraction": 0.01},
               "backdoor": {"enabled": True, "fraction": 0.5}},
    # 2,000 images trained 100 epochs: the original's MIA AUC on the forget set is ~0.66
    "memorize": {"data": {"max_train": 2000, "heldout_fraction": 0.3},
                 "forget": {"kind": "sample", "fraction": 0.05},
                 "backdoor": {"enabled": False}, "train": {"epochs": 100}},
}


class VariantParams(Strict):
    method: str = Field(description="the method the row runs")
    params: dict[str, Any] = Field(
        default_factory=dict, description="a partial params tree merged over the scenario's")

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        return _check_methods([v])[0]


CERTIFIED_BUDGETS = (1, 4, 16)  # ε of the benchmark's certified rows
DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    # the ablations of `decouple` (make ablation): what the retention may change, the
    # threshold's scale and the stop rule, and whether the ascent is needed at all
    "decouple_keep0": {"method": "decouple",
                       "params": {"unlearn": {"finetune": {"keep_decoupled": 0.0}}}},
    # the hinge at the previous γ (relative per pair since this round), and retention
    # without the budget against retraining (120 steps wherever the set)
    "decouple_gamma01": {"method": "decouple",
                         "params": {"unlearn": {"finetune": {"keep_decoupled": 0.01}}}},
    "decouple_no_budget": {"method": "decouple",
                           "params": {"unlearn": {"finetune": {"budget": None}}}},
    # the trigger-fidelity ablations: no transplant (the backdoor suppressed), a target that
    # ignores the residual or reproduces it whole
    "decouple_no_transplant": {"method": "decouple",
                               "params": {"unlearn": {"finetune": {"transplant": 0.0}}}},
    "decouple_ignore": {"method": "decouple",
                        "params": {"unlearn": {"finetune": {"transplant_target": 0.0}}}},
    "decouple_reproduce": {"method": "decouple",
                           "params": {"unlearn": {"finetune": {"transplant_target": 1.0}}}},
    "decouple_quantile": {"method": "decouple", "params": {"unlearn": {"decouple": {
        "threshold": "quantile", "quantile": 0.95, "stop": "mean"}}}},
    "decouple_no_ascent": {"method": "decouple",
                           "params": {"unlearn": {"decouple": {"max_steps": 0}}}},
    # the certified mode's cost at three budgets
    **{f"certified_eps{e}": {"method": "certified",
                             "params": {"unlearn": {"certified": {"epsilon": float(e)}}}}
       for e in CERTIFIED_BUDGETS},
}


def default_benchmark_rows() -> list[str]:
    """Every method, in UnlearnParams' order; `certified` as its variants at three budgets,
    since a certificate is read at its ε."""
    return [row for name in method_names()
            for row in ([f"certified_eps{e}" for e in CERTIFIED_BUDGETS]
                        if name == "certified" else [name])]


class BenchmarkParams(Strict):
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="seeds of each scenario")
    methods: list[str] = Field(
        default_factory=default_benchmark_rows, description="the rows: method names "
        "(unlearn.method) or variant names; default: every method in unlearn's order, certified "
        "as its three variants")
    parallel_jobs: int = Field(
        2, ge=1, description="Ray Train jobs at once (one per scenario and seed)")
    scenarios: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: dict(DEFAULT_SCENARIOS), description="each a partial params tree "
        "merged over the blocks above")
    variants: dict[str, VariantParams] = Field(
        default_factory=lambda: {k: VariantParams(**v) for k, v in DEFAULT_VARIANTS.items()},
        description="rows that run a method with other params (make ablation)")

    @model_validator(mode="after")
    def _known_rows(self) -> BenchmarkParams:
        _check_methods([m for m in self.methods if m not in self.variants])
        return self


class PerfParams(Strict):
    repeats: int = Field(
        3, ge=1, description="runs of each side-by-side measurement, for the spread")
    forget_fractions: list[float] = Field(
        default_factory=lambda: [0.01, 0.05, 0.1, 0.3], min_length=1, description="scaling: "
        "forget.kind=sample at these shares")

    @field_validator("forget_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not all(0 < f < 1 for f in v):
            raise ValueError(f"every forget fraction must lie in (0, 1), got {v}")
        return v


class FamiliesParams(Strict):
    """`make families`: each model family through `dvc exp run` on an ImageFolder export."""

    dataset: Literal["fashion-mnist", "digits", "shapes", "cifar10"] = Field(
        "fashion-mnist", description="the dataset exported to ImageNet's layout (train/<class>/, "
        "val/<class>/)")
    source_path: str = Field(
        "/usr/share/datasets/fashion-mnist", description="where that dataset is read from")
    path: str = Field(
        "data/imagefolder", description="where the export goes (made once, then reused)")
    per_class: int | None = Field(400, gt=0, description="train images per class")
    val_per_class: int | None = Field(50, gt=0, description="val images per class (the test split)")
    names: list[Literal["ae", "mae", "vqtoken", "diffusion"]] = Field(
        default_factory=lambda: ["mae", "vqtoken", "diffusion"], min_length=1, description="the "
        "families run")
    set: dict[str, Any] = Field(
        default_factory=lambda: {"model.task": "inpaint", "train.epochs": 30}, description="-S "
        "overrides of every run: the task, a CPU-sized budget")
    min_forget_drop_db: float = Field(
        0.5, description="the check: forget PSNR drops at least this many dB (unlearned vs "
        "original) ...")
    max_retain_drop_db: float = Field(
        0.5, description="... while retain PSNR drops at most this many dB")


class Params(Strict):
    seed: int = Field(
        0, description="seed of every random draw: splits, poisoning, initialisation, batches")
    data: DataParams = Field(
        default_factory=DataParams, description="the dataset and how much of it is read")
    forget: ForgetParams = Field(default_factory=ForgetParams, description="what to forget")
    backdoor: BackdoorParams = Field(
        default_factory=BackdoorParams, description="the data-poisoning audit: a trigger planted "
        "in part of the forget set")
    model: ModelParams = Field(
        default_factory=ModelParams, description="the model to unlearn: where it comes from, its "
        "family and task")
    train: TrainParams = Field(
        default_factory=TrainParams, description="training of the original model and of the "
        "retrained reference")
    unlearn: UnlearnParams = Field(
        default_factory=UnlearnParams, description="the unlearning method and each method's "
        "settings")
    audit: AuditParams = Field(
        default_factory=AuditParams, description="the audits and the verdict that gates "
        "registration")
    evaluate: EvaluateParams = Field(
        default_factory=EvaluateParams, description="the quality metrics of the evaluate stage")
    ray: RayParams = Field(
        default_factory=RayParams, description="where and how the training and unlearning jobs "
        "run (Ray Train)")
    mlflow: MlflowParams = Field(
        default_factory=MlflowParams, description="the MLflow experiment and registered model")
    schedule: ScheduleParams = Field(
        default_factory=ScheduleParams, description="the deletion-request cycle (`unlearn run "
        "--once`, `unlearn serve`)")
    benchmark: BenchmarkParams = Field(
        default_factory=BenchmarkParams, description="`make benchmark`: every row x seed x "
        "scenario")
    perf: PerfParams = Field(
        default_factory=PerfParams, description="`make bench-perf`: overhead, cost and scaling "
        "(reports/perf.*)")
    families: FamiliesParams = Field(
        default_factory=FamiliesParams, description="`make families`: each model family through "
        "`dvc exp run` on an ImageFolder export (reports/families.*)")

    @model_validator(mode="after")
    def _certifiable(self) -> Params:
        """The certified mode noises every weight and restores them by fine-tuning; the
        vqtoken tokenizer is out of reach of every unlearning objective (models/vqtoken.py),
        so its weights would stay noise."""
        if self.unlearn.method == "certified" and self.model.family == "vqtoken":
            raise ValueError("unlearn.method certified cannot restore the vqtoken tokenizer "
                             "after its noise (no I2I loss trains it): use ae, mae or diffusion")
        return self


def registered_model_name(params: Params) -> str:
    """The registered model a run adds its version to: `mlflow.model_name` when set, else
    `<dataset>-<family>`, with `-<task>` unless the task is reconstruction (the demo's
    default resolves to `fashion-mnist-ae`). One name per model line keeps an inpainting
    ViT on an ImageFolder from becoming a version of the Fashion-MNIST autoencoder."""
    if params.mlflow.model_name:
        return params.mlflow.model_name
    task = "" if params.model.task == "reconstruction" else f"-{params.model.task}"
    return f"{params.data.dataset}-{params.model.family}{task}"


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at `loc` (the parent of a bad key) in the schema."""
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _field_at(loc: tuple) -> FieldInfo | None:
    """The schema field a validation error's `loc` points at (None: not a field, e.g. a key
    of benchmark.scenarios); a mapping of blocks (benchmark.variants) is stepped over."""
    model: type[BaseModel] | None = Params
    field = None
    keyed = False  # the next part is a mapping's key, not a field
    for part in loc:
        if keyed:
            keyed = False
            continue
        if model is None or (field := model.model_fields.get(str(part))) is None:
            return None
        model, keyed = _block(field.annotation)
    return field


def _block(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the settings block a field holds, whether keyed by name): DataParams ->
    (DataParams, False), dict[str, VariantParams] -> (VariantParams, True), a leaf -> None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is dict:
        return _block(get_args(annotation)[1])[0], True
    return None, False


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    if not loc:  # a rule across sections (Params' own validators) names its keys itself
        return err["msg"].removeprefix("Value error, ")
    dotted = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        known = _known_keys(Params, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
        return f"unknown key '{dotted}'{hint}"
    line = f"'{dotted}': {err['msg']} (got {err.get('input')!r})"
    field = _field_at(loc)
    # a leaf's meaning helps fix its value; a block's own rules name their keys already
    if field is not None and field.description and _block(field.annotation)[0] is None:
        line += f"\n    ({dotted}: {field.description})"
    return line


def merge_tree(base: dict, update: dict) -> dict:
    """A copy of `base` with `update` merged in, nested mappings key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge_tree(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else value
    return out


def override(params: Params, update: dict[str, Any]) -> Params:
    """Params with a partial tree merged in, validated again (a ParamsError names the key)."""
    return parse_params(merge_tree(params.model_dump(mode="json"), update))


def parse_params(raw: dict[str, Any] | None) -> Params:
    """Validate a params mapping.

    Args:
        raw: the parsed YAML mapping (None for an empty file).

    Returns:
        The validated Params.

    Raises:
        ParamsError: with one line per problem, naming the dotted key.
    """
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError("invalid params.yaml:\n  " + "\n  ".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml.

    Args:
        path: the YAML file.

    Returns:
        The validated Params.
    """
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw)


def _type_name(annotation: Any) -> str:
    """A field's type as params.yaml spells its values: `int`, `pair | quantile`, `null`."""
    if annotation is type(None):
        return "null"
    if get_origin(annotation) is Literal:
        return " \\| ".join(json.dumps(v) if not isinstance(v, str) else v
                            for v in get_args(annotation))
    if get_origin(annotation) in (UnionType, Union):
        return " \\| ".join(_type_name(a) for a in get_args(annotation))
    if get_origin(annotation) is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if get_origin(annotation) is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    """The field's numeric and length limits, as `> 0, ≤ 1` (empty when none)."""
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥",
             "max_length": "length ≤"}
    return ", ".join(f"{sign} {getattr(m, attr)}" for m in field.metadata
                     for attr, sign in signs.items() if hasattr(m, attr))


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: `|` ends a cell, `<name>` reads as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _settings_tables(model: type[BaseModel], prefix: str, intro: str) -> list[str]:
    """The table of `model`'s leaves under the heading `prefix`, then one per block in it."""
    rows, blocks = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        block, keyed = _block(field.annotation)
        if block is not None and not keyed:
            blocks.append((block, key, field.description or ""))
            continue
        default = json.dumps(to_jsonable_python(field.get_default(call_default_factory=True)),
                             ensure_ascii=False)
        if len(default) > 60:  # the scenario and variant trees
            default = "(see params.yaml)"
        kind = _type_name(field.annotation)
        limits = _bounds(field)
        rows.append(f"| `{key}` | {kind}{', ' + limits if limits else ''} | `{_cell(default)}` "
                    f"| {_cell(field.description or '')} |")
    out = []
    if rows:
        out += [f"## {prefix or 'top level'}", ""] + ([_cell(intro), ""] if intro else [])
        out += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    for block, key, text in blocks:
        out += _settings_tables(block, key, text)
    return out


def settings_markdown() -> str:
    """docs/settings.md: every key of params.yaml, a table per section (key, type, default,
    description), generated from this schema so the docs cannot drift from it."""
    head = ["# Settings", "",
            "Every key of `params.yaml`, generated from its schema, `components/params.py` "
            "(`python -m components.params --markdown > docs/settings.md`; a test fails when "
            "this file is out of date). Limits are checked when the file is read: a value "
            "outside them, or an unknown key, stops the pipeline with the key named.", ""]
    return "\n".join(head + _settings_tables(Params, "", "")).rstrip() + "\n"


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Validate params.yaml, or print docs/settings.md")
    parser.add_argument("path", nargs="?", default="params.yaml")
    parser.add_argument("--markdown", action="store_true",
                        help="print the settings table (docs/settings.md) instead")
    args = parser.parse_args()
    if args.markdown:
        print(settings_markdown(), end="")
    else:
        print(f"{args.path}: valid (unlearn.method {load_params(args.path).unlearn.method})")
