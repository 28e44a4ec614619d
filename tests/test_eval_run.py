"""`make eval` end to end on a tiny run folder (vtp_gen.pipeline.evaluate.run).

The run folder is real in layout and weights format: a vtp-tiny tokenizer written with
save_pretrained, a LightningDiT-T/1 generator exported as stage 2 does. Weights are random,
so the numbers are checked against independent computations, not against quality bars.
The FID feature network is a small stand-in (its 2048-d Inception square root alone costs
~50 CPU-seconds); the slow test runs the real Inception.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vtp_gen import create_model, load_tokenizer, save_pretrained
from vtp_gen.config import load_config
from vtp_gen.interop.generators import save_generator
from vtp_gen.metrics.report import read_metrics_json
from vtp_gen.metrics.tokenizer import evaluation_subset
from vtp_gen.pipeline.evaluate import run as eval_run
from vtp_gen.pipeline.evaluate.config import EvalConfig

REPO = Path(__file__).resolve().parents[1]
STAND_IN = "test-stand-in/8x8-grey-projection"


class StandInFeatures(torch.nn.Module):
    """uint8 images -> a fixed random projection of their 8x8 grey thumbnails (64-d)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("projection", torch.randn(64, 64, generator=torch.Generator().manual_seed(0)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.float().mean(dim=1, keepdim=True) / 255.0
        thumbs = torch.nn.functional.interpolate(grey, size=(8, 8), mode="area").flatten(1)
        return thumbs @ self.projection


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run = root / "tiny"
    torch.manual_seed(0)
    with pytest.warns(UserWarning):  # vtp-tiny (patch 4) loads in vtp_gen only: save_pretrained says so
        save_pretrained(create_model("vtp-tiny").eval(), run / "stage1" / "tokenizer")
    generator = run / "stage2" / "generator"
    save_generator(
        create_model("LightningDiT-T/1", input_size=8, in_channels=16, num_classes=10).eval(), generator
    )
    torch.save(
        {"mean": torch.zeros(1, 16, 1, 1), "std": torch.full((1, 16, 1, 1), 0.5)},
        generator / "latents_stats.pt",
    )
    sampler = dict(
        method="euler",
        steps=4,
        shift=0.3,
        cfg_scale=1.0,
        cfg_interval_start=0.0,
        guidance_mode="all_channels",
    )
    (generator / "stage2.json").write_text(
        json.dumps({"step": 7, "model_name": "LightningDiT-T/1", "sampling": sampler})
    )
    return root


def _config(runs: Path, *extra: str):
    overrides = [
        f"run.out_dir={runs}",
        "run.name=tiny",
        "device=cpu",
        "progress_bar=false",
        "cache_reference=false",
        "data.batch_size=32",
        "generation.num_samples=30",
        "generation.num_reference=40",
        "generation.sample_batch_size=16",
        "generation.kid_subset_size=20",
        "generation.kid_subsets=10",
        "generation.grid_images=16",
        "reconstruction.num_images=24",
        "reconstruction.grid_images=4",
        "linear_probe.train_images=300",
        "linear_probe.test_images=200",
        "linear_probe.epochs=3",
        "linear_probe.learning_rates=[0.01,0.1]",
        "linear_probe.batch_size=64",
        "zero_shot.num_images=100",
        *extra,
    ]
    return load_config(EvalConfig, REPO / "configs" / "eval" / "tiny.yaml", overrides)


def _lpips_available() -> bool:
    from vtp_gen.pretrained.cache import WeightsNotFoundError
    from vtp_gen.pretrained.lpips import find_vgg16_weights

    try:
        find_vgg16_weights()
        return True
    except WeightsNotFoundError:
        return False


def run_eval(cfg):
    """The eval step with the small stand-in feature network in place of the FID Inception."""
    return eval_run.run(cfg, feature_network=(StandInFeatures(), STAND_IN))


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    cfg = _config(tiny_run, f"reconstruction.lpips={str(_lpips_available()).lower()}")
    return cfg, run_eval(cfg)


def test_every_metric_is_written_with_its_protocol(evaluated):
    cfg, result = evaluated
    info, records = read_metrics_json(result["metrics"])
    by_metric = {r.metric: r for r in records}
    expected = {"gfid", "kid", "precision", "recall", "inception_score", "rfid", "psnr", "ssim"}
    expected |= {"linear_probe", "linear_probe_bottleneck", "zero_shot_top1", "zero_shot_top5"}
    expected |= {"lpips"} if cfg.reconstruction.lpips else set()
    assert set(by_metric) == expected
    gfid = by_metric["gfid"]
    assert gfid.label == "FID-30" and gfid.protocol.num_reference == 40
    assert gfid.protocol.features == STAND_IN and gfid.protocol.guidance == "none"
    assert (
        gfid.protocol.method == "euler, 4 steps, shift 0.3, balanced labels"
    )  # the generator's recorded sampler
    assert gfid.protocol.generator == "LightningDiT-T/1, 7 steps"
    assert by_metric["rfid"].label == "rFID-24" and by_metric["psnr"].protocol.num_samples == 24
    assert by_metric["inception_score"].value is None and by_metric["inception_score"].unavailable
    assert by_metric["kid"].extra["subset_size"] == 20
    probe = by_metric["linear_probe"]
    assert (probe.protocol.num_samples, probe.protocol.num_reference) == (200, 300)
    assert "last 1 or 3 blocks" in probe.protocol.method  # vtp-tiny has 3 blocks, not 4
    assert (
        0.0 <= probe.value <= 1.0
        and 0.0 <= by_metric["zero_shot_top1"].value <= by_metric["zero_shot_top5"].value
    )
    assert by_metric["zero_shot_top1"].protocol.num_samples == 100
    for record in records:
        if record.metric != "inception_score":
            assert np.isfinite(record.value), record.metric
    assert info["run"] == "tiny" and info["seconds"]["total"] > 0


def test_report_folder(evaluated):
    cfg, result = evaluated
    folder = Path(result["report"]).parent
    text = Path(result["report"]).read_text()
    assert "| FID-30 |" in text and "| rFID-24 |" in text
    for image in ("samples.png", "reconstructions.png"):
        assert (folder / "images" / image).is_file() and f"images/{image}" in text
    assert (folder / "config.yaml").is_file()
    samples = list((folder / "samples").glob("*/images/*.png"))
    assert len(samples) == 30
    assert list((folder / "samples").glob("*/samples.npz"))


def test_rfid_and_psnr_match_an_independent_computation(evaluated, tiny_run):
    """rFID reuses the reference features of the same images; recompute everything from scratch."""
    from vtp_gen.data.fashion_mnist import FashionMNIST
    from vtp_gen.data.transforms import CenterCropNormalize, to_uint8
    from vtp_gen.metrics.generation import fid_from_features

    cfg, result = evaluated
    _, records = read_metrics_json(result["metrics"])
    by_metric = {r.metric: r for r in records}
    dataset = FashionMNIST(split="test", transform=CenterCropNormalize(32))
    indices = evaluation_subset(len(dataset), 24)
    images = torch.stack([dataset[i]["image"] for i in indices])
    tokenizer = load_tokenizer(tiny_run / "tiny" / "stage1" / "tokenizer")
    with torch.no_grad():
        decoded = tokenizer.get_latents_decoded_images(tokenizer.get_reconstruction_latents(images))
    original = to_uint8(images).permute(0, 3, 1, 2)
    recon = to_uint8(decoded).permute(0, 3, 1, 2)
    net = StandInFeatures()
    expected = fid_from_features(net(original).numpy(), net(recon).numpy())
    assert by_metric["rfid"].value == pytest.approx(expected, rel=1e-6)
    mse = (original.double() - recon.double()).pow(2).flatten(1).mean(1)
    assert by_metric["psnr"].value == pytest.approx(
        (10 * torch.log10(255.0**2 / mse)).mean().item(), rel=1e-6
    )


def test_second_eval_reuses_samples_and_probe_features(evaluated, tiny_run, monkeypatch):
    cfg, result = evaluated
    folder = Path(result["report"]).parent
    pngs = sorted((folder / "samples").glob("*/images/*.png"))
    stamps = [p.stat().st_mtime_ns for p in pngs]
    calls = []
    original = eval_run.labelled_loader
    monkeypatch.setattr(
        eval_run,
        "labelled_loader",
        lambda ctx, split, *a, **k: calls.append(split) or original(ctx, split, *a, **k),
    )
    again = run_eval(_config(tiny_run, "reconstruction.enabled=false", "zero_shot.enabled=false"))
    assert [p.stat().st_mtime_ns for p in sorted((folder / "samples").glob("*/images/*.png"))] == stamps
    assert "train" not in calls  # probe features came from the cache
    first = {r.metric: r.value for r in read_metrics_json(result["metrics"])[1]}
    second = {r.metric: r.value for r in again["records"]}
    assert second["gfid"] == pytest.approx(first["gfid"]) and second["linear_probe"] == pytest.approx(
        first["linear_probe"]
    )


def test_one_pass_probe_features_equal_the_library_functions(tiny_run):
    from vtp_gen.metrics.linear_probe import bottleneck_features, intermediate_features

    tokenizer = load_tokenizer(tiny_run / "tiny" / "stage1" / "tokenizer")
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ours = eval_run.probe_feature_fn(tokenizer, ["bottleneck", "dinov2"], 3)(images)
        reference = {**bottleneck_features(tokenizer)(images), **intermediate_features(tokenizer, 3)(images)}
    assert set(ours) == set(reference)
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, atol=1e-6, rtol=1e-5)


def test_missing_parts_are_skipped_with_notes_and_bad_paths_fail(tmp_path, monkeypatch):
    result = run_eval(_config(tmp_path, "linear_probe.enabled=false"))
    assert result["records"] == []
    text = Path(result["report"]).read_text()
    assert "generation: skipped" in text and "tokenizer metrics: skipped" in text
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        run_eval(_config(tmp_path, f"tokenizer={tmp_path / 'nope'}"))


def test_reference_features_are_cached_per_split_and_count(tmp_path, monkeypatch):
    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, "cache_reference=true")
    ctx = eval_run.EvalContext(
        cfg,
        tmp_path / "out",
        torch.device("cpu"),
        "Fashion-MNIST",
        None,
        feature_network=(StandInFeatures(), STAND_IN),
    )
    first = eval_run.evaluation_reference(ctx, need_features=True)
    cached = list((tmp_path / "cache" / "fid_references").glob("*.safetensors"))
    assert len(cached) == 1 and "Fashion-MNIST-test-32px-40-" in cached[0].name
    ctx2 = eval_run.EvalContext(
        cfg,
        tmp_path / "out",
        torch.device("cpu"),
        "Fashion-MNIST",
        None,
        feature_network=(StandInFeatures(), STAND_IN),
    )
    monkeypatch.setattr(eval_run, "labelled_loader", lambda *a, **k: pytest.fail("reference recomputed"))
    second = eval_run.evaluation_reference(ctx2, need_features=True)
    np.testing.assert_allclose(first.features, second.features)
    assert first.features.shape == (40, 64)
    # Another feature network (other weights, same name) gets its own file, never the cached one.
    other = StandInFeatures()
    other.projection.mul_(2)
    ctx3 = eval_run.EvalContext(
        cfg, tmp_path / "out", torch.device("cpu"), "Fashion-MNIST", None, feature_network=(other, STAND_IN)
    )
    monkeypatch.undo()
    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "cache"))
    third = eval_run.evaluation_reference(ctx3, need_features=True)
    np.testing.assert_allclose(third.features, 2 * first.features, rtol=1e-5)
    assert len(list((tmp_path / "cache" / "fid_references").glob("*.safetensors"))) == 2
    # A damaged cache file is refused with a message that says what to do.
    from vtp_gen.metrics.reference_cache import CorruptReferenceError

    data = bytearray(cached[0].read_bytes())
    data[-3] ^= 0xFF
    cached[0].write_bytes(bytes(data))
    ctx4 = eval_run.EvalContext(
        cfg,
        tmp_path / "out",
        torch.device("cpu"),
        "Fashion-MNIST",
        None,
        feature_network=(StandInFeatures(), STAND_IN),
    )
    with pytest.raises(CorruptReferenceError, match="checksum mismatch.*delete it"):
        eval_run.evaluation_reference(ctx4, need_features=True)


