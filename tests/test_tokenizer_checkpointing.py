"""Activation checkpointing of the tokenizer's blocks: same losses and gradients, activations recomputed."""

from __future__ import annotations

import torch

from vtp_gen import create_model
from vtp_gen.models.tokenizer.blocks import SelfAttentionBlock


def losses_and_grads(checkpointing: bool, monkeypatch):
    forwards = []
    plain_forward = SelfAttentionBlock.forward

    def counted_forward(self, *args, **kwargs):  # module hooks do not fire on the recompute
        forwards.append(1)
        return plain_forward(self, *args, **kwargs)

    monkeypatch.setattr(SelfAttentionBlock, "forward", counted_forward)
    torch.manual_seed(0)
    model = create_model("vtp-tiny", image_size=32).train().set_grad_checkpointing(checkpointing)
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.randint(1, 100, (4, 16))
    torch.manual_seed(1)  # the same drop-path draws in both runs
    latents = model.encode_latents(images, drop_path_rate=0.3)
    loss = (model.decode(latents, drop_path_rate=0.3) - images).abs().mean()
    loss = loss + model.encode_text(tokens).square().mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, len(forwards), model


def test_same_loss_and_gradients_with_blocks_recomputed(monkeypatch):
    loss_plain, grads_plain, forwards_plain, _ = losses_and_grads(False, monkeypatch)
    loss_ckpt, grads_ckpt, forwards_ckpt, model = losses_and_grads(True, monkeypatch)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads_plain.keys() and len(grads_plain) > 20
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7, msg=name)
    # Every vision/decoder block ran twice: once forward, once recomputed in the backward.
    assert forwards_ckpt == 2 * forwards_plain > 0
    assert model.text.transformer.grad_checkpointing


def test_eval_and_no_grad_calls_do_not_recompute():
    model = create_model("vtp-tiny", image_size=32).set_grad_checkpointing(True).eval()
    with torch.no_grad():
        out = model.get_reconstruction_latents(torch.randn(2, 3, 32, 32))
    assert out.shape[0] == 2
    assert set(model.state_dict()) == set(create_model("vtp-tiny", image_size=32).state_dict())
