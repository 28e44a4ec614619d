"""AdamW groups without decay on norms / biases / tokens, and the per-step schedule wiring."""

from __future__ import annotations

import torch

from vtp_gen.models.registry import create_model
from vtp_gen.systems.optim import apply_schedule, build_adamw, parameter_groups, skips_weight_decay


def tiny_tokenizer():
    torch.manual_seed(0)
    return create_model("vtp-tiny", vision_depth=1, decoder_depth=1, text_depth=1)


def test_no_decay_on_norms_biases_tokens_and_logit_scale():
    model = tiny_tokenizer()
    groups = {g["name"]: g for g in parameter_groups(model.named_parameters())}
    no_decay, decay = set(groups["no_decay"]["param_names"]), set(groups["decay"]["param_names"])
    for name in (
        "trunk.cls_token",
        "trunk.mask_token",
        "logit_scale",
        "trunk.norm.weight",
        "trunk.blocks.0.norm1.weight",
        "trunk.blocks.0.attn.qkv.bias",
        "pixel_decoder.proj_in.bias",
        "text.positional_embedding",
        "text.ln_final.weight",
    ):
        assert name in no_decay, name
    for name in (
        "trunk.blocks.0.attn.qkv.weight",
        "trunk.blocks.0.mlp.w1.weight",
        "trunk.feature_bottleneck.weight",
        "trunk.patch_embed.proj.weight",
        "visual_proj.weight",
        "pixel_decoder.proj_out.weight",
        "text.token_embedding.weight",
    ):
        assert name in decay, name
    # Every trainable parameter exactly once.
    all_names = [n for n, _ in model.named_parameters()]
    assert sorted(no_decay | decay) == sorted(all_names)
    assert not no_decay & decay


def test_frozen_parameters_are_left_out():
    model = tiny_tokenizer()
    model.text.requires_grad_(False)
    names = [n for g in parameter_groups(model.named_parameters()) for n in g["param_names"]]
    assert names and not any(n.startswith("text.") for n in names)


def test_apply_schedule_decays_only_the_decay_group():
    model = tiny_tokenizer()
    optimizer = build_adamw(model.named_parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.04)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["decay"]["weight_decay"] == 0.04 and by_name["no_decay"]["weight_decay"] == 0.0
    apply_schedule(optimizer, lr=5e-4, weight_decay=0.1)
    assert by_name["decay"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["decay"]["lr"] == by_name["no_decay"]["lr"] == 5e-4
    by_name["no_decay"]["lr_scale"] = 0.5
    apply_schedule(optimizer, lr=2e-4)
    assert by_name["no_decay"]["lr"] == 1e-4 and by_name["decay"]["weight_decay"] == 0.1


def test_decay_really_spares_the_no_decay_group():
    # With zero gradients, AdamW changes a parameter only through weight decay.
    model = tiny_tokenizer()
    optimizer = build_adamw(model.named_parameters(), lr=0.1, betas=(0.9, 0.98), weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    assert torch.equal(after["trunk.norm.weight"], before["trunk.norm.weight"])
    assert torch.equal(after["logit_scale"], before["logit_scale"])
    assert torch.equal(after["trunk.cls_token"], before["trunk.cls_token"])
    assert not torch.equal(after["trunk.blocks.0.attn.qkv.weight"], before["trunk.blocks.0.attn.qkv.weight"])


def test_skips_weight_decay_rule():
    assert skips_weight_decay("x.bias", torch.nn.Parameter(torch.zeros(3)))
    assert skips_weight_decay("trunk.storage_tokens", torch.nn.Parameter(torch.zeros(1, 4, 8)))
    assert not skips_weight_decay("x.weight", torch.nn.Parameter(torch.zeros(3, 3)))