def test_shipped_eval_recipes_validate():
    imagenet = load_config(EvalConfig, REPO / "configs" / "eval" / "imagenet.yaml")
    assert imagenet.generation.num_samples == 50_000 and imagenet.zero_shot.transform == "resize"
    assert imagenet.linear_probe.image_size == 224 and len(imagenet.linear_probe.learning_rates) == 13
    tiny = load_config(EvalConfig, REPO / "configs" / "eval" / "tiny.yaml")
    assert tiny.data.split == "test" and tiny.generation.num_samples <= 1000


@pytest.mark.slow
def test_real_inception_end_to_end(tiny_run, tmp_path):
    """The real FID Inception (needs `make weights`): numbers are finite and labelled with its name."""
    from vtp_gen.metrics.report import INCEPTION_FEATURES

    cfg = _config(
        tiny_run, f"out_dir={tmp_path / 'eval'}", "linear_probe.enabled=false", "zero_shot.enabled=false"
    )
    result = run_eval(cfg)
    by_metric = {r.metric: r for r in result["records"]}
    assert by_metric["gfid"].protocol.features == INCEPTION_FEATURES
    assert np.isfinite(by_metric["gfid"].value) and np.isfinite(by_metric["rfid"].value)


def test_samples_handed_over_keep_their_recorded_protocol(evaluated, tiny_run, tmp_path, monkeypatch):
    """A `make sample` folder tells its sampler and generator; a bare PNG folder cannot, and says so."""
    import shutil

    cfg, result = evaluated
    made = next((Path(result["report"]).parent / "samples").glob("*/samples.json")).parent
    off = ["reconstruction.enabled=false", "linear_probe.enabled=false", "zero_shot.enabled=false"]
    recorded = run_eval(_config(tiny_run, f"generation.samples={made}", f"out_dir={tmp_path / 'a'}", *off))
    gfid = {r.metric: r for r in recorded["records"]}["gfid"]
    assert gfid.protocol.method == "euler, 4 steps, shift 0.3, balanced labels"
    assert (
        gfid.protocol.generator == "LightningDiT-T/1, 7 steps"
    )  # the run's generator made them (weights digest)
    first = {r.metric: r for r in read_metrics_json(result["metrics"])[1]}["gfid"]
    assert gfid.value == pytest.approx(first.value) and gfid.comparison_key() == first.comparison_key()

    bare = tmp_path / "bare"
    shutil.copytree(made / "images", bare)
    unknown = run_eval(_config(tiny_run, f"generation.samples={bare}", f"out_dir={tmp_path / 'b'}", *off))
    gfid = {r.metric: r for r in unknown["records"]}["gfid"]
    assert gfid.protocol.method == "sampler not recorded" and gfid.protocol.generator.startswith(
        "not recorded"
    )
    with pytest.raises(ValueError, match="fewer than"):
        run_eval(_config(tiny_run, f"generation.samples={bare}", "generation.num_samples=31", *off))


