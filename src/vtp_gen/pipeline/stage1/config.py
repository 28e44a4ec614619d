"""Stage-1 schema: tokenizer pre-training (CLIP + DINO/iBOT + L1/LPIPS), then decoder GAN fine-tune.

Values the paper does not publish (marked UNKNOWN in docs/vtp-method.md) take
the DINOv2 / OpenCLIP default and say so in a comment; all are config values.
Step counts (warm-ups, schedules) are optimiser steps of the phase they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vtp_gen.config import DataConfig, RunConfig, TrainerConfig


@dataclass
class TokenizerModelConfig:
    # A registry preset (vtp-tiny, vtp-s, vtp-b, vtp-l); `overrides` go to its factory (VTPConfig keys).
    # `train_clip` / `train_reconstruction` follow the objective weights unless set here: an
    # AE-only tokenizer has no text tower, as in the paper's AE baseline.
    preset: str = "vtp-tiny"
    overrides: dict = field(default_factory=dict)
    # Activation checkpointing of every transformer block (encoder, pixel decoder, text tower):
    # less activation memory for about one more forward per step. Weights are unaffected.
    grad_checkpointing: bool = False


@dataclass
class ObjectivesConfig:
    # L = lambda_rec * L_rec + lambda_ssl * L_ssl + lambda_clip * L_clip (paper: 0.1, {0,1}, {0,1}).
    # A weight of 0 switches the branch off entirely: no crops, no forward, no parameters updated by it.
    lambda_clip: float = 1.0
    lambda_ssl: float = 1.0
    lambda_rec: float = 0.1
    # Per-step subsets of the B image-text pairs (paper ablations: B=16k, B_ssl=4k, B_rec=2k).
    ssl_fraction: float = 0.25
    rec_fraction: float = 0.125
    # Separate stochastic-depth rates per objective forward (values UNKNOWN; DINOv2 ViT-L uses 0.4,
    # OpenCLIP none).
    drop_path_clip: float = 0.0
    drop_path_ssl: float = 0.1
    drop_path_rec: float = 0.0
    # Reconstruction: L1 + LPIPS (1:1 as written in the paper).
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    # CLIP across ranks: False = OpenCLIP's default (full logits on every rank, local gradient only);
    # True = each rank scores its own rows and the gather carries gradients (cheaper at 32k batches).
    clip_local_loss: bool = False


@dataclass
class SSLConfig:
    # DINO head (prototype count UNKNOWN; DINOv2 uses 65536 at scale).
    prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    # "softmax_center" (EMA of teacher outputs) or "sinkhorn_knopp" (DINOv2's choice).
    centering: str = "sinkhorn_knopp"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    student_temp: float = 0.1
    teacher_temp_start: float = 0.04
    teacher_temp: float = 0.07
    # DINOv2: 30 epochs of warm-up; here in steps.
    teacher_temp_warmup_steps: int = 3000
    # EMA teacher momentum, cosine from start to end over the pre-training steps.
    momentum_start: float = 0.992
    momentum_end: float = 1.0
    # DINOv2 keeps the head's prototype layer fixed for the first epoch (stabilises the start).
    freeze_last_layer_steps: int = 0
    # Multi-crop (crop sizes at 256 px UNKNOWN; DINOv2 uses 224/98 at patch 14).
    global_crop_size: int = 256
    local_crop_size: int = 112
    n_local_crops: int = 8
    global_crop_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    # iBOT block-wise masking: ratio range, applied to this share of global crops.
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5
    mask_probability: float = 0.5


@dataclass
class OptimConfig:
    # AdamW; no weight decay on norms, biases, learned tokens, positional embeddings and
    # logit_scale. Schedule UNKNOWN ("follow DINOv2/OpenCLIP"): warm-up + cosine lr, cosine wd.
    lr: float = 4e-4
    min_lr: float = 1e-6
    warmup_steps: int = 1000
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    # One fused AdamW kernel instead of a loop over parameter tensors: 1.02x (tiny) and 1.08x
    # (small-B) of the whole step on the 2-core development CPU; off for FSDP (vtp_l.yaml).
    fused: bool = True


@dataclass
class DecoderFinetuneConfig:
    # Second stage: encoder frozen, decoder + PatchGAN discriminator (recipe UNKNOWN; LDM/VA-VAE defaults:
    # hinge loss, adaptive weight 0.5, Adam betas (0.5, 0.9), constant lr).
    enabled: bool = True
    max_steps: int = 1000
    lr: float = 1e-4
    disc_lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9
    warmup_steps: int = 0
    gradient_clip_val: float = 1.0
    # torch's fused AdamW kernel for both networks (the GPU recipes); clipping works with it in any precision.
    fused: bool = False
    l1_weight: float = 1.0
    lpips_weight: float = 1.0
    disc_weight: float = 0.5
    disc_start_step: int = 200
    disc_layers: int = 3
    disc_channels: int = 64
    # "group" keeps the discriminator independent of the per-rank batch (LDM uses "batch").
    disc_norm: str = "group"
    # Images per step and device (0 = data.batch_size).
    batch_size: int = 0


@dataclass
class Stage1EvalConfig:
    # Written at the end of the run: reconstruction grid, held-out reconstruction error and
    # zero-shot accuracy. The held-out set is `split` of the training source unless `source`
    # names another one (e.g. image_folder + root=/data/imagenet/val for the DataComp recipes).
    # Zero-shot needs class names: Fashion-MNIST's own, ImageNet's for a 1000-synset folder
    # (with the 80 OpenAI templates), else the folder names.
    source: str = ""
    root: str = ""
    split: str = "test"
    grid_images: int = 16
    reconstruction_images: int = 2000  # 0 = the whole split
    zero_shot_images: int = 0  # 0 = the whole split
    batch_size: int = 250


@dataclass
class Stage1Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: TokenizerModelConfig = field(default_factory=TokenizerModelConfig)
    objectives: ObjectivesConfig = field(default_factory=ObjectivesConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    decoder_finetune: DecoderFinetuneConfig = field(default_factory=DecoderFinetuneConfig)
    evaluation: Stage1EvalConfig = field(default_factory=Stage1EvalConfig)
