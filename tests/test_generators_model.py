"""The generator family: sizes, registry, output conventions, guidance modes, label dropout, checkpointing."""

import pytest
import torch

from vtp_gen import create_model, list_models
from vtp_gen.models.attention import split_heads
from vtp_gen.models.generators import LightningDiT, combine_guidance
from vtp_gen.models.generators.layers import (
    Attention,
    AxialRotaryEmbedding,
    RMSNorm,
    gated_residual,
    modulate,
    norm_modulate,
)
from vtp_gen.transport import guided_velocity

TINY = dict(input_size=8, in_channels=6, hidden_size=64, depth=2, num_heads=4, num_classes=5)


def _perturbed(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    # adaLN-Zero initialises the output to zero: perturb so every path contributes.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        # facebookresearch/DiT's published size (32x32x4 SD-VAE latents, learned sigma).
        ("DiT-XL/2", {}, 675_129_632),
        ("SiT-XL/2", {}, 675_129_632),
        # Counted on hustvl/LightningDiT's own class with the same arguments.
        ("LightningDiT-XL/1", dict(in_channels=64), 675_330_496),
        ("LightningDiT-XL/1", dict(in_channels=32), 675_256_736),
        ("LightningDiT-B/1", dict(in_channels=64), 130_605_376),
        ("LightningDiT-1p0B/1", dict(in_channels=64), 1_029_499_456),
    ],
)
def test_parameter_counts(name, kwargs, expected):
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_registry_names():
    names = set(list_models())
    for size in ("B", "L", "XL", "1p0B", "1p6B", "T"):
        assert {f"LightningDiT-{size}/1", f"LightningDiT-{size}/2"} <= names
    for size in ("S", "B", "L", "XL"):
        assert {f"DiT-{size}/2", f"SiT-{size}/2"} <= names


def test_presets_follow_the_recipes():
    with torch.device("meta"):
        lightning = create_model("LightningDiT-XL/1")
        dit = create_model("DiT-XL/2")
    assert lightning.config["use_swiglu"] and lightning.config["use_rope"] and lightning.config["use_rmsnorm"]
    assert not lightning.config["use_qknorm"] and lightning.config["class_dropout_prob"] == 0.1
    assert (lightning.input_size, lightning.in_channels, lightning.patch_size) == (16, 64, 1)
    assert len(lightning.blocks) == 28 and lightning.pos_embed.shape == (1, 256, 1152)
    assert not any(dit.config[f] for f in ("use_swiglu", "use_rope", "use_rmsnorm", "use_qknorm"))


def test_tiny_preset_runs_on_cpu_latents():
    model = create_model("LightningDiT-T/1", in_channels=32, num_classes=10).eval()
    x = torch.randn(3, 32, 8, 8)
    out = model(x, torch.rand(3), torch.tensor([0, 5, 10]))
    assert out.shape == x.shape
    # adaLN-Zero: a freshly initialised model predicts exactly zero.
    assert out.abs().max().item() == 0.0


@pytest.mark.parametrize(
    "flags, out_channels",
    [
        (dict(learn_sigma=True, return_sigma=True), 12),  # DiT: eps and variance
        (dict(learn_sigma=True), 6),  # SiT / LightningDiT: variance dropped
        (dict(), 6),
    ],
)
def test_output_channels(flags, out_channels):
    model = _perturbed(LightningDiT(**TINY, patch_size=2, **flags))
    out = model(torch.randn(2, 6, 8, 8), torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == (2, out_channels, 8, 8) and model.out_channels == out_channels


@pytest.mark.parametrize(
    "flags",
    [
        dict(use_swiglu=True, use_rope=True, use_rmsnorm=True),
        dict(use_qknorm=True, wo_shift=True),
        dict(use_qknorm=True, use_rmsnorm=True, use_rope=True, use_swiglu=True, wo_shift=True),
    ],
)
def test_gradient_checkpointing_gives_the_same_gradients(flags):
    reference = _perturbed(LightningDiT(**TINY, patch_size=1, class_dropout_prob=0.0, **flags)).train()
    checkpointed = LightningDiT(
        **TINY, patch_size=1, class_dropout_prob=0.0, use_checkpoint=True, **flags
    ).train()
    checkpointed.load_state_dict(reference.state_dict())
    x, t, y = torch.randn(2, 6, 8, 8), torch.rand(2), torch.tensor([0, 3])
    grads = []
    for model in (reference, checkpointed):
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7)


