"""The schema of params.yaml: every knob of the pipeline, validated once, early.

Unknown keys are refused with the closest known key suggested, so a typo such as
`unlearn.decoupel.lr` fails in `prepare` instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
                     "webdataset"] = "fashion-mnist"
    path: str = "/usr/share/datasets/fashion-mnist"
    heldout_fraction: float = Field(0.1, gt=0, lt=0.5)
    max_train: int | None = Field(None, gt=0)
    max_test: int | None = Field(None, gt=0)
    image_size: int | None = Field(None, ge=4)
    max_per_class: int | None = Field(None, gt=0)
    channels: Literal[1, 3] | None = None
    endpoint_url: str | None = None

    @model_validator(mode="after")
    def _file_options(self) -> DataParams:
        if self.channels is not None and self.dataset not in FILE_DATASETS:
            raise ValueError(f"data.channels applies to {', '.join(FILE_DATASETS)} only "
                             f"({self.dataset} has fixed channels)")
        if self.endpoint_url is not None and not self.path.startswith("s3://"):
            raise ValueError("data.endpoint_url applies to an s3:// data.path only")
        return self


class ForgetParams(Strict):
    kind: Literal["class", "sample", "ledger"] = "class"
    classes: list[int | str] = Field(default_factory=lambda: [7])
    fraction: float = Field(0.01, gt=0, lt=1)
    preset: Literal["li2024-imagenet", "li2024-places"] | None = None
    class_list: str | None = None

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
    enabled: bool = True
    fraction: float = Field(0.1, gt=0, le=1)
    trigger_size: int = Field(4, ge=1)
    pattern_cell: int = Field(4, ge=1)
    threshold: float = Field(0.5, gt=-1, lt=1)


class AEParams(Strict):
    widths: list[int] = Field(default_factory=lambda: [16, 32], min_length=2, max_length=2)
    latent_dim: int = Field(64, ge=1)


class TransformerParams(Strict):
    """Transformer sizes shared by mae and vqtoken: the heads must divide both widths."""

    dim: int = Field(64, ge=4)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    decoder_dim: int = Field(32, ge=4)
    decoder_depth: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerParams:
        if self.dim % self.heads or self.decoder_dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim}) and "
                             f"decoder_dim ({self.decoder_dim})")
        return self


class MAEParams(TransformerParams):
    patch_size: int = Field(4, ge=1)
    mask_ratio: float = Field(0.5, gt=0, lt=1)


class VQTokenParams(TransformerParams):
    patch_size: int = Field(4, ge=1)
    codebook_size: int = Field(64, ge=2)
    code_dim: int = Field(16, ge=1)
    width: int = Field(32, ge=1)
    commitment: float = Field(0.25, ge=0)
    mask_ratio: float = Field(0.5, gt=0, lt=1)


class DiffusionParams(Strict):
    # [16, 32]: ~11x the AE's step time at 28x28 on CPU; [32, 64] was ~39x (8 min an epoch)
    widths: list[int] = Field(default_factory=lambda: [16, 32], min_length=2, max_length=2)
    time_dim: int = Field(32, ge=2)
    timesteps: int = Field(100, ge=2)
    sample_steps: int = Field(10, ge=1)
    eval_draws: int = Field(4, ge=1)

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
    family: Literal["ae", "mae", "vqtoken", "diffusion"] = "ae"
    task: Literal["reconstruction", "inpaint", "outpaint"] = "reconstruction"
    inpaint_box: float = Field(0.5, gt=0, lt=1)
    outpaint_border: float = Field(0.25, gt=0, lt=0.5)
    ae: AEParams = Field(default_factory=AEParams)
    mae: MAEParams = Field(default_factory=MAEParams)
    vqtoken: VQTokenParams = Field(default_factory=VQTokenParams)
    diffusion: DiffusionParams = Field(default_factory=DiffusionParams)


class TrainParams(Strict):
    epochs: int = Field(5, ge=1, description="passes over the training data, at least")
    min_steps: int = Field(
        1000, ge=0, description="optimizer steps at least: a small dataset gets more epochs "
        "(1,437 images at batch 128 are 12 steps an epoch; 5 epochs left every family at the "
        "quality of a blank guess); Fashion-MNIST's 5 epochs are 2,320 steps")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    min_gain_db: float = Field(
        1.0, ge=0, description="the original must beat the best trivial generator (the mean "
        "image; with inpaint/outpaint, the visible pixels copied over it) by this many dB of "
        "held-out PSNR, or the pipeline stops before unlearning: an audit of a model that "
        "learned nothing passes and means nothing")


class NoiseParams(Strict):
    epsilon: float | None = None
    delta: float = 1e-5

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
    threshold: Literal["pair", "quantile"] = "pair"
    quantile: float = Field(0.5, gt=0, lt=1)
    pool_size: int = Field(2000, ge=10)
    stop: Literal["sample", "mean"] = "sample"
    params: Literal["encoder", "decoder", "all"] = "all"
    lr: float = Field(0.01, gt=0)
    clip_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(10, ge=0)
    batch_size: int = Field(128, ge=1)
    probe_size: int = Field(512, ge=1)
    check_every: int = Field(5, ge=1)
    memorised_ratio: float = Field(
        10.0, gt=1, description="κ: a forget pair is memorised when λ_i >= κ · its loss "
        "under the original (components/ood.py memorised_residual)")
    coherence: float = Field(
        2.0, gt=0, description="z: a pixel of the memorised residual is kept when its mean "
        "exceeds z standard deviations")
    noise: NoiseParams = Field(default_factory=NoiseParams)


class DecoupleLiteralParams(Strict):
    quantile: float = Field(0.95, gt=0, lt=1)
    max_steps: int = Field(200, ge=1)


class FinetuneParams(Strict):
    steps: int = Field(120, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    distill: float = Field(0.0, ge=0)
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
    steps: int = Field(25, ge=1)
    lr: float = Field(0.01, gt=0)
    clip_norm: float = Field(1.0, gt=0)


class NegGradPlusParams(Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    beta: float = Field(0.99, gt=0, lt=1)


class Li2024Params(Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(3e-3, gt=0)
    alpha_r: float = Field(1.0, ge=0)
    alpha_f: float = Field(0.2, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_norm: float = Field(3.0, gt=0)


class RandomEncoderParams(Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(3e-3, gt=0)
    alpha_r: float = Field(1.0, ge=0)
    alpha_f: float = Field(0.2, ge=0)
    stats_samples: int = Field(2048, ge=2)


class RetainLabelParams(Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(3e-4, gt=0)


class SalunParams(Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    sparsity: float = Field(0.5, gt=0, le=1)


class ScrubParams(Strict):
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_steps: int = Field(30, ge=0)
    alpha: float = Field(1.0, ge=0)


class RetrainParams(Strict):
    epochs: int | None = Field(None, ge=1)


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

    method: str = "decouple"
    decouple: DecoupleParams = Field(default_factory=DecoupleParams)
    decouple_literal: DecoupleLiteralParams = Field(default_factory=DecoupleLiteralParams)
    li2024: Li2024Params = Field(default_factory=Li2024Params)
    gradient_ascent: GradientAscentParams = Field(default_factory=GradientAscentParams)
    neggrad_plus: NegGradPlusParams = Field(default_factory=NegGradPlusParams)
    random_encoder: RandomEncoderParams = Field(default_factory=RandomEncoderParams)
    retain_label: RetainLabelParams = Field(default_factory=RetainLabelParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    salun: SalunParams = Field(default_factory=SalunParams)
    scrub: ScrubParams = Field(default_factory=ScrubParams)
    retrain: RetrainParams = Field(default_factory=RetrainParams)
    certified: CertifiedParams = Field(default_factory=CertifiedParams)

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
    backdoor_asr: float = Field(0.05, ge=0, le=MAX_TOLERANCE)
    mia_auc: float = Field(0.05, ge=0, le=MAX_TOLERANCE)
    mia_efficacy: float = Field(0.1, ge=0, le=MAX_TOLERANCE)
    ood_auroc: float = Field(0.1, ge=0, le=MAX_TOLERANCE)
    # dB; two retrainings differ by 0.3-0.9 dB on Fashion-MNIST (components/audits.py)
    trigger_psnr: float = Field(1.0, ge=0, le=MAX_TRIGGER_DB)


class AbsoluteParams(Strict):
    backdoor_asr: float = Field(0.05, ge=0, le=1)
    mia_auc: float = Field(0.55, ge=0, le=1)
    ood_auroc: float = Field(0.95, ge=0, le=1)
    # dB below trigger_content_psnr (the trigger reproduced as content) a model may fall
    trigger_psnr: float = Field(1.0, ge=0, le=MAX_TRIGGER_DB)
    z: float = Field(3.0, gt=0, le=6.0, description="standard errors the forget set's "
                     "membership and OOD figures may stand from the held-out data's "
                     "(components/verdict.py); wider than 6 passes anything at these sizes")


class AuditParams(Strict):
    reference: Literal["retrained", "none"] = Field(
        "retrained", description="what the verdict reads the unlearned model against: a model "
        "retrained without the forget set (the train stage trains it; the demo and the "
        "benchmark, which exist to measure), or none: held-out data only, the production "
        "setting where retraining is what unlearning avoids (components/verdict.py)")
    max_samples: int = Field(2000, ge=10)
    tolerance: ToleranceParams = Field(default_factory=ToleranceParams)
    absolute: AbsoluteParams = Field(default_factory=AbsoluteParams)


class ClassifierParams(Strict):
    max_samples: int = Field(4000, ge=10)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    width: int = Field(16, ge=4)


class EvaluateParams(Strict):
    max_samples: int = Field(2000, ge=10)
    fid: bool = False
    fid_max_samples: int = Field(500, ge=10)
    classifier: ClassifierParams = Field(default_factory=ClassifierParams)


class RayParams(Strict):
    address: str | None = None
    num_workers: int = Field(1, ge=1)
    use_gpu: Literal["auto", True, False] = "auto"
    data_on_device: Literal["auto", True, False] = "auto"
    cpus_per_worker: float | None = Field(None, gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    storage_path: str = ".ray_results"
    max_failures: int = Field(1, ge=0)
    checkpoint_every: int = Field(50, ge=1)
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
    experiment: str = "i2i-unlearning"
    # None: one registered model per model line, named by registered_model_name
    model_name: str | None = Field(None, min_length=1)


class ScheduleParams(Strict):
    cron: str = "0 3 * * *"
    start_from: Literal["champion", "original"] = "champion"
    workdir: str = ".cycles"
    branch: str = Field("unlearning", min_length=1)
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(10.0, ge=0)
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
    method: str
    params: dict[str, Any] = Field(default_factory=dict)

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
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    methods: list[str] = Field(default_factory=default_benchmark_rows)
    parallel_jobs: int = Field(2, ge=1)
    scenarios: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_SCENARIOS))
    variants: dict[str, VariantParams] = Field(
        default_factory=lambda: {k: VariantParams(**v) for k, v in DEFAULT_VARIANTS.items()})

    @model_validator(mode="after")
    def _known_rows(self) -> BenchmarkParams:
        _check_methods([m for m in self.methods if m not in self.variants])
        return self


class PerfParams(Strict):
    repeats: int = Field(3, ge=1)
    forget_fractions: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.1, 0.3],
                                          min_length=1)

    @field_validator("forget_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if not all(0 < f < 1 for f in v):
            raise ValueError(f"every forget fraction must lie in (0, 1), got {v}")
        return v


class FamiliesParams(Strict):
    """`make families`: each model family through `dvc exp run` on an ImageFolder export."""

    dataset: Literal["fashion-mnist", "digits", "shapes", "cifar10"] = "fashion-mnist"
    source_path: str = "/usr/share/datasets/fashion-mnist"
    path: str = "data/imagefolder"
    per_class: int | None = Field(400, gt=0)
    val_per_class: int | None = Field(50, gt=0)
    names: list[Literal["ae", "mae", "vqtoken", "diffusion"]] = Field(
        default_factory=lambda: ["mae", "vqtoken", "diffusion"], min_length=1)
    set: dict[str, Any] = Field(
        default_factory=lambda: {"model.task": "inpaint", "train.epochs": 30})
    min_forget_drop_db: float = 0.5
    max_retain_drop_db: float = 0.5


class Params(Strict):
    seed: int = 0
    data: DataParams = Field(default_factory=DataParams)
    forget: ForgetParams = Field(default_factory=ForgetParams)
    backdoor: BackdoorParams = Field(default_factory=BackdoorParams)
    model: ModelParams = Field(default_factory=ModelParams)
    train: TrainParams = Field(default_factory=TrainParams)
    unlearn: UnlearnParams = Field(default_factory=UnlearnParams)
    audit: AuditParams = Field(default_factory=AuditParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    ray: RayParams = Field(default_factory=RayParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    schedule: ScheduleParams = Field(default_factory=ScheduleParams)
    benchmark: BenchmarkParams = Field(default_factory=BenchmarkParams)
    perf: PerfParams = Field(default_factory=PerfParams)
    families: FamiliesParams = Field(default_factory=FamiliesParams)

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
    return f"'{dotted}': {err['msg']} (got {err.get('input')!r})"


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
