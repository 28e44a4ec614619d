"""Encoder, decoder, RoPE and blocks: the training-side API stage 1 relies on."""

import pytest
import torch
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

from vtp_gen.models.tokenizer import PixelDecoder, TrunkInput, VisionEncoder, VTPModel, preset_config
from vtp_gen.models.tokenizer.blocks import SelfAttentionBlock, residual_on_batch_subset
from vtp_gen.models.tokenizer.rope import AxialRopeEmbedding, apply_rope


def tiny_encoder(**overrides):
    kwargs = dict(
        image_size=32,
        patch_size=4,
        embed_dim=32,
        depth=2,
        num_heads=2,
        latent_channels=8,
        layerscale_init=None,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    return VisionEncoder(**kwargs)


# ---------------------------------------------------------------------- RoPE
def test_float32_rope_equals_timms_dinov3_rope():
    ours = AxialRopeEmbedding(16, base=100.0, dtype=torch.float32)
    reference = RotaryEmbeddingDinoV3(16, temperature=100.0)
    sin, cos = ours(3, 5)  # non-square grid: rows and columns are normalised separately
    timm_sin, timm_cos = reference.get_embed([3, 5]).chunk(2, dim=-1)
    torch.testing.assert_close(sin, timm_sin, atol=1e-6, rtol=0)
    torch.testing.assert_close(cos, timm_cos, atol=1e-6, rtol=0)


def test_bf16_periods_are_the_official_ones():
    periods = AxialRopeEmbedding(16).periods
    assert periods.dtype == torch.bfloat16
    # Values stored in the official checkpoints for head_dim 16 (100 ** (2i / 8), rounded to bf16).
    assert periods.tolist() == [1.0, 3.15625, 10.0, 31.625]


def test_rope_scores_depend_only_on_relative_position():
    rope = AxialRopeEmbedding(8, dtype=torch.float32)
    sin, cos = rope(4, 4)
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    q_all, k_all = apply_rope(q.expand(1, 1, 16, 8), k.expand(1, 1, 16, 8), sin, cos)
    scores = (q_all[0, 0] @ k_all[0, 0].T).reshape(4, 4, 4, 4)  # (row_q, col_q, row_k, col_k)
    # Shifting both positions by the same offset keeps the score; a different offset changes it.
    torch.testing.assert_close(scores[0, 0, 1, 2], scores[2, 1, 3, 3], atol=1e-5, rtol=0)
    assert not torch.isclose(scores[0, 0, 1, 2], scores[0, 0, 2, 1], atol=1e-3)


def test_rope_leaves_prefix_tokens_alone():
    sin, cos = AxialRopeEmbedding(8, dtype=torch.float32)(2, 2)
    q = torch.randn(2, 3, 1 + 4, 8)
    rotated, _ = apply_rope(q, q, sin, cos)
    assert torch.equal(rotated[:, :, 0], q[:, :, 0])
    assert not torch.allclose(rotated[:, :, 1:], q[:, :, 1:])
    with pytest.raises(ValueError, match="RoPE table"):
        apply_rope(q[:, :, :3], q[:, :, :3], sin, cos)


# -------------------------------------------------------------------- blocks
def test_stochastic_depth_runs_branches_on_a_scaled_batch_subset():
    torch.manual_seed(0)
    block = SelfAttentionBlock(16, 2, layerscale_init=0.5).train()
    x = torch.randn(4, 5, 16)
    torch.manual_seed(1)
    out = block(x, drop_path_rate=0.5)
    # Expected: keep = int(4 * 0.5) = 2 samples per branch, residual scaled by 4 / 2.
    torch.manual_seed(1)
    first = torch.randperm(4)[:2]
    x_attn = x.clone()
    x_attn[first] += 2 * block.ls1(block.attn(block.norm1(x[first])))
    second = torch.randperm(4)[:2]
    expected = x_attn.clone()
    expected[second] += 2 * block.ls2(block.mlp(block.norm2(x_attn[second])))
    torch.testing.assert_close(out, expected)
    untouched = sorted(set(range(4)) - set(first.tolist()) - set(second.tolist()))
    for i in untouched:
        assert torch.equal(out[i], x[i])


def test_per_segment_stochastic_depth_draws_each_segment_like_its_own_forward():
    # A branch that adds 1 shows, row by row, who ran it and with which scale.
    x = torch.zeros(10, 3, 4)
    segments = ((4, 0.0), (6, 0.5), (0, 0.3))
    torch.manual_seed(0)
    out = residual_on_batch_subset(x, lambda t: torch.ones_like(t), segments)
    added = out[:, 0, 0]
    # Rate 0: every row, unscaled. Rate 0.5 over 6 rows: keep int(6 * 0.5) = 3 rows, scaled by 6 / 3.
    assert added[:4].tolist() == [1.0] * 4
    assert sorted(added[4:].tolist()) == [0.0, 0.0, 0.0, 2.0, 2.0, 2.0]
    # The segment's rows are drawn by the same randperm a forward of its own would make.
    torch.manual_seed(0)
    assert set(torch.nonzero(added[4:]).flatten().tolist()) == set(torch.randperm(6)[:3].tolist())
    with pytest.raises(ValueError, match="do not cover"):
        residual_on_batch_subset(x, lambda t: t, ((4, 0.1), (5, 0.1)))


def test_batched_trunk_forward_equals_separate_forwards_values_and_gradients():
    encoder = tiny_encoder().train()
    torch.manual_seed(1)
    clip_images, global_crops = torch.randn(5, 3, 32, 32), torch.randn(4, 3, 32, 32)
    local_crops = torch.randn(6, 3, 16, 16)
    masks = torch.rand(4, 64) < 0.3
    inputs = [TrunkInput(clip_images), TrunkInput(global_crops, masks), TrunkInput(local_crops)]

    def loss_and_grads(features):
        loss = sum(
            (f.cls_token.square().sum() + f.patch_tokens.sin().sum()) * (i + 1)
            for i, f in enumerate(features)
        )
        encoder.zero_grad(set_to_none=True)
        loss.backward()
        # (The bottleneck is not part of encode_features: no gradient there.)
        grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
        return [f.patch_tokens.detach() for f in features], grads

    separate = [encoder.encode_features(item.images, item.masks) for item in inputs]
    batched = encoder.encode_features_batched(inputs)
    assert [f.patch_tokens.shape for f in batched] == [f.patch_tokens.shape for f in separate]
    tokens_separate, grads_separate = loss_and_grads(separate)
    tokens_batched, grads_batched = loss_and_grads(batched)
    for a, b in zip(tokens_batched, tokens_separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # mask_token, cls_token and every block weight: same gradients (the sums differ in rounding only).
    assert grads_batched.keys() == grads_separate.keys() and "mask_token" in grads_batched
    for name, grad in grads_separate.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(
            grads_batched[name], grad, rtol=1e-4, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_batched_trunk_forward_keeps_each_inputs_drop_path_rate():
    encoder = tiny_encoder().train()
    images = torch.randn(6, 3, 32, 32)
    reference = encoder.encode_features(images).patch_tokens
    torch.manual_seed(0)
    undropped, dropped = encoder.encode_features_batched(
        [TrunkInput(images, drop_path_rate=0.0), TrunkInput(images, drop_path_rate=0.75)]
    )
    torch.testing.assert_close(undropped.patch_tokens, reference, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(dropped.patch_tokens, reference, rtol=1e-3, atol=1e-3)


def test_drop_path_rate_is_per_call_and_training_only():
    encoder = tiny_encoder()
    images = torch.randn(8, 3, 32, 32)
    reference = encoder.eval().encode_features(images)
    # Eval mode ignores the rate; training with rate 0 is the plain forward.
    assert torch.equal(
        encoder.encode_features(images, drop_path_rate=0.9).patch_tokens, reference.patch_tokens
    )
    encoder.train()
    assert torch.equal(
        encoder.encode_features(images, drop_path_rate=0.0).patch_tokens, reference.patch_tokens
    )
    dropped = encoder.encode_features(images, drop_path_rate=0.75).patch_tokens
    assert not torch.allclose(dropped, reference.patch_tokens)
    # The constructor rate is only the default for calls that pass none.
    encoder.drop_path_rate = 0.75
    assert not torch.allclose(encoder.encode_features(images).patch_tokens, reference.patch_tokens)


# ------------------------------------------------------------------- encoder
def test_any_crop_size_that_tiles_works_with_its_own_rope_grid():
    encoder = tiny_encoder().eval()
    for size in [(32, 32), (16, 16), (12, 20)]:
        features = encoder.encode_features(torch.randn(2, 3, *size))
        assert features.cls_token.shape == (2, 32)
        assert features.patch_tokens.shape == (2, size[0] // 4 * size[1] // 4, 32)
        assert encoder.encode_latents(torch.randn(2, 3, *size)).shape == (2, 8, size[0] // 4, size[1] // 4)
    with pytest.raises(ValueError, match="image size 30x32 is not a multiple of the patch size 4"):
        encoder.encode_features(torch.randn(1, 3, 30, 32))


def test_masks_replace_patches_by_the_mask_token():
    encoder = tiny_encoder().eval()
    with torch.no_grad():
        encoder.mask_token.normal_()
    images = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [1, 5, 6]] = True
    tokens, _ = encoder.prepare_tokens(images, masks)
    plain, _ = encoder.prepare_tokens(images)
    patches = tokens[:, 1:]
    assert torch.equal(patches[0, 1], encoder.mask_token[0])
    assert torch.equal(patches[masks], encoder.mask_token.expand(3, -1))
    assert torch.equal(patches[~masks], plain[:, 1:][~masks])
    # Fully masked images carry no information about their content.
    full = torch.ones(2, 16, dtype=torch.bool)
    a = encoder.encode_features(torch.randn(2, 3, 16, 16), masks=full)
    b = encoder.encode_features(torch.randn(2, 3, 16, 16), masks=full)
    torch.testing.assert_close(a.patch_tokens, b.patch_tokens)
    with pytest.raises(ValueError, match="masks must be a bool tensor"):
        encoder.encode_features(images, masks=torch.zeros(2, 15, dtype=torch.bool))


def test_bottleneck_latents_are_the_projected_normed_patch_tokens():
    encoder = tiny_encoder().eval()
    images = torch.randn(2, 3, 12, 20)
    features = encoder.encode_features(images)
    latents = encoder.encode_latents(images)
    projected = features.patch_tokens @ encoder.feature_bottleneck.weight.T  # bias-free
    assert encoder.feature_bottleneck.bias is None
    torch.testing.assert_close(latents[:, :, 1, 3], projected[:, 1 * 5 + 3])  # row-major grid, 3 x 5
    # Without a narrower bottleneck the latents are the normed tokens themselves.
    assert tiny_encoder(latent_channels=32).feature_bottleneck is None


def test_intermediate_layers_match_the_last_layer_features():
    encoder = tiny_encoder(depth=3).eval()
    images = torch.randn(2, 3, 16, 16)
    last = encoder.encode_features(images)
    layers = encoder.get_intermediate_layers(images, n=2, return_class_token=True)
    assert len(layers) == 2
    assert torch.equal(layers[-1][0], last.patch_tokens) and torch.equal(layers[-1][1], last.cls_token)
    by_index = encoder.get_intermediate_layers(images, n=[1, 2], return_class_token=True)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(layers, by_index))
    maps = encoder.get_intermediate_layers(images, n=1, reshape=True)
    assert maps[0].shape == (2, 32, 4, 4)
    torch.testing.assert_close(maps[0][:, :, 2, 1], last.patch_tokens[:, 2 * 4 + 1])
    raw = encoder.get_intermediate_layers(images, n=1, norm=False)[0]
    assert not torch.allclose(raw, last.patch_tokens)
    with pytest.raises(ValueError, match="n=4"):
        encoder.get_intermediate_layers(images, n=4)


def test_register_tokens_are_kept_out_of_the_patch_outputs():
    encoder = tiny_encoder(num_register_tokens=3).eval()
    images = torch.randn(2, 3, 16, 16)
    tokens, _, _ = encoder.forward_tokens(images)
    assert tokens.shape == (2, 1 + 3 + 16, 32)
    assert encoder.encode_features(images).patch_tokens.shape == (2, 16, 32)
    assert encoder.get_intermediate_layers(images)[0].shape == (2, 16, 32)
    assert "storage_tokens" in dict(encoder.named_parameters())
    assert "storage_tokens" not in dict(tiny_encoder().named_parameters())


# ------------------------------------------------------------------- decoder
def test_decoder_upsamples_by_its_factor_on_any_grid():
    torch.manual_seed(0)
    decoder = PixelDecoder(latent_channels=8, upscale_factor=4, embed_dim=32, depth=1, num_heads=2).eval()
    assert decoder(torch.randn(2, 8, 3, 5)).shape == (2, 3, 12, 20)
    with pytest.raises(ValueError, match=r"latents of shape \(B, 8, h, w\)"):
        decoder(torch.randn(2, 4, 3, 5))


# ------------------------------------------------------------- whole model
def test_every_parameter_learns_from_the_three_objectives():
    """One summed loss over CLIP, masked SSL-style and reconstruction forwards reaches every parameter."""
    torch.manual_seed(0)
    model = VTPModel(preset_config("vtp-tiny", text_vocab_size=1000, vision_clip_feat="pooled")).train()
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.randint(1, 999, (4, 32))
    image_emb = model.encode_image(images, normalize=True, drop_path_rate=0.1)
    text_emb = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp() * image_emb @ text_emb.T
    clip_loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    masks = torch.rand(2, 64) < 0.3
    ssl = model.trunk.encode_features(images[:2], masks=masks, drop_path_rate=0.2)
    ssl_loss = ssl.patch_tokens[masks].square().mean() + ssl.cls_token.square().mean()
    recon = model.decode(model.encode_latents(images[:2], drop_path_rate=0.0))
    rec_loss = (recon - images[:2]).abs().mean()
    (clip_loss + ssl_loss + 0.1 * rec_loss).backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without_grad == []