def test_label_dropout_uses_the_null_class_only_in_training():
    model = _perturbed(LightningDiT(**TINY, patch_size=2, class_dropout_prob=1.0))
    x, t, y = torch.randn(2, 6, 8, 8), torch.rand(2), torch.tensor([1, 2])
    null = torch.full_like(y, TINY["num_classes"])
    with torch.no_grad():
        model.train()
        dropped = model(x, t, y)  # every label dropped with probability 1
        model.eval()
        torch.testing.assert_close(dropped, model(x, t, null))
        assert (model(x, t, y) - dropped).abs().max() > 1e-3
    assert model.y_embedder.embedding_table.num_embeddings == TINY["num_classes"] + 1
    no_null = LightningDiT(**TINY, class_dropout_prob=0.0)
    assert no_null.y_embedder.embedding_table.num_embeddings == TINY["num_classes"]


def _guidance_batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 6, 8, 8, generator=generator)
    return torch.cat([x, x]), torch.full((4,), 0.5), torch.tensor([1, 4, 5, 5])


def test_all_channel_guidance_differs_from_reference_exactly_on_channels_3_and_up():
    model = _perturbed(LightningDiT(**TINY, patch_size=1, use_swiglu=True, use_rope=True, use_rmsnorm=True))
    x, t, y = _guidance_batch()
    with torch.no_grad():
        reference = model.forward_with_cfg(x, t, y, 4.0, guidance_mode="reference")
        all_channels = model.forward_with_cfg(x, t, y, 4.0, guidance_mode="all_channels")
        cond, uncond = model(x, t, y).chunk(2)
    conditional_half = slice(0, 2)
    torch.testing.assert_close(all_channels[:, :3], reference[:, :3], rtol=0, atol=0)
    difference = (all_channels - reference)[conditional_half, 3:].abs().flatten(2).amax(-1)
    assert (difference > 1e-4).all(), "every channel >= 3 of every sample must change"
    # Reference mode passes channels >= 3 through from each half's own prediction.
    torch.testing.assert_close(reference[:2, 3:], cond[:, 3:])
    torch.testing.assert_close(reference[2:, 3:], uncond[:, 3:])
    torch.testing.assert_close(all_channels[:2], uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-6)


def test_guided_velocity_modes_and_interval():
    model = _perturbed(LightningDiT(**TINY, patch_size=2))
    x, y = torch.randn(2, 6, 8, 8), torch.tensor([0, 3])
    with torch.no_grad():
        cond = model(x, torch.full((2,), 0.5), y)
        uncond = model(x, torch.full((2,), 0.5), torch.full_like(y, 5))
        t = torch.full((2,), 0.5)
        ref = guided_velocity(model, y, 3.0, guidance_mode="reference")(x, t)
        full = guided_velocity(model, y, 3.0, guidance_mode="all_channels")(x, t)
        torch.testing.assert_close(ref[:, :3], full[:, :3])
        torch.testing.assert_close(ref[:, 3:], cond[:, 3:])
        torch.testing.assert_close(full, uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-6)
        # Guidance interval: below the start only the conditional prediction is used.
        late = guided_velocity(model, y, 3.0, cfg_interval_start=0.6)
        torch.testing.assert_close(late(x, t), cond)
        mixed_t = torch.tensor([0.5, 0.7])
        mixed = late(x, mixed_t)
        torch.testing.assert_close(mixed[0], model(x, mixed_t, y)[0])
        assert (mixed[1] - model(x, mixed_t, y)[1]).abs().max() > 1e-4


def test_combine_guidance_leaves_variance_channels_alone():
    cond, uncond = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    out = combine_guidance(cond, uncond, 2.0, "all_channels", predicted_channels=4)
    torch.testing.assert_close(out[:, :4], 2 * cond[:, :4] - uncond[:, :4])
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])
    with pytest.raises(ValueError, match="guidance mode"):
        combine_guidance(cond, uncond, 2.0, "first_three")