def test_adm_reference_batch(evaluated, tiny_run, tmp_path, monkeypatch):
    """generation.reference = an ADM .npz: FID against its mu/sigma, P/R on its images, features cached."""
    from vtp_gen.data.fashion_mnist import FashionMNIST
    from vtp_gen.interop.adm_npz import save_adm_npz
    from vtp_gen.metrics.generation import FeatureStatistics, frechet_distance
    from vtp_gen.metrics.images import iter_image_batches

    cfg, result = evaluated
    from vtp_gen.metrics.report import INCEPTION_FEATURES

    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "cache"))
    # An ADM batch's statistics are Inception statistics by definition, and the library refuses any
    # other extractor. The stand-in poses as the Inception here so the path runs in seconds.
    train = FashionMNIST(split="train", max_samples=50)
    pixels = np.stack([np.asarray(train[i]["image"].resize((32, 32))) for i in range(50)])
    net = StandInFeatures()
    stats = FeatureStatistics.from_features(net(torch.from_numpy(pixels).permute(0, 3, 1, 2)).numpy())
    npz = save_adm_npz(tmp_path / "VIRTUAL_fmnist32.npz", pixels, stats.mu, stats.sigma)
    samples = next((Path(result["report"]).parent / "samples").glob("*/images"))
    off = ["reconstruction.enabled=false", "linear_probe.enabled=false", "zero_shot.enabled=false"]
    out = eval_run.run(
        feature_network=(StandInFeatures(), INCEPTION_FEATURES),
        cfg=_config(
            tiny_run,
            f"generation.reference={npz}",
            "generation.num_reference=0",
            "cache_reference=true",
            *off,
        ),
    )
    gfid = {r.metric: r for r in out["records"]}["gfid"]
    assert gfid.protocol.reference == "VIRTUAL_fmnist32.npz" and gfid.protocol.num_reference is None
    sample_features = np.concatenate([net(b).numpy() for b in iter_image_batches(str(samples), 50)])[:30]
    expected = frechet_distance(FeatureStatistics.from_features(sample_features), stats)
    assert gfid.value == pytest.approx(expected, rel=1e-5)
    assert len(list((tmp_path / "cache" / "fid_references").glob("VIRTUAL_fmnist32-*.npz"))) == 1
    with pytest.raises(ValueError, match="feature extractor"):  # the stand-in under its own name is refused
        run_eval(_config(tiny_run, f"generation.reference={npz}", "cache_reference=false", *off))


