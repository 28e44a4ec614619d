"""The flow-matching objective: path, time sampling, loss terms (checked by hand) and a toy training run."""

import math

import pytest
import torch

from vtp_gen import create_model
from vtp_gen.transport import Transport, interpolate, sample_training_times, target_velocity


class AffineVelocity(torch.nn.Module):
    """A transparent stand-in for a generator: v = a * x_t + b_c * t + e_y."""

    def __init__(self, channels: int = 4, classes: int = 3):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7))
        self.b = torch.nn.Parameter(torch.linspace(-1, 1, channels))
        self.e = torch.nn.Parameter(
            torch.arange(classes * channels, dtype=torch.float32).reshape(classes, channels) / 10
        )

    def forward(self, x, t, y):
        return self.a * x + self.b[None, :, None, None] * t[:, None, None, None] + self.e[y][:, :, None, None]


def test_linear_path_conventions():
    noise, data = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(interpolate(torch.zeros(2), noise, data), noise)  # t = 0 is noise
    torch.testing.assert_close(interpolate(torch.ones(2), noise, data), data)  # t = 1 is data
    t = torch.tensor([0.3, 0.8])
    h = 1e-3
    finite_difference = (interpolate(t + h, noise, data) - interpolate(t - h, noise, data)) / (2 * h)
    torch.testing.assert_close(finite_difference, target_velocity(noise, data), rtol=1e-3, atol=1e-3)


def test_loss_with_cosine_term_and_logit_normal_times_matches_hand_computation():
    B, C, H, W = 3, 4, 2, 2
    data = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 1])
    model = AffineVelocity(C)
    mu, sigma = -0.5, 1.25
    transport = Transport("logit_normal", logit_mean=mu, logit_std=sigma, cosine_weight=1.0)
    out = transport.training_losses(
        model, data, noise=noise, generator=torch.Generator().manual_seed(3), y=labels
    )

    # By hand, in float64 Python arithmetic: t = sigmoid(mu + sigma * n), n ~ N(0, 1) from the same seed.
    normals = torch.randn(B, generator=torch.Generator().manual_seed(3)).tolist()
    a, b, e = model.a.item(), model.b.tolist(), model.e.tolist()
    for i in range(B):
        t = 1 / (1 + math.exp(-(mu + sigma * normals[i])))
        assert out["t"][i].item() == pytest.approx(t, rel=1e-6)
        squared_error, cosine_gap = 0.0, 0.0
        for h in range(H):
            for w in range(W):
                pred, target = [], []
                for c in range(C):
                    x0, x1 = noise[i, c, h, w].item(), data[i, c, h, w].item()
                    x_t = t * x1 + (1 - t) * x0
                    pred.append(a * x_t + b[c] * t + e[labels[i]][c])
                    target.append(x1 - x0)
                squared_error += sum((p - q) ** 2 for p, q in zip(pred, target))
                dot = sum(p * q for p, q in zip(pred, target))
                norms = math.sqrt(sum(p * p for p in pred)) * math.sqrt(sum(q * q for q in target))
                cosine_gap += 1 - dot / norms
        mse, cosine = squared_error / (C * H * W), cosine_gap / (H * W)
        assert out["mse"][i].item() == pytest.approx(mse, rel=1e-5)
        assert out["cosine"][i].item() == pytest.approx(cosine, rel=1e-5)
        assert out["loss"][i].item() == pytest.approx(mse + cosine, rel=1e-5)

    # Without the cosine weight the loss is the MSE alone (the cosine term is still reported).
    plain = Transport(cosine_weight=0.0).training_losses(model, data, noise=noise, t=out["t"], y=labels)
    torch.testing.assert_close(plain["loss"], out["mse"])
    torch.testing.assert_close(plain["cosine"], out["cosine"])


def test_time_distributions():
    generator = torch.Generator().manual_seed(0)
    t = sample_training_times(200_000, "logit_normal", -0.75, 1.0, generator=generator)
    logits = torch.log(t / (1 - t))
    assert logits.mean().item() == pytest.approx(-0.75, abs=0.01)
    assert logits.std().item() == pytest.approx(1.0, abs=0.01)
    u = sample_training_times(200_000, "uniform", generator=generator)
    assert 0 <= u.min() and u.max() < 1 and u.mean().item() == pytest.approx(0.5, abs=0.005)
    with pytest.raises(ValueError, match="time distribution"):
        Transport("lognormal")


def test_output_shape_mismatch_is_explained():
    dit = create_model("DiT-S/2", input_size=8, depth=1)
    with pytest.raises(ValueError, match="learn_sigma"):
        Transport().training_losses(dit, torch.randn(2, 4, 8, 8), y=torch.tensor([0, 1]))


def test_training_loss_decreases_on_toy_latents(single_thread):
    torch.manual_seed(0)
    classes, channels = 4, 4
    prototypes = torch.randn(classes, channels, 8, 8)
    model = create_model(
        "LightningDiT-T/1", in_channels=channels, num_classes=classes, hidden_size=64, depth=2, num_heads=4
    )
    transport = Transport("logit_normal", logit_mean=-0.5, logit_std=1.25, cosine_weight=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(200):
        labels = torch.randint(0, classes, (32,), generator=generator)
        latents = prototypes[labels] + 0.1 * torch.randn(32, channels, 8, 8, generator=generator)
        loss = transport.training_losses(model, latents, generator=generator, y=labels)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.7 * first, (first, last)


def test_bf16_autocast_keeps_times_and_losses_in_float32():
    model = create_model("LightningDiT-T/1", in_channels=4, input_size=8, depth=1)
    latents = torch.randn(2, 4, 8, 8).bfloat16()
    t = torch.tensor([0.1234567, 0.7654321])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Transport(cosine_weight=1.0).training_losses(model, latents, t=t, y=torch.tensor([1, 2]))
    assert out["t"].dtype == torch.float32 and torch.equal(out["t"], t)
    assert all(out[k].dtype == torch.float32 for k in ("loss", "mse", "cosine"))
