"""Schema of ``vtp-gen eval`` / ``make eval``: what to evaluate, on how many images, under which protocol.

Sample counts are config values because they decide both the cost and the
meaning of a number: FID-500 on a CPU is not FID-50k on a GPU cluster, and
every number in ``metrics.json`` carries the counts it was computed with.
Defaults are sized for the embedded default (Fashion-MNIST, 32 px) on 2 CPU
cores; ``configs/eval/imagenet.yaml`` holds the paper's protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtp_gen.config import DataConfig, RunConfig
from vtp_gen.metrics.linear_probe import DINOV2_LEARNING_RATES

GENERATION_METRIC_CHOICES = ("fid", "kid", "precision_recall", "inception_score")
PROBE_PROTOCOLS = ("bottleneck", "dinov2")
# How evaluation images are brought to size (each protocol names its own):
#   center_crop: the ADM centre crop used everywhere in training and caching;
#   resize: squash to image_size x image_size (the VTP zero-shot script);
#   resize_center_crop: short side to image_size * 256/224, then the centre square (DINOv2 linear eval).
TRANSFORMS = ("center_crop", "resize", "resize_center_crop")


@dataclass
class EvalSamplingConfig:
    # null = the sampler recorded with the generator (runs/<name>/stage2/generator/stage2.json, i.e. the
    # stage-2 recipe's `sampling`), else the SamplingConfig defaults (VTP: Euler, 250 steps, shift 0.075).
    method: str | None = None
    steps: int | None = None
    shift: float | None = None
    cfg_scale: float | None = None
    cfg_interval_start: float | None = None
    guidance_mode: str | None = None


@dataclass
class DomainEvalConfig:
    """Fashion-MNIST's own generation metric (vtp_gen.metrics.domain, docs/eval.md "Domain metric").

    A Frechet distance in the features of a small classifier (the garment judge) trained on the
    train split, against the whole test split, and the judge's agreement with the samples'
    conditioning labels; each with a bootstrap interval and the real-vs-real floor at the same N.
    Off by default: the first use trains the judge (~4 min on 2 busy cores), later ones cost seconds.
    """

    enabled: bool = False
    # Samples the domain metric scores: 0 = generation.num_samples. More than that makes the eval
    # sample that many (the judge is cheap) while FID/KID/precision/recall keep the first
    # generation.num_samples (the Inception is the expensive part on a CPU).
    num_samples: int = 0
    # The judge's weights: "" = $VTP_GEN_CACHE/domain/judge-<epochs>ep-<images>.safetensors, trained
    # there when missing (with cache_reference=false: in the eval folder).
    judge: str = ""
    judge_epochs: int = 2
    judge_train_images: int = 0  # 0 = the whole train split (tests use fewer)
    # Reference: the first/random N of the `data` split at data.image_size (0 = all of it, 10k).
    num_reference: int = 0
    # The floor draws N real images `floor_repeats` times from this many train images.
    floor_pool: int = 10_000
    floor_repeats: int = 50
    # Bootstrap resamples of the samples (each recomputes the 64-d statistics: ~5 ms).
    bootstrap_resamples: int = 500


@dataclass
class GenerationEvalConfig:
    enabled: bool = True
    # Images to score: a PNG folder or an ADM .npz (arr_0). "" = sample them here with `generator`
    # (through the sampling library) into runs/<name>/eval/samples/<sampler tag>/, resuming if present.
    samples: str = ""
    # "" = runs/<name>/stage2/generator; or anything vtp_gen.load_generator reads.
    generator: str = ""
    # How tables name the generator, e.g. "LightningDiT-XL/1, 80 ep" ("" = from the stage-2 run).
    generator_label: str = ""
    # Latent statistics to undo when sampling ("" = those exported with the generator).
    latent_stats: str = ""
    # N of FID-N: generated images scored (the first N of `samples`).
    num_samples: int = 500
    labels: str = "uniform"
    sample_batch_size: int = 100
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    # The reference side: "" = the first num_reference images of the `data` split; or an ADM reference
    # batch (.npz with mu/sigma, e.g. VIRTUAL_imagenet256_labeled.npz), or an image folder.
    reference: str = ""
    num_reference: int = 500
    metrics: list[str] = field(default_factory=lambda: list(GENERATION_METRIC_CHOICES))
    # KID subsets (sizes are capped at the set sizes), precision/recall neighbourhood size.
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    prc_k: int = 3
    grid_images: int = 64
    # Bootstrap resamples for a 95 % interval on the FID (0 = none). Each one costs an eigen-
    # decomposition of a 2048x2048 matrix (seconds on a CPU): keep it to ~20-50 there.
    fid_bootstrap: int = 0
    domain: DomainEvalConfig = field(default_factory=DomainEvalConfig)


@dataclass
class ReconstructionEvalConfig:
    enabled: bool = True
    # The first N images of the `data` split are encoded, decoded and scored (rFID-N, PSNR, SSIM, LPIPS).
    num_images: int = 500
    rfid: bool = True
    lpips: bool = True
    grid_images: int = 16


@dataclass
class LinearProbeEvalConfig:
    enabled: bool = True
    # (a) "bottleneck": last-layer 64-d bottleneck features (the paper's scaling plots), standardised,
    #     logistic regression fitted to convergence (metrics.linear_probe.fit_logistic_probes);
    # (b) "dinov2": DINOv2-style SGD sweep on pre-bottleneck features (the paper's Table 2).
    protocols: list[str] = field(default_factory=lambda: list(PROBE_PROTOCOLS))
    # Training images: `train_split` of the data source (Fashion-MNIST), or the folder `train_root`
    # (image_folder sources, e.g. ImageNet train). Test images: the `data` split.
    train_split: str = "train"
    train_root: str = ""
    train_images: int = 10_000  # 0 = all
    test_images: int = 0  # 0 = all
    image_size: int = 0  # 0 = data.image_size (DINOv2 / VTP: 224)
    transform: str = "center_crop"
    n_last_blocks: list[int] = field(default_factory=lambda: [1, 4])
    # The dinov2 protocol's SGD sweep (the bottleneck protocol fits to convergence, no schedule).
    learning_rates: list[float] = field(default_factory=lambda: list(DINOV2_LEARNING_RATES))
    epochs: int = 10
    batch_size: int = 128
    # Probe features are cached in runs/<name>/eval/probe_features/ and reused while the tokenizer is unchanged.
    cache_features: bool = True


@dataclass
class ZeroShotEvalConfig:
    enabled: bool = True
    # Class names + prompt templates: "imagenet" (OpenCLIP names, 80 OpenAI templates),
    # "fashion_mnist", or "" = by data.source (fashion_mnist; otherwise imagenet).
    classes: str = ""
    num_images: int = 0  # 0 = the whole `data` split
    image_size: int = 0  # 0 = data.image_size
    transform: str = "center_crop"


@dataclass
class EvalConfig:
    run: RunConfig = field(default_factory=RunConfig)
    # The evaluation images: FID reference (unless generation.reference is set), reconstruction,
    # probe test set and zero-shot. data.batch_size is the batch of every network pass here.
    data: DataConfig = field(default_factory=lambda: DataConfig(split="test", batch_size=100))
    # How reports and tables name `data` ("" = "Fashion-MNIST" for fashion_mnist, else the folder name).
    dataset_name: str = ""
    # "" = runs/<name>/stage1/tokenizer (official VTP layout). A missing default is skipped with a note;
    # a missing explicit path is an error.
    tokenizer: str = ""
    # Report folder: "" = runs/<name>/eval.
    out_dir: str = ""
    # "auto" = cuda when available, else cpu.
    device: str = "auto"
    # Weight files ("" = the standard search, see vtp_gen.pretrained.cache).
    inception_weights: str = ""
    lpips_weights: str = ""
    # Keep reference-set Inception features under $VTP_GEN_CACHE/fid_references (reused by every run).
    cache_reference: bool = True
    progress_bar: bool = True
    generation: GenerationEvalConfig = field(default_factory=GenerationEvalConfig)
    reconstruction: ReconstructionEvalConfig = field(default_factory=ReconstructionEvalConfig)
    linear_probe: LinearProbeEvalConfig = field(default_factory=LinearProbeEvalConfig)
    zero_shot: ZeroShotEvalConfig = field(default_factory=ZeroShotEvalConfig)
