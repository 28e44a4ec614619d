"""Reconstruction metrics: PSNR, SSIM, LPIPS and rFID accumulated over batches."""

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from vtp_gen.metrics.generation import fid_from_features
from vtp_gen.metrics.reconstruction import ReconstructionMetrics, psnr, ssim
from vtp_gen.pretrained.cache import weights_dir
from vtp_gen.pretrained.lpips import CONVERTED_VGG16_FILE, build_lpips_vgg


def _pairs(seed, n=6, size=32, noise=12.0):
    rng = np.random.default_rng(seed)
    smooth = rng.normal(128, 50, size=(n, 3, size // 4, size // 4))
    originals = np.clip(np.kron(smooth, np.ones((1, 1, 4, 4))) + rng.normal(0, 8, (n, 3, size, size)), 0, 255)
    noisy = np.clip(originals + rng.normal(0, noise, originals.shape), 0, 255)
    return torch.from_numpy(originals.astype(np.uint8)), torch.from_numpy(noisy.astype(np.uint8))


def _ssim_direct(a, b, data_range=255.0):
    """SSIM with reflect padding, an 11-tap sigma-1.5 Gaussian and the full-image mean (torchmetrics' definition)."""
    offsets = np.arange(-5, 6)
    kernel = np.exp(-0.5 * (offsets / 1.5) ** 2)
    kernel /= kernel.sum()

    def blur(x):
        x = np.pad(x, ((0, 0), (5, 5), (5, 5)), mode="reflect")
        x = correlate1d(correlate1d(x, kernel, axis=1, mode="constant"), kernel, axis=2, mode="constant")
        return x[:, 5:-5, 5:-5]

    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = blur(a), blur(b)
    var_a = np.clip(blur(a * a) - mu_a**2, 0, None)
    var_b = np.clip(blur(b * b) - mu_b**2, 0, None)
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return value.mean()


def test_psnr_and_ssim_match_direct_computations():
    originals, noisy = _pairs(0)
    diff = originals.double() - noisy.double()
    expected_psnr = 10 * np.log10(255.0**2 / diff.pow(2).mean(dim=(1, 2, 3)).numpy())
    np.testing.assert_allclose(psnr(originals, noisy).numpy(), expected_psnr, rtol=1e-6)
    expected_ssim = [_ssim_direct(o.numpy(), r.numpy()) for o, r in zip(originals, noisy)]
    np.testing.assert_allclose(ssim(originals, noisy).numpy(), expected_ssim, rtol=1e-5)
    assert torch.isinf(psnr(originals, originals)).all()
    torch.testing.assert_close(ssim(originals, originals), torch.ones(len(originals)))
    # More noise, lower scores.
    _, noisier = _pairs(0, noise=40.0)
    assert (psnr(originals, noisier) < psnr(originals, noisy)).all()
    assert (ssim(originals, noisier) < ssim(originals, noisy)).all()


class _MeanColour(torch.nn.Module):
    """Stand-in 'Inception': per-channel means and standard deviations (6-d features)."""

    def forward(self, images):
        x = images.float()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def _lpips_or_standin():
    if (weights_dir() / CONVERTED_VGG16_FILE).is_file():
        return build_lpips_vgg(), True

    def l1_distance(x, y):  # same contract: [-1, 1] inputs, per-image distances
        return (x - y).abs().mean(dim=(1, 2, 3))

    return l1_distance, False


def test_metrics_accumulate_over_batches():
    lpips_net, _real = _lpips_or_standin()
    metric = ReconstructionMetrics(lpips=lpips_net, inception=_MeanColour())
    batches = [_pairs(seed, n=4) for seed in range(3)]
    for originals, reconstructions in batches:
        metric.update(originals, reconstructions)
    result = metric.compute()
    originals = torch.cat([b[0] for b in batches])
    reconstructions = torch.cat([b[1] for b in batches])
    assert result["num_images"] == 12
    assert result["psnr"] == pytest.approx(psnr(originals, reconstructions).double().mean().item(), rel=1e-6)
    assert result["ssim"] == pytest.approx(ssim(originals, reconstructions).double().mean().item(), rel=1e-6)
    with torch.no_grad():
        direct_lpips = lpips_net(originals.float() / 127.5 - 1, reconstructions.float() / 127.5 - 1)
    assert result["lpips"] == pytest.approx(direct_lpips.double().mean().item(), rel=1e-5)
    features = _MeanColour()
    expected_rfid = fid_from_features(features(originals).numpy(), features(reconstructions).numpy())
    assert result["rfid"] == pytest.approx(expected_rfid, rel=1e-6)
    assert result["rfid"] > 0
    # numpy NHWC input is the same data.
    again = ReconstructionMetrics(inception=_MeanColour())
    for o, r in batches:
        again.update(o.permute(0, 2, 3, 1).numpy(), r.permute(0, 2, 3, 1).numpy())
    assert again.compute()["rfid"] == pytest.approx(result["rfid"], rel=1e-9)
    assert result["l1"] == pytest.approx(
        (originals.double() - reconstructions.double()).abs().div(255).mean().item(), rel=1e-6
    )


def test_reference_features_stand_in_for_the_originals():
    batches = [_pairs(seed, n=4) for seed in range(3)]
    originals = torch.cat([b[0] for b in batches])
    computed = ReconstructionMetrics(inception=_MeanColour())
    # More rows than images: the first num_images rows are the originals (an FID reference's prefix).
    extra = _pairs(9, n=3)[0]
    given = ReconstructionMetrics(
        inception=_MeanColour(), reference_features=_MeanColour()(torch.cat([originals, extra])).numpy()
    )
    for o, r in batches:
        computed.update(o, r)
        given.update(o, r)
    assert given.compute()["rfid"] == pytest.approx(computed.compute()["rfid"], rel=1e-9)
    short = ReconstructionMetrics(inception=_MeanColour(), reference_features=np.zeros((2, 6), np.float32))
    short.update(*batches[0])
    with pytest.raises(ValueError, match="2 rows for 4 images"):
        short.compute()


def test_perfect_reconstruction():
    originals, _ = _pairs(1, n=5)
    metric = ReconstructionMetrics(inception=_MeanColour())
    metric.update(originals, originals.clone())
    result = metric.compute()
    assert result["psnr"] == float("inf") and result["ssim"] == pytest.approx(1.0)
    assert abs(result["rfid"]) < 1e-4  # 5 images, 6-d features: singular covariances, sqrtm to ~1e-6
    assert "lpips" not in result


def test_rejects_mismatched_or_float_input():
    originals, noisy = _pairs(2, n=2)
    metric = ReconstructionMetrics()
    with pytest.raises(ValueError, match="shapes differ"):
        metric.update(originals, noisy[:, :, :16])
    with pytest.raises(ValueError, match="uint8"):
        metric.update(originals.float(), noisy)
    with pytest.raises(ValueError, match="no images"):
        metric.compute()
