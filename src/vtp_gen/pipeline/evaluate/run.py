"""``vtp-gen eval`` / ``make eval``: evaluate whatever the run has, write ``metrics.json``, ``report.md``, grids.

    runs/<name>/eval/config.yaml        the resolved config
                     metrics.json       every number with its protocol (vtp_gen.metrics.report)
                     report.md          metrics table, sample / reconstruction grids, loss curves
                     images/            the PNGs report.md shows
                     samples/<tag>/     generated images (PNG + ADM .npz), when sampled here
                     probe_features/    cached linear-probe features

Parts, each skipped with a note when the run lacks what it needs:

* generation (a generator or a folder of samples): FID-N, KID, precision /
  recall (k = 3) and Inception Score on Inception pool3 features, against the
  evaluation split (or an ADM reference batch); missing samples are made with
  the sampling library (``vtp_gen.pipeline.sample.run``), never a subprocess;
* reconstruction (a tokenizer with a decoder): rFID-N, PSNR, SSIM, LPIPS;
* linear probes (a tokenizer): (a) bottleneck latents, (b) DINOv2-style sweep;
* zero-shot (a tokenizer with a text tower): top-1 / top-5;
* optionally (``generation.domain.enabled``), the Fashion-MNIST domain metric: a Frechet
  distance in a small classifier's features and label agreement, with 95 % intervals and
  real-vs-real floors (:mod:`vtp_gen.pipeline.evaluate.domain`).

Inception features of the reference images are computed once per machine and
kept under ``$VTP_GEN_CACHE/fid_references`` (:mod:`vtp_gen.metrics.reference_cache`: keyed on the
data, N, size, crop and the network's weights, checked against a sha256 on load); when the reconstruction images
are (a prefix of) the reference images, their features are reused for rFID.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Subset

from vtp_gen.config import save_config
from vtp_gen.data.build import build_dataset
from vtp_gen.data.decode import collate_samples
from vtp_gen.data.images import save_grid
from vtp_gen.data.transforms import CenterCropNormalize, normalize, pil_to_tensor
from vtp_gen.interop.vtp import load_tokenizer
from vtp_gen.latents.manifest import dataset_fingerprint, tokenizer_identity
from vtp_gen.metrics.domain_eval import frechet_interval
from vtp_gen.metrics.features import extract_features
from vtp_gen.metrics.generation import (
    INCEPTION_EXTRACTOR,
    FrechetToReference,
    ReferenceSet,
    evaluate_generation,
    prepare_reference,
)
from vtp_gen.metrics.images import count_images, iter_image_batches
from vtp_gen.metrics.linear_probe import (
    bottleneck_features,
    cached_probe_features,
    dinov2_feature_sets,
    extract_probe_features,
    fit_logistic_probes,
    intermediate_features,
    train_linear_probes,
)
from vtp_gen.metrics.reference_cache import ReferenceKey, cached_reference, network_digest
from vtp_gen.metrics.report import (
    RECONSTRUCTION_REFERENCE,
    MetricRecord,
    Protocol,
    ReportImage,
    console_table,
    dinov2_probe_method,
    generator_label,
    guidance_label,
    sampler_label,
    write_report,
    zero_shot_method,
)
from vtp_gen.metrics.tokenizer import (
    SUBSET_SEED,
    evaluate_reconstruction,
    evaluate_tokenizer_zero_shot,
    evaluation_subset,
    save_reconstruction_grid,
    uint8_nchw,
    zero_shot_classes,
)
from vtp_gen.pipeline.evaluate.domain import domain_num_samples, evaluate_domain_part
from vtp_gen.pipeline.run_dir import run_root
from vtp_gen.pipeline.sample import run as sample_run
from vtp_gen.pipeline.sample.run import load_any_generator
from vtp_gen.pipeline.stage2.config import SampleConfig, SamplingConfig
from vtp_gen.pretrained.cache import cache_dir
from vtp_gen.pretrained.inception import build_fid_inception
from vtp_gen.pretrained.lpips import build_lpips_vgg
from vtp_gen.systems.flow_matching import tensor_digest
from vtp_gen.systems.trainer import csv_logs
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.plots import plot_loss_curves, read_metrics
from vtp_gen.utils.step_guard import guarded_step

log = step_logger("eval")

SHORT_IS_REASON = (
    "the Inception weights have no classifier layer (pool3-only conversion); see docs/eval.md to enable IS"
)


# ----------------------------------------------------------------------------- context


@dataclass
class EvalContext:
    cfg: DictConfig
    folder: Path
    device: torch.device
    dataset_name: str
    tokenizer_path: Path | None
    tokenizer: torch.nn.Module | None = None
    records: list[MetricRecord] = field(default_factory=list)
    images: list[ReportImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    reference: object | None = None  # ReferenceSet of the evaluation split, once computed
    reference_indices: list[int] | None = None
    extractor: str = ""
    _inception: torch.nn.Module | None = None
    feature_network: tuple[torch.nn.Module, str] | None = None  # (network, extractor name) given to run()

    @property
    def progress(self) -> bool:
        return bool(self.cfg.progress_bar)

    def inception(self) -> torch.nn.Module:
        """The feature network of every FID here, built once (see :func:`build_feature_network`)."""
        if self._inception is None:
            self._inception, self.extractor = self.feature_network or build_feature_network(
                self.cfg, self.device
            )
        return self._inception


def build_feature_network(cfg: DictConfig, device: torch.device) -> tuple[torch.nn.Module, str]:
    """(network, extractor name): the FID Inception, uint8 images -> pool3 features.

    channels_last makes it 1.45x faster on CPU with features equal within 4e-6. ``run`` takes
    another network instead (tests pass a small stand-in; its name keeps its numbers apart).
    """

    network = build_fid_inception(cfg.inception_weights or None, device=device)
    return network.to(memory_format=torch.channels_last), INCEPTION_EXTRACTOR


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_dataset_name(cfg: DictConfig) -> str:
    if cfg.dataset_name:
        return cfg.dataset_name
    if cfg.data.source == "fashion_mnist":
        return "Fashion-MNIST"
    return Path(cfg.data.root or cfg.data.shards or cfg.data.source).name


def _resolve_optional(explicit: str, default: Path, what: str) -> Path | None:
    """An explicit path must exist; the run's default location may be absent (that part is skipped)."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise FileNotFoundError(f"{what} {path} does not exist")
        return path
    return default if default.exists() else None


