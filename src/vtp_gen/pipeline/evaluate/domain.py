"""``make eval``'s domain metric (``generation.domain``): judge, cached references, records.

The judge is trained once per machine (``$VTP_GEN_CACHE/domain/``) and its features of the
reference split and of the floor's train pool are cached under
``$VTP_GEN_CACHE/domain_references/`` (:mod:`vtp_gen.metrics.reference_cache`): keyed on the
data's fingerprint, split, N, image size, preprocessing and the judge's weights, checked
against a sha256 on every load. Images are prepared exactly as for the FID reference (ADM
centre crop to ``data.image_size``, uint8), the size the generator was trained at.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from vtp_gen.data.build import build_dataset
from vtp_gen.data.transforms import CenterCropNormalize
from vtp_gen.latents.manifest import dataset_fingerprint
from vtp_gen.metrics.domain import JUDGE_FEATURES, judge_features, load_or_train_judge
from vtp_gen.metrics.domain_eval import DomainReference, evaluate_domain, reference_hits
from vtp_gen.metrics.images import iter_image_batches
from vtp_gen.metrics.reference_cache import ReferenceKey, cached_reference, network_digest
from vtp_gen.metrics.report import MetricRecord, Protocol
from vtp_gen.metrics.tokenizer import evaluation_subset, uint8_nchw
from vtp_gen.pretrained.cache import cache_dir
from vtp_gen.utils.log import step_logger

log = step_logger("eval")


@dataclass
class DomainPart:
    records: list[MetricRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def domain_num_samples(cfg: DictConfig) -> int:
    """N of the domain metric: ``generation.domain.num_samples``, 0 = ``generation.num_samples``."""
    return cfg.generation.domain.num_samples or cfg.generation.num_samples


def judge_path(cfg: DictConfig, folder: Path) -> Path:
    dom = cfg.generation.domain
    if dom.judge:
        return Path(dom.judge)
    name = f"judge-{dom.judge_epochs}ep-{dom.judge_train_images or 'all'}.safetensors"
    return (cache_dir() / "domain" if cfg.cache_reference else folder) / name


def preprocessing(size: int) -> str:
    return f"ADM centre crop to {size} px, uint8 RGB; judge: grey mean, bilinear (antialiased) to 28 px"


def split_images(cfg: DictConfig, split: str, limit: int) -> tuple[object, list[int]]:
    dataset = build_dataset(cfg.data, transform=CenterCropNormalize(cfg.data.image_size), split=split)
    return dataset, evaluation_subset(len(dataset), limit)


def uint8_nhwc(dataset, indices: list[int], batch: int = 500) -> np.ndarray:
    """The images as the FID reference sees them (normalised tensors -> uint8), NHWC for the judge."""
    out = []
    for start in range(0, len(indices), batch):
        images = torch.stack([dataset[i]["image"] for i in indices[start : start + batch]])
        out.append(uint8_nchw(images).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def reference_features(cfg: DictConfig, judge, split: str, limit: int) -> tuple:
    """(CachedReference, labels) of the judge's features of ``split`` (``limit`` images, 0 = all)."""
    dataset, indices = split_images(cfg, split, limit)
    key = ReferenceKey(
        dataset="Fashion-MNIST",
        split=split,
        num_images=len(indices),
        image_size=cfg.data.image_size,
        preprocessing=preprocessing(cfg.data.image_size),
        extractor=JUDGE_FEATURES,
        network=network_digest(judge),
        data=dataset_fingerprint(dataset),
    )
    folder = cache_dir() / "domain_references" if cfg.cache_reference else None
    cached = cached_reference(folder, key, lambda: judge_features(judge, uint8_nhwc(dataset, indices)))
    labels = np.asarray(dataset.labels)[indices]
    return cached, labels


