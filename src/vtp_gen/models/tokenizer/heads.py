"""The DINO/iBOT projection head and the EMA-teacher helpers.

One head serves CLS tokens (DINO loss) and masked patch tokens (iBOT loss), as
in DINOv2 with ``ibot_separate_head = False`` and as in the VTP reference.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _mlp(in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int, bias: bool) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=bias), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim, bias=bias), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """MLP (GELU) -> L2 normalisation -> weight-normed linear to ``out_dim`` prototypes.

    The last layer's weight-norm gain g is set to 1 and, with
    ``freeze_last_layer_gain`` (default, as DINO/DINOv2), excluded from training,
    so every prototype keeps unit norm and logits are cosine similarities.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        mlp_bias: bool = True,
        freeze_last_layer_gain: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, max(nlayers, 1), mlp_bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        nn.init.trunc_normal_(last.weight, std=0.02)
        self.last_layer = weight_norm(last)
        with torch.no_grad():
            self.last_layer_gain.fill_(1.0)
        self.last_layer_gain.requires_grad_(not freeze_last_layer_gain)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def last_layer_gain(self) -> nn.Parameter:
        """The weight-norm magnitude g, (out_dim, 1)."""
        return self.last_layer.parametrizations.weight.original0

    def forward(self, x: Tensor, no_last_layer: bool = False, only_last_layer: bool = False) -> Tensor:
        """(..., in_dim) -> (..., out_dim) prototype scores; the flags give the bottleneck features or skip the MLP."""
        if not only_last_layer:
            x = self.mlp(x)
            # fp16 cannot represent 1e-12; DINOv2 uses the same switch.
            x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        if no_last_layer:
            return x
        return self.last_layer(x)


def make_ema_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (e.g. an ``nn.ModuleDict`` of trunk and head) to be updated by EMA only."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter (buffers untouched)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.named_parameters())
    if teacher_params.keys() != student_params.keys():
        missing = sorted(set(student_params) ^ set(teacher_params))[:5]
        raise ValueError(f"teacher and student parameters differ, e.g. {missing}")
    names = list(student_params)
    teacher_tensors = [teacher_params[n].data for n in names]
    student_tensors = [student_params[n].data.to(teacher_params[n].dtype) for n in names]
    # One fused kernel per group on GPU; the same update DINOv2 performs.
    torch._foreach_mul_(teacher_tensors, momentum)
    torch._foreach_add_(teacher_tensors, student_tensors, alpha=1.0 - momentum)