# ----------------------------------------------------------------------------- images


def build_transform(kind: str, size: int):
    """PIL image -> normalised (3, size, size) tensor (see eval_config.TRANSFORMS)."""
    if kind == "center_crop":
        return CenterCropNormalize(size)
    from torchvision.transforms import v2

    if kind == "resize":
        resize = v2.Resize((size, size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    elif kind == "resize_center_crop":
        resize = v2.Compose(
            [
                v2.Resize(
                    round(size * 256 / 224), interpolation=v2.InterpolationMode.BICUBIC, antialias=True
                ),
                v2.CenterCrop(size),
            ]
        )
    else:
        raise ValueError(f"unknown transform {kind!r}; choose center_crop, resize or resize_center_crop")
    return lambda image: normalize(pil_to_tensor(resize(image.convert("RGB"))))


def labelled_loader(ctx: EvalContext, split: str, transform, limit: int, root: str = "") -> DataLoader:
    data = ctx.cfg.data if not root else OmegaConf.merge(ctx.cfg.data, {"root": root})
    dataset = build_dataset(data, transform=transform, split=split)
    indices = evaluation_subset(len(dataset), limit)
    return DataLoader(
        Subset(dataset, indices),
        batch_size=ctx.cfg.data.batch_size,
        shuffle=False,
        num_workers=ctx.cfg.data.num_workers,
        collate_fn=collate_samples,
    )


# ----------------------------------------------------------------------------- generation


def evaluation_reference(ctx: EvalContext, need_features: bool):
    """The FID reference: an ADM batch / image folder given in the config, or the split's images (cached)."""

    gen = ctx.cfg.generation
    if gen.reference:
        path = Path(gen.reference)
        cache = None
        if ctx.cfg.cache_reference and path.is_file():
            # An ADM batch's own images (P/R, KID) cost 10k Inception passes: keep their features too.
            stat = path.stat()
            key = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, gen.num_reference])
            ctx.inception()
            key += ctx.extractor
            cache = (
                cache_dir()
                / "fid_references"
                / f"{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
            )
        return prepare_reference(
            gen.reference,
            ctx.inception(),
            ctx.extractor,
            cache,
            need_features,
            batch_size=ctx.cfg.data.batch_size,
            progress=ctx.progress,
            max_images=gen.num_reference or None,
        )
    if ctx.reference is not None:
        return ctx.reference
    network = ctx.inception()  # also sets ctx.extractor, part of the cache key
    size = ctx.cfg.data.image_size
    dataset = build_dataset(ctx.cfg.data, transform=CenterCropNormalize(size), split=ctx.cfg.data.split)
    indices = evaluation_subset(len(dataset), gen.num_reference)
    key = ReferenceKey(
        dataset=ctx.dataset_name,
        split=ctx.cfg.data.split,
        num_images=len(indices),
        image_size=size,
        preprocessing=f"ADM centre crop to {size} px, uint8 RGB; random subset, seed {SUBSET_SEED}",
        extractor=ctx.extractor,
        network=network_digest(network),
        data=dataset_fingerprint(dataset),
    )
    folder = cache_dir() / "fid_references" if ctx.cfg.cache_reference else None

    def reference_features():
        loader = labelled_loader(ctx, ctx.cfg.data.split, CenterCropNormalize(size), gen.num_reference)
        images = (uint8_nchw(batch["image"]) for batch in loader)
        return extract_features(images, network, ctx.cfg.data.batch_size, None, ctx.progress, "reference")

    cached = cached_reference(folder, key, reference_features)
    log.info(
        f"reference features: {'cached' if cached.hit else 'computed'} ({cached.seconds:.0f} s) {cached.path}"
    )
    reference = ReferenceSet(cached.statistics, cached.features, ctx.extractor)
    reference.source = f"{ctx.dataset_name} {ctx.cfg.data.split}"
    ctx.reference, ctx.reference_indices = reference, indices
    return reference


