"""Schema of the latent-caching step (``vtp-gen cache``, ``make cache``).

Caching is inference only, so instead of the training ``trainer`` section it has
the few Lightning settings inference needs at the top level (``devices=8``,
``precision=bf16-mixed``). Batch size, workers, image size and the dataset come
from the shared ``data`` section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vtp_gen.config import DataConfig, RunConfig


@dataclass
class CacheConfig:
    run: RunConfig = field(default_factory=RunConfig)
    # The labelled images to encode; data.image_size is the ADM centre-crop size,
    # data.batch_size the per-device batch, data.max_samples a prefix of the set.
    data: DataConfig = field(default_factory=DataConfig)
    # A tokenizer folder in the official VTP layout (config.json + model.safetensors):
    # "" = this run's stage-1 export, runs/<run.name>/stage1/tokenizer.
    tokenizer: str = ""
    # Where shards, latents_stats.pt and manifest.json go: "" = runs/<run.name>/cache.
    out_dir: str = ""
    # Images per shard (the reference writes 10k per file). Fixed for the life of a cache,
    # since it defines which images each shard holds and so what "resume" means.
    shard_size: int = 10_000
    # Per-channel mean/std over this many images, drawn at random (seeded by run.seed)
    # from the whole set; 0 = every image. The LightningDiT recipe uses 10k.
    stats_max_images: int = 10_000
    # Also encode each image's horizontal flip (stored as `latents_flip`); LightningDiT's
    # reader needs it, and stage 2 picks one of the two with p = 0.5.
    flips: bool = True
    # How latents are stored: float32 (reference) | float16 | bfloat16.
    storage_dtype: str = "float32"
    # An existing cache made with other settings (tokenizer, data, shard size, ...) is an
    # error unless this is set, in which case its files are deleted first.
    overwrite: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    # "auto" = ddp when more than one device; every rank writes its own disjoint shards.
    strategy: str = "auto"
    # "auto" = 32-true everywhere (latents are data: the reference encodes in fp32, with TF32).
    precision: str = "auto"
    # torch.set_float32_matmul_precision: "high" allows TF32 on GPUs, as the reference does.
    matmul_precision: str = "high"
    progress_bar: bool = True