def test_rope_depends_on_position_and_sincos_table_is_fixed():
    model = LightningDiT(**TINY, patch_size=1, use_rope=True)
    rope = model.feat_rope
    assert rope.freqs_cos.shape == (64, 16)
    # Row-major tokens: token 1 is (row 0, col 1), so only the column half of the channels rotates.
    assert torch.all(rope.freqs_cos[1, :8] == 1) and not torch.all(rope.freqs_cos[1, 8:] == 1)
    assert not model.pos_embed.requires_grad
    # Rotations preserve norms.
    q = torch.randn(1, 4, 64, 16)
    torch.testing.assert_close(rope(q).norm(dim=-1), q.norm(dim=-1))


def _grads(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("norm_kind", ["rmsnorm", "layernorm"])
@pytest.mark.parametrize("with_shift", [True, False])
def test_norm_modulate_is_modulate_of_norm_in_one_pass(norm_kind, with_shift):
    # The fused form folds the RMSNorm weight into the per-sample factor: same values and gradients.
    if norm_kind == "rmsnorm":
        norm = RMSNorm(32)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(32) + 0.5)
    else:
        norm = torch.nn.LayerNorm(32, elementwise_affine=False, eps=1e-6)
    x, scale, shift = torch.randn(3, 10, 32), torch.randn(3, 32), torch.randn(3, 32)

    def reference(x, scale, shift):
        return modulate(norm(x), shift if with_shift else None, scale)

    def fused(x, scale, shift):
        return norm_modulate(norm, x, shift if with_shift else None, scale)

    expected, expected_grads = _grads(reference, x, scale, shift)
    weight_grads = [p.grad.clone() for p in norm.parameters()]
    norm.zero_grad()
    out, grads = _grads(fused, x, scale, shift)
    grads += [p.grad for p in norm.parameters()]
    expected_grads += weight_grads
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gated_residual():
    x, gate, update = torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 5, 8)
    torch.testing.assert_close(gated_residual(x, gate, update), x + gate.unsqueeze(1) * update)


def test_complex_rope_equals_the_real_rotation_and_rotate_qk_splits_scales_and_rotates():
    rope = AxialRotaryEmbedding(head_dim=16, grid_size=4)
    q = torch.randn(2, 3, 16, 16)
    real = q * rope.freqs_cos + rope.rotate_pairs(q) * rope.freqs_sin
    assert rope.takes_complex_path(q) and not rope.takes_complex_path(q.bfloat16())
    torch.testing.assert_close(rope(q), real, rtol=1e-6, atol=1e-6)
    # bf16 keeps the real formulation.
    torch.testing.assert_close(rope(q.bfloat16()).float(), real, rtol=2e-2, atol=2e-2)

    qkv = torch.randn(2, 16, 3 * 3 * 16, requires_grad=True)
    q_rot, k_rot, v = rope.rotate_qk(qkv, num_heads=3, q_scale=0.25)
    q_ref, k_ref, v_ref = split_heads(qkv, 3)
    torch.testing.assert_close(q_rot, 0.25 * rope(q_ref))
    torch.testing.assert_close(k_rot, rope(k_ref))
    torch.testing.assert_close(v, v_ref)
    # Gradients flow back into the fused projection's layout like the unfused path's.
    weights = [torch.randn(t.shape) for t in (q_rot, k_rot, v)]
    fused_grad = torch.autograd.grad(sum((t * w).sum() for t, w in zip((q_rot, k_rot, v), weights)), qkv)[0]
    ref_outputs = (0.25 * rope(q_ref), rope(k_ref), v_ref)
    ref_grad = torch.autograd.grad(sum((t * w).sum() for t, w in zip(ref_outputs, weights)), qkv)[0]
    torch.testing.assert_close(fused_grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_qknorm", [False, True])
def test_attention_fast_path_matches_the_unfused_path(use_qknorm):
    # The q/k rotation with the folded scale (no QK-norm) and the per-tensor path give the same attention.
    attention = Attention(64, 4, qk_norm=use_qknorm, use_rmsnorm=True)
    rope = AxialRotaryEmbedding(16, 4)
    x = torch.randn(2, 16, 64)
    q, k, v = split_heads(attention.qkv(x), 4)
    q, k = attention.q_norm(q), attention.k_norm(k)
    expected = torch.softmax(rope(q) @ rope(k).transpose(-2, -1) / 4.0, dim=-1) @ v
    expected = attention.proj(expected.transpose(1, 2).reshape(2, 16, 64))
    torch.testing.assert_close(attention(x, rope), expected, rtol=1e-5, atol=1e-5)