def test_domain_metric_with_intervals_floors_and_cached_references(
    evaluated, tiny_run, tmp_path, monkeypatch
):
    """generation.domain: FD in the garment judge's features + label agreement, each with its interval
    and real-vs-real floor, written through metrics.json / report.md; references cached and reused."""
    from safetensors import safe_open

    from vtp_gen.metrics.domain import JUDGE_FEATURES, judge_outputs, load_or_train_judge
    from vtp_gen.metrics.generation import FeatureStatistics, frechet_distance
    from vtp_gen.metrics.images import iter_image_batches
    from vtp_gen.metrics.reference_cache import ReferenceKey, load_reference_features
    from vtp_gen.pipeline.evaluate import domain as domain_part

    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "cache"))
    cfg, result = evaluated
    made = next((Path(result["report"]).parent / "samples").glob("*/samples.json")).parent
    overrides = [
        f"generation.samples={made}",
        "generation.metrics=[fid]",
        "cache_reference=true",
        "reconstruction.enabled=false",
        "linear_probe.enabled=false",
        "zero_shot.enabled=false",
        "generation.domain.enabled=true",
        "generation.domain.judge_epochs=1",
        "generation.domain.judge_train_images=2000",
        "generation.domain.num_reference=500",
        "generation.domain.floor_pool=200",
        "generation.domain.floor_repeats=10",
        "generation.domain.bootstrap_resamples=50",
        "generation.fid_bootstrap=20",
    ]
    out = run_eval(_config(tiny_run, f"out_dir={tmp_path / 'a'}", *overrides))
    info, records = read_metrics_json(out["metrics"])
    by_metric = {r.metric: r for r in records}
    fd, agree = by_metric["domain_fd"], by_metric["label_agreement"]
    assert fd.label == "FD-judge-30" and fd.protocol.features == JUDGE_FEATURES
    assert fd.protocol.num_reference == 500 and fd.protocol.reference == "Fashion-MNIST test"
    assert fd.protocol.method == by_metric["gfid"].protocol.method  # same samples, same sampler
    gfid = by_metric["gfid"]  # the FID's own interval (generation.fid_bootstrap)
    assert gfid.interval[0] <= gfid.value <= gfid.interval[1] and gfid.extra["interval"]["resamples"] == 20
    for record in (fd, agree):
        low, high = record.interval
        assert (
            low <= record.value <= high
            and record.floor["low"] <= record.floor["value"] <= record.floor["high"]
        )
        assert record.extra["interval"]["resamples"] == 50 and record.floor["resamples"] == 10
        assert 0.4 < record.extra["judge_test_accuracy"] <= 1.0
    # The numbers, recomputed from the stored judge, the cached reference and the samples' own labels.
    judge, _ = load_or_train_judge(Path(info["domain"]["judge"]))
    pixels = np.concatenate(
        [b.permute(0, 2, 3, 1).numpy() for b in iter_image_batches(str(made / "images"), 50)]
    )
    features, predicted = judge_outputs(judge, pixels[:30])
    with safe_open(info["domain"]["reference_cache"], "np") as f:
        key = ReferenceKey(**json.loads(f.metadata()["key"]))
    reference, _ = load_reference_features(info["domain"]["reference_cache"], key)
    assert fd.value == pytest.approx(
        frechet_distance(FeatureStatistics.from_features(features), reference), rel=1e-6
    )
    with np.load(made / "samples.npz") as data:
        assert agree.value == pytest.approx((predicted == data["arr_1"][:30]).mean())
    text = Path(out["report"]).read_text()
    assert "| FD-judge-30 |" in text and "(real data:" in text and "garment judge" in text
    # A second eval reads the judge and both references from the cache, and gives the same numbers.
    monkeypatch.setattr(domain_part, "judge_features", lambda *a, **k: pytest.fail("reference recomputed"))
    again = run_eval(_config(tiny_run, f"out_dir={tmp_path / 'b'}", *overrides))
    second = {r.metric: r for r in again["records"]}
    assert second["domain_fd"].value == fd.value and second["domain_fd"].interval == fd.interval
    assert (
        "domain metric" in Path(again["report"]).read_text() and "cached" in Path(again["report"]).read_text()
    )
