"""Stage-2 schemas: generator training on cached latents (``vtp-gen stage2``) and sampling (``vtp-gen sample``).

The training recipe (model, optimiser, objective, batch, steps, sampler) is
the same whatever the tokenizer: the latent shape and statistics come from the
cache, never from the recipe. Published values are the defaults where a
recipe exists (LightningDiT / VTP: docs/vtp-method.md section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vtp_gen.config import DataConfig, RunConfig, TrainerConfig


@dataclass
class LatentsConfig:
    # The latent cache to train on: "" = runs/<run.name>/cache (what `make cache` writes).
    cache_dir: str = ""
    # The tokenizer the cache was made with (and the preview grids decode with), in the official
    # VTP folder layout: "" = runs/<run.name>/stage1/tokenizer (the `make stage1` export).
    tokenizer: str = ""
    # Refuse a cache whose manifest names other tokenizer weights (compared by hash). Switch off only
    # for caches written by other tools (e.g. LightningDiT's extract_features), which have no manifest.
    verify_tokenizer: bool = True
    # Horizontal-flip augmentation: the flipped latent is used with this probability (LightningDiT: 0.5).
    flip_prob: float = 0.5
    # The generator sees (z - mean_c) / std_c * multiplier (VTP / LightningDiT: 1.0 with latent_norm).
    multiplier: float = 1.0
    # When the cache is missing or unfinished, encode `data` with the tokenizer first (one device).
    # Multi-GPU caching of large sets is `make cache` (see docs/stage2.md).
    make_cache: bool = True
    # Settings of the cache made here; they must equal `make cache`'s for the same folder.
    shard_size: int = 10_000
    stats_max_images: int = 10_000
    flips: bool = True
    storage_dtype: str = "float32"


@dataclass
class GeneratorModelConfig:
    # A registry name (vtp_gen.list_models("LightningDiT")): LightningDiT-{T,B,L,XL}/{1,2}, SiT-*/2, DiT-*/2.
    name: str = "LightningDiT-T/1"
    # 0 = one more than the largest label in the cache; the paper recipes say 1000.
    num_classes: int = 0
    # Extra constructor arguments (class_dropout_prob, use_qknorm, use_checkpoint, ...). input_size and
    # in_channels always come from the cache.
    overrides: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    # Images per optimiser step over all devices (LightningDiT / VTP: 1024); the per-device batch is
    # global_batch_size / (devices * nodes * trainer.accumulate_grad_batches).
    global_batch_size: int = 1024
    num_workers: int = 0


@dataclass
class TransportConfig:
    # Training times t in [0, 1] (t = 0 noise): "logit_normal" t = sigmoid(N(logit_mean, logit_std^2)),
    # VTP: (-0.75, 1.0) for VTP-L latents, (-0.5, 1.25) for VTP-S/B; or "uniform" (SiT).
    time_distribution: str = "logit_normal"
    logit_mean: float = -0.5
    logit_std: float = 1.25
    # loss = MSE + cosine_weight * (1 - cosine similarity over channels); LightningDiT: 1.0, SiT: 0.
    cosine_weight: float = 1.0


@dataclass
class OptimConfig:
    # AdamW, constant learning rate (LightningDiT / VTP: 2e-4, betas (0.9, 0.95), no weight decay).
    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    eps: float = 1e-8
    # One fused AdamW kernel instead of torch's loop over parameter tensors (the CPU default), same
    # update rule: 1.04-1.05x of the whole tiny stage-2 step on the 2-core development CPU.
    fused: bool = True


@dataclass
class EMAConfig:
    # The averaged weights are what samples. 0.9999 is the published value (meant for >= 100k steps).
    decay: float = 0.9999


@dataclass
class SamplingConfig:
    # "euler" | "heun" (fixed grid of `steps` points, i.e. steps - 1 updates), "dopri5" (adaptive,
    # atol / rtol), "sde" (Euler-Maruyama, SiT's last-step "mean").
    method: str = "euler"
    steps: int = 250
    # Timestep shift t' = s t / (1 + (s - 1) t); <= 0 = none. VTP: 0.075.
    shift: float = 0.075
    # Classifier-free guidance (1.0 = none), applied only where t >= cfg_interval_start.
    cfg_scale: float = 1.0
    cfg_interval_start: float = 0.0
    # "all_channels", or "reference": the published code's first-3-channels guidance.
    guidance_mode: str = "all_channels"
    atol: float = 1e-6
    rtol: float = 1e-3


@dataclass
class PreviewConfig:
    # false: no grids at all (tests, benchmarks); nothing else changes.
    enabled: bool = True
    # A sample grid from the EMA model every this many steps (and at the end); 0 = only at the end.
    every_n_steps: int = 0
    # One row per class: the first `rows` classes, evenly spaced over all classes.
    rows: int = 10
    per_class: int = 10
    # Overrides of `sampling` for the grids only (null = the recipe's value). The paper recipes keep
    # their sampler; the tiny recipe guides its grid a little so the classes read at a glance.
    cfg_scale: float | None = None
    steps: int | None = None
    # On a CPU the grids are capped to cpu_rows x cpu_per_class samples and cpu_steps sampler points
    # (null = no cap): a paper recipe's grid (64 samples x 250 points) takes hours there (LightningDiT-B/1:
    # ~3 CPU-hours; the capped grid ~1 CPU-minute). The values above stay for GPUs. The last grid is made
    # after the checkpoint and the generator export.
    cpu_rows: int | None = 2
    cpu_per_class: int | None = 4
    cpu_steps: int | None = 10


@dataclass
class Stage2Config:
    run: RunConfig = field(default_factory=RunConfig)
    # The labelled images the cache is made from, when it has to be made here (data.batch_size is
    # the encoding batch; the training batch is train.global_batch_size). Unused when the cache exists.
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=256))
    latents: LatentsConfig = field(default_factory=LatentsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: GeneratorModelConfig = field(default_factory=GeneratorModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    # How this recipe samples: the preview grids use it, and it is saved with the exported generator.
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)


@dataclass
class SampleConfig:
    run: RunConfig = field(default_factory=RunConfig)
    # A generator: "" = runs/<run.name>/stage2/generator (the EMA weights stage 2 exports); or any
    # folder / .safetensors / .pt that vtp_gen.load_generator reads (official LightningDiT, DiT,
    # SiT checkpoints), or a stage-2 training checkpoint (.ckpt, its EMA weights).
    generator: str = ""
    # The tokenizer that decodes the latents: "" = runs/<run.name>/stage1/tokenizer.
    tokenizer: str = ""
    # Latent statistics to undo: a cache folder or a latents_stats.pt file; "" = the folder the
    # stage-2 run trained on (its latents.cache_dir, else runs/<run.name>/cache).
    latent_stats: str = ""
    latent_multiplier: float = 1.0
    # Output folder: "" = runs/<run.name>/samples/<method><steps>-shift<s>-cfg<c>-seed<seed>.
    out_dir: str = ""
    num_samples: int = 50_000
    # "uniform": labels drawn uniformly at random (the ADM / DiT protocol); "balanced": every class
    # num_samples / num_classes times, in random order.
    labels: str = "uniform"
    # 0 = the generator's number of classes.
    num_classes: int = 0
    # Samples per device per batch.
    batch_size: int = 64
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # Also write the ADM evaluator's .npz (arr_0: uint8 NHWC images, arr_1: labels).
    write_npz: bool = True
    # A grid of the first grid_images samples as grid.png (0 = none).
    grid_images: int = 64
    # A folder holding samples made with other settings is an error, unless this deletes them first.
    overwrite: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # "auto" = 32-true: the reference samples in fp32 (bf16-mixed is allowed, not the published setting).
    precision: str = "auto"
    progress_bar: bool = True