def resolved_sampling(cfg: DictConfig, generator: Path | None) -> dict:
    """The sampler: config values, else the one recorded with the generator, else the SamplingConfig defaults."""

    values = OmegaConf.to_container(OmegaConf.structured(SamplingConfig))
    recorded = _generator_record(generator).get("sampling", {})
    values.update({k: v for k, v in recorded.items() if k in values})
    values.update({k: v for k, v in cfg.generation.sampling.items() if v is not None})
    return values


def _samples_record(samples: Path) -> dict:
    """The samples.json that `make sample` writes beside its images/ folder, if any."""
    for folder in (samples, samples.parent) if samples.is_dir() else (samples.parent,):
        path = folder / "samples.json"
        if path.is_file():
            return json.loads(path.read_text())
    return {}


def _made_by(samples: Path, generator: Path | None) -> bool:
    """Whether `make sample` recorded these samples as made by exactly ``generator``'s weights."""
    recorded = _samples_record(samples).get("identity", {}).get("generator_sha256")
    if generator is None or not recorded:
        return False

    return tensor_digest(load_any_generator(generator).state_dict()) == recorded


def _generator_record(generator: Path | None) -> dict:
    """stage2.json written next to an exported generator (model name, step, sampler), if any."""
    if generator is None:
        return {}
    path = (generator if generator.is_dir() else generator.parent) / "stage2.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def describe_generator(ctx: EvalContext, generator: Path | None) -> str:
    """'LightningDiT-T/1, 1500 steps' or '..., 80 ep' from the stage-2 run (config value wins)."""
    if ctx.cfg.generation.generator_label:
        return ctx.cfg.generation.generator_label
    record = _generator_record(generator)
    name, step = record.get("model_name"), record.get("step")
    if not name:
        return generator.name if generator is not None else "unknown generator"
    epochs = None
    stage2_config = generator.parent / "config.yaml"
    manifest = Path(record.get("latent_cache", "")) / "manifest.json"
    if step and stage2_config.is_file() and manifest.is_file():
        batch = OmegaConf.load(stage2_config).get("train", {}).get("global_batch_size")
        images = json.loads(manifest.read_text()).get("counts", {}).get("images")
        if batch and images:
            epochs = step * batch / images
    return generator_label(name, epochs=epochs, steps=step)


def samples_needed(cfg: DictConfig) -> int:
    """Samples the generation part scores: FID & co. take the first num_samples, the domain metric its own N."""
    gen = cfg.generation
    return max(gen.num_samples, domain_num_samples(cfg)) if gen.domain.enabled else gen.num_samples


