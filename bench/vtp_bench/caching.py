"""Latent caching against the bare encoder forward, in interleaved rounds.

Both count dataset images per second, and both include the horizontal flip
(each image costs two encoder passes, done as one forward of 2B):

- ``bare_encoder``: ``get_reconstruction_latents`` on a preprocessed batch that
  is already on the device, nothing else;
- ``cache_loop``: a whole ``vtp-gen cache`` run (``vtp_gen.pipeline.cache.run.run``)
  into a fresh folder, timed by the shard writer from the first to the last
  batch (loading, ADM centre crop, normalisation, encoding, serialisation,
  hashing, fsync, per-shard statistics); start-up and finalisation are not
  in it. Its FLOPs are the encoder's.

Images are Fashion-MNIST when the embedded dataset is installed (what
``make stage2`` caches), otherwise a folder of synthetic PNGs written once.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vtp_bench.suite import Group, Settings, Workload
from vtp_gen.utils.flops import count_flops


@dataclass(frozen=True)
class CacheSetting:
    name: str
    preset: str
    overrides: tuple[tuple[str, object], ...]
    image_size: int
    batch_size: int
    images: int
    num_workers: int
    description: str


CACHE_SETTINGS = {
    "tiny": CacheSetting("tiny", "vtp-tiny", (), 32, 256, 2048, 0, "vtp-tiny, 32 px, batch 256, 2048 images"),
    "small-B": CacheSetting(
        "small-B",
        "vtp-b",
        (("vision_depth", 4), ("rope_dtype", "float32")),
        128,
        32,
        256,
        0,
        "VTP-B blocks at depth 4, 128 px, batch 32, 256 images",
    ),
    "L": CacheSetting(
        "L", "vtp-l", (), 256, 256, 8192, 8, "VTP-L, 256 px, batch 256, 8192 images, 8 workers"
    ),
}


def fashion_mnist_available() -> bool:
    from vtp_gen.data.fashion_mnist import find_root

    try:
        find_root(None)
        return True
    except (FileNotFoundError, OSError, ValueError):
        return False


def synthetic_image_folder(root: Path, images: int, image_size: int, classes: int = 4) -> Path:
    """``root/<class>/<n>.png`` smooth random images, the ImageNet folder layout."""
    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((image_size, image_size), Image.BICUBIC).save(folder / f"{index}.png")
    return root


class CachingRun:
    """Each call caches ``images`` images into a new folder and returns the loop's seconds."""

    self_timed = True

    def __init__(
        self, setting: CacheSetting, tokenizer: Path, work_dir: Path, data: list[str], device
    ) -> None:
        self.setting = setting
        self.tokenizer = tokenizer
        self.work_dir = work_dir
        self.data = data
        self.accelerator = "gpu" if torch.device(device).type == "cuda" else "cpu"
        self.calls = 0

    def __call__(self) -> float:
        from vtp_gen.config import load_config
        from vtp_gen.pipeline.cache.config import CacheConfig
        from vtp_gen.pipeline.cache.run import run

        s = self.setting
        self.calls += 1
        overrides = [
            f"tokenizer={self.tokenizer}",
            f"out_dir={self.work_dir / f'cache{self.calls}'}",
            f"data.image_size={s.image_size}",
            f"data.batch_size={s.batch_size}",
            f"data.num_workers={s.num_workers}",
            f"data.max_samples={s.images}",
            f"shard_size={max(s.images // 2, 1)}",
            "stats_max_images=0",
            f"accelerator={self.accelerator}",
            "devices=1",
            "progress_bar=false",
            *self.data,
        ]
        cfg = load_config(CacheConfig, None, overrides)
        with contextlib.redirect_stdout(io.StringIO()):  # its progress lines would break up the table
            result = run(cfg)
        if result.images_encoded != s.images:
            raise RuntimeError(f"cached {result.images_encoded} images, expected {s.images}")
        return result.encode_seconds


def caching_group(name: str) -> Group:
    full_setting = CACHE_SETTINGS[name]

    def build(settings: Settings) -> list[Workload]:
        from vtp_gen.data.transforms import normalize
        from vtp_gen.interop.vtp import load_tokenizer, save_pretrained
        from vtp_gen.models.registry import create_model

        device = settings.device
        setting = full_setting
        if settings.quick:
            setting = replace(full_setting, images=128, batch_size=64)
        work = tempfile.TemporaryDirectory(prefix="vtp_bench_cache_")
        work_dir = Path(work.name)
        model = create_model(setting.preset, image_size=setting.image_size, **dict(setting.overrides))
        tokenizer_dir = save_pretrained(model, work_dir / "tokenizer")
        del model
        if fashion_mnist_available():
            data = ["data.source=fashion_mnist"]
        else:
            folder = synthetic_image_folder(work_dir / "images", setting.images, setting.image_size)
            data = ["data.source=image_folder", f"data.root={folder}"]

        encoder = load_tokenizer(tokenizer_dir, device=device)
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randint(
            0, 256, (setting.batch_size, 3, setting.image_size, setting.image_size), generator=generator
        )
        batch = normalize(pixels.float() / 255.0).to(device)

        @torch.inference_mode()
        def bare() -> None:
            encoder.get_reconstruction_latents(torch.cat([batch, batch.flip(-1)]))

        flops_per_image = count_flops(bare) / setting.batch_size
        caching = CachingRun(setting, tokenizer_dir, work_dir, data, device)
        caching.keep_alive = work  # the folder goes when the group's workloads are freed
        return [
            Workload(
                "cache_loop",
                caching,
                setting.images,
                baseline="bare_encoder",
                flops=int(flops_per_image * setting.images),
                measure_memory=False,
            ),
            Workload("bare_encoder", bare, setting.batch_size, tracked=(encoder,)),
        ]

    return Group("caching", name, f"latent caching vs bare encoder ({full_setting.description})", build)