def sample_labels(samples: Path, n: int) -> np.ndarray | None:
    """The conditioning labels recorded with the samples (``arr_1`` of the ADM .npz), if any."""
    candidates = (
        [samples] if samples.suffix == ".npz" else [samples / "samples.npz", samples.parent / "samples.npz"]
    )
    for path in candidates:
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                if "arr_1" in data.files and len(data["arr_1"]) >= n:
                    return np.asarray(data["arr_1"][:n], dtype=np.int64)
    return None


def sample_pixels(samples: Path, n: int) -> np.ndarray:
    out, count = [], 0
    for batch in iter_image_batches(str(samples), 500):
        out.append(batch[: n - count].permute(0, 2, 3, 1).numpy())
        count += len(out[-1])
        if count >= n:
            break
    return np.concatenate(out)


def evaluate_domain_part(
    cfg: DictConfig, folder: Path, samples: Path, protocol: Protocol, seed: int
) -> DomainPart:
    """Domain Frechet distance and label agreement of ``samples`` (first generation.num_samples)."""
    dom, part = cfg.generation.domain, DomainPart()
    if cfg.data.source != "fashion_mnist":
        part.notes.append("domain metric: skipped (the garment judge knows Fashion-MNIST only)")
        return part
    started = time.time()
    path = judge_path(cfg, folder)
    trained = not path.is_file()
    judge, accuracy = load_or_train_judge(
        path, cfg.data.root or None, epochs=dom.judge_epochs, max_images=dom.judge_train_images
    )
    part.seconds["domain_judge"] = time.time() - started
    started = time.time()
    reference, labels = reference_features(cfg, judge, cfg.data.split, dom.num_reference)
    pool, _ = reference_features(cfg, judge, "train", dom.floor_pool)
    part.seconds["domain_reference"] = time.time() - started
    started = time.time()
    n = domain_num_samples(cfg)
    pixels, targets = sample_pixels(samples, n), sample_labels(samples, n)
    result = evaluate_domain(
        pixels,
        targets,
        DomainReference(
            judge,
            accuracy,
            reference.statistics,
            reference_hits(judge, reference.features, labels),
            pool.features,
        ),
        resamples=dom.bootstrap_resamples,
        floor_repeats=dom.floor_repeats,
        seed=seed,
    )
    part.seconds["domain_metrics"] = time.time() - started
    judged = dataclasses.replace(
        protocol,
        num_samples=result.num_samples,
        reference=f"Fashion-MNIST {cfg.data.split}",
        num_reference=result.num_reference,
        features=JUDGE_FEATURES,
    )
    extra = {"judge_test_accuracy": accuracy, "interval": result.frechet.to_dict()}
    part.records.append(
        MetricRecord(
            "domain_fd",
            result.frechet.value,
            judged,
            interval=(result.frechet.low, result.frechet.high),
            floor=result.frechet_floor.to_dict(),
            extra=extra,
        )
    )
    if result.agreement is not None:
        part.records.append(
            MetricRecord(
                "label_agreement",
                result.agreement.value,
                judged,
                interval=(result.agreement.low, result.agreement.high),
                floor=result.agreement_floor.to_dict(),
                extra={"judge_test_accuracy": accuracy, "interval": result.agreement.to_dict()},
            )
        )
    else:
        part.notes.append("label agreement: skipped (the samples carry no labels: no samples.npz with arr_1)")
    where = (
        "cached" if reference.hit and pool.hit else f"computed in {part.seconds['domain_reference']:.0f} s"
    )
    part.notes.append(
        f"domain metric: garment judge ({path.name}, {'trained now' if trained else 'stored'}) classifies "
        f"{100 * accuracy:.1f} % of the {cfg.data.split} split correctly; reference: its features of "
        f"{result.num_reference} {cfg.data.split} images ({where}); floor: {dom.floor_repeats} draws of "
        f"{result.num_samples} of {len(pool.features)} train images"
    )
    part.info = {
        "judge": str(path),
        "judge_test_accuracy": accuracy,
        "reference_cache": str(reference.path) if reference.path else "",
        "floor_cache": str(pool.path) if pool.path else "",
        **result.to_dict(),
    }
    return part