def ensure_samples(ctx: EvalContext, generator: Path, sampling: dict) -> Path:
    """A folder with num_samples PNGs from ``generator``, made with the sampling library when missing.

    The sampling library resumes (only missing samples are made) and records what made the samples;
    a folder made with other weights or settings is cleared and made again (``overwrite``), since
    these samples belong to this evaluation only.
    """

    gen = ctx.cfg.generation
    tag = (
        f"{sampling['method']}{sampling['steps']}-shift{sampling['shift']:g}-cfg{sampling['cfg_scale']:g}"
        f"-{gen.labels}-seed{ctx.cfg.run.seed}"
    )
    sample_cfg = OmegaConf.structured(SampleConfig)
    sample_cfg.run = ctx.cfg.run
    sample_cfg.generator = str(generator)
    sample_cfg.tokenizer = str(ctx.tokenizer_path) if ctx.tokenizer_path else ""
    sample_cfg.latent_stats = gen.latent_stats
    sample_cfg.out_dir = str(ctx.folder / "samples" / tag)
    sample_cfg.num_samples = samples_needed(ctx.cfg)
    sample_cfg.labels = gen.labels
    sample_cfg.batch_size = gen.sample_batch_size
    sample_cfg.sampling = OmegaConf.merge(sample_cfg.sampling, sampling)
    sample_cfg.write_npz = True
    sample_cfg.grid_images = 0
    sample_cfg.overwrite = True
    sample_cfg.accelerator = "gpu" if ctx.device.type == "cuda" else "cpu"
    sample_cfg.devices = 1
    sample_cfg.progress_bar = ctx.progress
    result = sample_run.run(sample_cfg)
    return Path(result.folder) / sample_run.IMAGES_DIR


def evaluate_generation_part(ctx: EvalContext) -> None:

    gen = ctx.cfg.generation
    generator = _resolve_optional(gen.generator, run_root(ctx.cfg) / "stage2" / "generator", "generator")
    samples = Path(gen.samples) if gen.samples else None
    if samples is not None and not samples.exists():
        raise FileNotFoundError(f"generation.samples {samples} does not exist")
    if samples is None and generator is None:
        ctx.notes.append(
            "generation: skipped (no generator in runs/<name>/stage2/generator and no samples given)"
        )
        log.info(ctx.notes[-1])
        return
    if samples is None:
        sampling, labels = resolved_sampling(ctx.cfg, generator), gen.labels
        samples = ensure_samples(ctx, generator, sampling)
    else:
        # Samples made by `make sample` carry their record (samples.json): sampler and labels are known.
        identity = _samples_record(samples).get("identity", {})
        sampling, labels = identity.get("sampling", {}), identity.get("labels", "")
        if samples.is_dir() and (samples / "images").is_dir():
            samples = samples / "images"  # a `make sample` folder: its PNGs (not grid.png beside them)
    available = count_images(samples)
    if available is not None and available < samples_needed(ctx.cfg):
        wanted = f"generation.num_samples={gen.num_samples}"
        if samples_needed(ctx.cfg) > gen.num_samples:
            wanted = f"generation.domain.num_samples={gen.domain.num_samples}"
        raise ValueError(f"{samples} holds {available} images, fewer than {wanted}")
    metrics = [m for m in gen.metrics]
    reference = evaluation_reference(ctx, need_features=bool({"kid", "precision_recall"} & set(metrics)))
    started = time.time()
    result = evaluate_generation(
        str(samples),
        reference,
        metrics=metrics,
        network=ctx.inception(),
        extractor=ctx.extractor,
        batch_size=ctx.cfg.data.batch_size,
        progress=ctx.progress,
        max_samples=gen.num_samples,
        skip_unavailable=True,
        prc_k=gen.prc_k,
        kid_subsets=gen.kid_subsets,
        kid_subset_size=gen.kid_subset_size,
        keep_features=gen.fid_bootstrap > 0,
    )
    ctx.seconds["generation_metrics"] = time.time() - started
    if sampling:
        method = sampler_label(sampling["method"], sampling["steps"], sampling["shift"], labels)
        guidance = guidance_label(
            sampling["cfg_scale"], sampling["cfg_interval_start"], sampling["guidance_mode"]
        )
    else:  # samples from elsewhere, without a record: say so, so they never pass for a known protocol
        method, guidance = "sampler not recorded", "not recorded"
    if gen.samples and not (gen.generator_label or gen.generator or _made_by(samples, generator)):
        label = "not recorded (set generation.generator_label)"  # the run's own generator may not be theirs
    else:
        label = describe_generator(ctx, generator)
    reference_name = Path(gen.reference).name if gen.reference else f"{ctx.dataset_name} {ctx.cfg.data.split}"
    num_reference = result.get("num_reference")
    if gen.reference and Path(gen.reference).suffix == ".npz":
        num_reference = None  # an ADM batch's statistics, whatever their count
    protocol = Protocol(
        ctx.dataset_name,
        _image_side(samples),
        result["num_samples"],
        reference=reference_name,
        num_reference=num_reference,
        method=method,
        guidance=guidance,
        generator=label,
        features=ctx.extractor,
    )
    if "fid" in metrics:
        ctx.records.append(fid_record(result, protocol, gen.fid_bootstrap, ctx.cfg.run.seed))
    if "kid" in metrics:
        ctx.records.append(
            MetricRecord(
                "kid",
                result["kid"],
                protocol,
                std=result["kid_std"],
                extra={"subset_size": result["kid_subset_size"], "subsets": gen.kid_subsets},
            )
        )
    if "precision_recall" in metrics:
        ctx.records.append(MetricRecord("precision", result["precision"], protocol, extra={"k": gen.prc_k}))
        ctx.records.append(MetricRecord("recall", result["recall"], protocol, extra={"k": gen.prc_k}))
    if "inception_score" in metrics:
        reason = result.get("unavailable", {}).get("inception_score")
        value = None if reason else result["inception_score"]
        std = None if reason else result["inception_score_std"]
        ctx.records.append(
            MetricRecord(
                "inception_score", value, protocol, std=std, unavailable=SHORT_IS_REASON if reason else ""
            )
        )
    if gen.domain.enabled:
        domain = evaluate_domain_part(ctx.cfg, ctx.folder, samples, protocol, ctx.cfg.run.seed)
        ctx.records += domain.records
        ctx.notes += domain.notes
        ctx.seconds.update(domain.seconds)
        ctx.info["domain"] = domain.info
    ctx.info.update(samples=str(samples), generator=str(generator) if generator else "", sampling=sampling)
    _sample_grid(ctx, samples)


