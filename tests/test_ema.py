"""EMA of weights: the update rule, per-call decay, wrappers, buffers, and the EMA module's behaviour."""

import pytest
import torch

from vtp_gen.utils.ema import EMA, ema_update


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.dropout(self.linear(x)) + self.frozen


def _fill(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_update_rule_and_per_call_decay():
    model = Net()
    ema = EMA(model, decay=0.9)
    _fill(ema.module, 1.0)
    _fill(model, 3.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 3
    for p in ema.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1.2))
    ema.update(model, decay=0.5)  # a scheduled momentum for one call: 0.5 * 1.2 + 0.5 * 3
    for p in ema.module.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 2.1))
    assert ema.num_updates.item() == 2 and ema.decay == 0.9


def test_repeated_updates_converge_geometrically():
    model, shadow = Net(), Net()
    _fill(shadow, 0.0)
    _fill(model, 1.0)
    for _ in range(10):
        ema_update(shadow, model, decay=0.8)
    for p in shadow.parameters():
        torch.testing.assert_close(p, torch.full_like(p, 1 - 0.8**10))


def test_buffers_copied_and_wrappers_ignored():
    model, shadow = Net(), Net()
    model.steps.fill_(7)
    wrapped = torch.nn.Module()
    wrapped.module = model  # how DistributedDataParallel prefixes names
    ema_update(shadow, wrapped, decay=0.0)
    assert shadow.steps.item() == 7
    torch.testing.assert_close(shadow.linear.weight, model.linear.weight)
    with pytest.raises(ValueError, match="differ"):
        ema_update(torch.nn.Linear(3, 2), model, decay=0.5)
    with pytest.raises(ValueError, match="decay"):
        ema_update(shadow, model, decay=1.5)


def test_ema_module_is_frozen_in_eval_and_has_the_model_keys():
    model = Net()
    ema = EMA(model)
    assert ema.decay == 0.9999
    assert all(not p.requires_grad for p in ema.parameters())
    ema.train()
    assert not ema.module.training, "the averaged model stays in eval mode (no dropout)"
    x = torch.randn(4, 3)
    torch.testing.assert_close(ema(x), ema(x))
    assert set(ema.module.state_dict()) == set(model.state_dict())
    # Training the model does not touch the copy until update() is called.
    before = ema.module.linear.weight.clone()
    model.linear.weight.data.add_(1.0)
    torch.testing.assert_close(ema.module.linear.weight, before)
    ema.copy_from(model)
    torch.testing.assert_close(ema.module.linear.weight, model.linear.weight)