def fid_record(result: dict, protocol: Protocol, resamples: int, seed: int) -> MetricRecord:
    """FID-N, with a centred bootstrap interval over the samples when ``resamples`` > 0.

    The resamples use the symmetric trace route against the fixed reference
    (:class:`~vtp_gen.metrics.generation.FrechetToReference`): no sqrtm per resample.
    """
    if resamples <= 0:
        return MetricRecord("gfid", result["fid"], protocol)
    distance = FrechetToReference(result["reference_statistics"], result.get("reference_features"))
    interval = frechet_interval(result["sample_features"], distance, resamples, seed)
    shift = result["fid"] - interval.value  # the sqrtm route's value; the two agree to rounding
    return MetricRecord(
        "gfid",
        result["fid"],
        protocol,
        interval=(max(interval.low + shift, 0.0), interval.high + shift),
        extra={"interval": interval.to_dict()},
    )


def _image_side(samples: Path) -> int:

    first = next(iter_image_batches(str(samples), 1))
    return int(first.shape[-1])


def _sample_grid(ctx: EvalContext, samples: Path) -> None:

    n = ctx.cfg.generation.grid_images
    if n <= 0:
        return
    batch = next(iter_image_batches(str(samples), n))
    upscale = max(1, 64 // batch.shape[-1])  # tiny images are enlarged for viewing
    if upscale > 1:
        batch = torch.nn.functional.interpolate(batch.float(), scale_factor=upscale, mode="nearest").to(
            torch.uint8
        )
    path = save_grid(batch.permute(0, 2, 3, 1).numpy(), ctx.folder / "images" / "samples.png", nrow=8)
    ctx.images.append(ReportImage("Generated samples", path, f"The first {len(batch)} of {samples}."))


# ----------------------------------------------------------------------------- reconstruction


@torch.no_grad()
def evaluate_reconstruction_part(ctx: EvalContext) -> None:
    rc, tokenizer = ctx.cfg.reconstruction, ctx.tokenizer
    if tokenizer.pixel_decoder is None:
        ctx.notes.append("reconstruction: skipped (the tokenizer has no pixel decoder)")
        return
    size = ctx.cfg.data.image_size
    lpips = None
    if rc.lpips:
        lpips = build_lpips_vgg(ctx.cfg.lpips_weights or None, device=ctx.device)
    loader = labelled_loader(ctx, ctx.cfg.data.split, CenterCropNormalize(size), rc.num_images)
    # rFID reuses the reference features when these images are its first ones (same split, crop, order).
    reuse = (
        rc.rfid
        and not ctx.cfg.generation.reference
        and ctx.reference is not None
        and ctx.reference_indices is not None
        and ctx.reference_indices[: len(loader.dataset)] == list(loader.dataset.indices)
    )
    report = evaluate_reconstruction(
        tokenizer,
        (batch["image"] for batch in loader),
        ctx.device,
        lpips=lpips,
        feature_network=ctx.inception() if rc.rfid else None,
        reference_features=ctx.reference.features if reuse else None,
        grid_images=rc.grid_images,
        progress=ctx.progress,
    )
    result = report.metrics
    protocol = Protocol(f"{ctx.dataset_name} {ctx.cfg.data.split}", size, result["num_images"])
    if "rfid" in result:
        features_protocol = Protocol(
            protocol.dataset,
            size,
            result["num_images"],
            reference=RECONSTRUCTION_REFERENCE,
            features=ctx.extractor,
        )
        ctx.records.append(MetricRecord("rfid", result["rfid"], features_protocol))
    ctx.records.append(MetricRecord("psnr", result["psnr"], protocol))
    ctx.records.append(MetricRecord("ssim", result["ssim"], protocol))
    if "lpips" in result:
        ctx.records.append(MetricRecord("lpips", result["lpips"], protocol, extra={"network": "vgg, v0.1"}))
    if report.grid is not None:
        path = save_reconstruction_grid(report.grid, ctx.folder / "images" / "reconstructions.png")
        ctx.images.append(
            ReportImage("Reconstructions", path, "Top row: originals; bottom row: reconstructions.")
        )


# ----------------------------------------------------------------------------- linear probes


def probe_feature_fn(tokenizer, protocols, blocks: int):
    """Features of both probe protocols from one trunk pass.

    Protocol (a)'s bottleneck features (:func:`~vtp_gen.metrics.linear_probe.bottleneck_features`)
    follow from (b)'s: the last block's normed output is the final-norm output, and the bias-free
    bottleneck commutes with the mean over positions. One pass instead of two halves the probe's
    feature cost (tests check equality with the library's own functions).
    """

    if "dinov2" not in protocols:
        return bottleneck_features(tokenizer)
    intermediate = intermediate_features(tokenizer, blocks)

    def features(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = intermediate(images)
        if "bottleneck" in protocols:
            out["bottleneck_cls"] = tokenizer.trunk.bottleneck(out["cls_-1"])
            out["bottleneck_mean"] = tokenizer.trunk.bottleneck(out["patch_mean"])
        return out

    return features


def evaluate_probe_part(ctx: EvalContext) -> None:

    lp, tokenizer = ctx.cfg.linear_probe, ctx.tokenizer
    unknown = sorted(set(lp.protocols) - {"bottleneck", "dinov2"})
    if unknown:
        raise ValueError(f"linear_probe.protocols: unknown {unknown}; choose bottleneck, dinov2")
    size = lp.image_size or ctx.cfg.data.image_size
    transform = build_transform(lp.transform, size)
    # A trunk shallower than the protocol's 4 blocks (vtp-tiny has 3) uses all of its blocks instead.
    depth = len(tokenizer.trunk.blocks)
    n_last_blocks = sorted({min(n, depth) for n in lp.n_last_blocks})
    blocks = max(n_last_blocks)
    feature_fn = probe_feature_fn(tokenizer, lp.protocols, blocks)

    digest = tokenizer_identity(ctx.tokenizer_path)["weights_sha256"][:12]

    def features_for(split: str, limit: int, root: str) -> dict:
        name = f"{split}-{size}px-{lp.transform}-{limit}-b{blocks}-{'_'.join(sorted(lp.protocols))}-{digest}"
        path = ctx.folder / "probe_features" / f"{name}.safetensors"

        def compute():
            loader = labelled_loader(ctx, split, transform, limit, root)
            return extract_probe_features(
                loader, feature_fn, ctx.device, ctx.progress, f"probe features ({split})"
            )

        return cached_probe_features(path, compute) if lp.cache_features else compute()

    started = time.time()
    train = features_for(lp.train_split, lp.train_images, lp.train_root)
    test = features_for(ctx.cfg.data.split, lp.test_images, "")
    ctx.seconds["probe_features"] = time.time() - started
    num_classes = int(max(train["labels"].max(), test["labels"].max())) + 1
    base = dict(
        dataset=f"{ctx.dataset_name} {ctx.cfg.data.split}",
        image_size=size,
        num_samples=len(test["labels"]),
        reference=f"{ctx.dataset_name} {lp.train_split}",
        num_reference=len(train["labels"]),
    )

    def record(result, metric, method):
        extra = {
            "best_classifier": result.best_classifier,
            "best_per_feature_set": result.best_per_feature_set,
        }
        ctx.records.append(
            MetricRecord(metric, result.best_accuracy / 100, Protocol(**base, method=method), extra=extra)
        )

    started = time.time()
    if "bottleneck" in lp.protocols:
        names = ("bottleneck_cls", "bottleneck_mean")
        channels = train["bottleneck_cls"].shape[1]
        result = fit_logistic_probes(
            {k: train[k] for k in names},
            train["labels"],
            {k: test[k] for k in names},
            test["labels"],
            num_classes=num_classes,
            seed=ctx.cfg.run.seed,
        )
        method = (
            f"{channels}-d bottleneck features (CLS or mean latent), standardised, logistic regression "
            f"(L-BFGS to convergence; feature set and L2 chosen on "
            f"{result.settings['holdout_fraction']:.0%} of the train features); "
            f"cached features (no train-time augmentation)"
        )
        record(result, "linear_probe_bottleneck", method)
    if "dinov2" in lp.protocols:
        result = train_linear_probes(
            dinov2_feature_sets(train, n_last_blocks),
            train["labels"],
            dinov2_feature_sets(test, n_last_blocks),
            test["labels"],
            num_classes=num_classes,
            learning_rates=lp.learning_rates,
            epochs=lp.epochs,
            batch_size=lp.batch_size,
            seed=ctx.cfg.run.seed,
            device=ctx.device,
            progress=ctx.progress,
        )
        method = dinov2_probe_method(n_last_blocks, len(lp.learning_rates), lp.epochs, cached_features=True)
        record(result, "linear_probe", method)
    ctx.seconds["probe_training"] = time.time() - started


# ----------------------------------------------------------------------------- zero-shot


def evaluate_zero_shot_part(ctx: EvalContext) -> None:
    zs, tokenizer = ctx.cfg.zero_shot, ctx.tokenizer
    if tokenizer.text is None:
        ctx.notes.append("zero-shot: skipped (the tokenizer has no text tower, e.g. an AE-only run)")
        log.info(ctx.notes[-1])
        return
    size = zs.image_size or ctx.cfg.data.image_size
    loader = labelled_loader(ctx, ctx.cfg.data.split, build_transform(zs.transform, size), zs.num_images)
    classes = zero_shot_classes(ctx.cfg.data.source, loader.dataset.dataset, zs.classes)
    if classes is None:
        ctx.notes.append("zero-shot: skipped (no class names for this data; set zero_shot.classes)")
        log.info(ctx.notes[-1])
        return
    class_names, templates = classes
    result = evaluate_tokenizer_zero_shot(tokenizer, loader, class_names, templates, ctx.device, ctx.progress)
    prompts = (
        "80 OpenAI templates, OpenCLIP class names"
        if len(class_names) == 1000
        else f"{len(templates)} templates, {len(class_names)} classes"
    )
    protocol = Protocol(
        f"{ctx.dataset_name} {ctx.cfg.data.split}",
        size,
        result["num_images"],
        method=zero_shot_method(prompts, zs.transform),
    )
    ctx.records.append(MetricRecord("zero_shot_top1", result["top1"] / 100, protocol))
    ctx.records.append(MetricRecord("zero_shot_top5", result["top5"] / 100, protocol))


# ----------------------------------------------------------------------------- loss curves


def collect_loss_curves(ctx: EvalContext) -> None:
    """Stage 1's loss-curve PNG, and stage 2's curves plotted from its CSV log."""

    root = run_root(ctx.cfg)
    stage1 = root / "stage1" / "images" / "loss_curves.png"
    if stage1.is_file():
        ctx.images.append(ReportImage("Stage 1 loss curves", stage1, name="stage1_loss_curves.png"))
    logs = csv_logs(root / "stage2" / "logs")  # every part of a resumed run, oldest first
    logged = read_metrics(logs) if logs else {}
    keys = ("train/loss", "train/mse", "train/cosine")
    if any(logged.get(k) for k in keys):
        path = plot_loss_curves(
            logged,
            keys,
            ctx.folder / "images" / "stage2_loss_curves.png",
            title=f"stage 2: {ctx.cfg.run.name}",
        )
        ctx.images.append(ReportImage("Stage 2 loss curves", path))


# ----------------------------------------------------------------------------- entry point


def output_folder(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else run_root(cfg) / "eval"


def _timed(ctx: EvalContext, name: str, part) -> None:
    started, cpu = time.time(), time.process_time()
    part(ctx)
    ctx.seconds[name] = time.time() - started
    # CPU time too: on a shared machine it tells what the part costs on an idle one.
    ctx.seconds[f"{name}_cpu"] = time.process_time() - cpu
    log.info(f"{name}: {ctx.seconds[name]:.0f} s ({ctx.seconds[name + '_cpu']:.0f} s CPU)")


@guarded_step(
    "eval",
    output_folder,
    on_stop="samples and reference features made so far are kept; rerun the same command to go on",
)
def run(cfg: DictConfig, feature_network: tuple[torch.nn.Module, str] | None = None) -> dict:
    """Evaluate the run; returns the metrics.json payload's parts (records, report path, timings).

    ``feature_network``: (network, extractor name) of every FID instead of the FID
    Inception (uint8 (N, 3, H, W) -> features); the name is recorded with the numbers.
    """

    started = time.time()
    folder = output_folder(cfg)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    torch.manual_seed(cfg.run.seed)
    tokenizer_path = _resolve_optional(cfg.tokenizer, run_root(cfg) / "stage1" / "tokenizer", "tokenizer")
    ctx = EvalContext(cfg, folder, resolve_device(cfg.device), default_dataset_name(cfg), tokenizer_path)
    ctx.feature_network = feature_network
    if tokenizer_path is not None:
        ctx.tokenizer = load_tokenizer(tokenizer_path, device=ctx.device)
    else:
        ctx.notes.append("tokenizer metrics: skipped (no tokenizer in runs/<name>/stage1/tokenizer)")
        log.info(ctx.notes[-1])
    log.info(
        f"evaluating run '{cfg.run.name}' on {ctx.dataset_name} {cfg.data.split} ({ctx.device}) -> {folder}"
    )
    with torch.no_grad():
        if cfg.generation.enabled:
            _timed(ctx, "generation", evaluate_generation_part)
        if ctx.tokenizer is not None:
            if cfg.reconstruction.enabled:
                _timed(ctx, "reconstruction", evaluate_reconstruction_part)
            if cfg.linear_probe.enabled:
                with torch.enable_grad():  # the probes train; their inputs are cached features
                    _timed(ctx, "linear_probe", evaluate_probe_part)
            if cfg.zero_shot.enabled:
                _timed(ctx, "zero_shot", evaluate_zero_shot_part)
    collect_loss_curves(ctx)
    ctx.seconds["total"] = time.time() - started
    run_info = {
        "run": cfg.run.name,
        "dataset": ctx.dataset_name,
        "tokenizer": str(tokenizer_path) if tokenizer_path else "",
        "seconds": ctx.seconds,
        **ctx.info,
    }
    report = write_report(
        folder, ctx.records, run_info, ctx.images, f"Evaluation: run {cfg.run.name}", ctx.notes
    )
    log.info(f"done in {ctx.seconds['total']:.0f} s; {report} and {folder / 'metrics.json'}:")
    print(console_table(ctx.records), flush=True)
    return {
        "records": ctx.records,
        "report": report,
        "metrics": folder / "metrics.json",
        "seconds": ctx.seconds,
    }
