"""Every collective of the stage-1 losses on 2 gloo CPU ranks vs one process on the concatenated batch.

One spawn serves the whole file (starting ranks dominates the cost): each
rank runs every check on its share of fixed global tensors and returns the
results, the tests compare them with the single-process computation.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from vtp_gen.losses.clip import CLIPLoss
from vtp_gen.losses.dino import DINOLoss, TeacherCentering, iBOTPatchLoss, sinkhorn_knopp
from vtp_gen.utils.distributed import (
    all_gather_keep_local_grad,
    all_gather_with_grad,
    all_reduce_mean,
    get_rank,
    get_world_size,
    run_on_gloo_ranks,
)

pytestmark = pytest.mark.distributed

WORLD = 2
GLOBAL_BATCH, DIM = 8, 5  # CLIP: 4 image-text pairs per rank
CLIP_MODES = {"gather_keep_local_grad": (False, False), "local_loss_gather_with_grad": (True, True)}
K = 6  # prototypes
IMAGES = 4  # global batch of images for the DINO checks: 2 per rank
# Masked-patch rows per rank for the iBOT checks: ranks may hold different numbers, or none.
UNEVEN_ROWS = {"uneven": (5, 2), "one_empty": (3, 0)}
LOG_SCALE = math.log(1 / 0.07)


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=g), dim=-1)
    texts = F.normalize(images + 0.8 * torch.randn(GLOBAL_BATCH, DIM, generator=g), dim=-1)
    return images, texts


def _dino_tensors():
    g = torch.Generator().manual_seed(1)
    # Crop-major over the global batch: view 1 of images 0..3, then view 2.
    return {
        "teacher_1": torch.randn(2 * IMAGES, K, generator=g),
        "teacher_2": torch.randn(2 * IMAGES, K, generator=g),
        "student": torch.randn(2 * IMAGES, K, generator=g),
        "local": torch.randn(IMAGES, K, generator=g),  # one local view
        "patches": torch.randn(7, K, generator=g),
    }


def _rank_rows(global_crop_major: torch.Tensor, rank: int, n_views: int) -> torch.Tensor:
    """This rank's images, still crop-major: each rank holds images [2r, 2r + 2) of every view."""
    per_rank = IMAGES // WORLD
    views = global_crop_major.chunk(n_views)
    return torch.cat([v[rank * per_rank : (rank + 1) * per_rank] for v in views])


def _on_rank(rank: int, world_size: int) -> dict:
    out = {}
    # --- CLIP: both ways of spreading the batch.
    images, texts = _features()
    local = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    for name, (local_loss, gather_with_grad) in CLIP_MODES.items():
        local_images = images[local].clone().requires_grad_(True)
        local_texts = texts[local].clone().requires_grad_(True)
        loss = CLIPLoss(local_loss, gather_with_grad)(local_images, local_texts, torch.tensor(LOG_SCALE))
        loss.backward()
        out[f"clip.{name}.loss"] = loss.detach()
        out[f"clip.{name}.grad_images"] = local_images.grad
        out[f"clip.{name}.grad_texts"] = local_texts.grad

    # --- DINO centre (EMA, all-reduced) over two steps, and the targets it gives.
    t = _dino_tensors()
    centering = TeacherCentering(K, "softmax_center", center_momentum=0.9)
    out["center.targets_1"] = centering(_rank_rows(t["teacher_1"], rank, 2), 0.04)
    out["center.targets_2"] = centering(_rank_rows(t["teacher_2"], rank, 2), 0.04)
    out["center.center"] = centering.center.clone()

    # --- Sinkhorn-Knopp: equal rows (CLS tokens) and uneven / empty rows (masked patches).
    out["sinkhorn.even"] = sinkhorn_knopp(_rank_rows(t["teacher_1"], rank, 2), 0.07)
    for name, counts in UNEVEN_ROWS.items():
        start = sum(counts[:rank])
        out[f"sinkhorn.{name}"] = sinkhorn_knopp(t["patches"][start : start + counts[rank]], 0.07)

    # --- The DINO loss per rank (sinkhorn targets over the global batch).
    dino = DINOLoss(K, centering="sinkhorn_knopp")
    out["dino.loss"] = dino(
        _rank_rows(t["student"], rank, 2),
        _rank_rows(t["teacher_1"], rank, 2),
        0.05,
        _rank_rows(t["local"], rank, 1),
    )

    # --- iBOT with the EMA centre and uneven masked counts: the centre must agree on both ranks.
    counts = UNEVEN_ROWS["uneven"]
    start = sum(counts[:rank])
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks.view(-1)[: counts[rank]] = True
    ibot = iBOTPatchLoss(K, centering="softmax_center")
    rows = t["patches"][start : start + counts[rank]]
    ibot(rows, rows, 0.04, masks)
    out["ibot.center"] = ibot.centering.center.clone()

    # --- The gather / reduce helpers.
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = all_gather_with_grad(x)
    (gathered * torch.arange(1.0, 5.0).view(4, 1)).sum().backward()
    out["gather_with_grad.value"] = gathered.detach()
    out["gather_with_grad.grad"] = x.grad
    y = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = all_gather_keep_local_grad(y)
    (gathered * torch.arange(1.0, 5.0).view(4, 1)).sum().backward()
    out["gather_keep_local.value"] = gathered.detach()
    out["gather_keep_local.grad"] = y.grad
    out["reduce_mean"] = all_reduce_mean(torch.tensor([float(rank), 10.0 * rank]))
    out["rank_world"] = torch.tensor([get_rank(), get_world_size()])
    return out


@pytest.fixture(scope="module")
def ranks():
    return run_on_gloo_ranks(_on_rank, WORLD)


@pytest.mark.parametrize("mode", list(CLIP_MODES))
def test_clip_loss_equals_single_process_on_concatenated_batch(ranks, mode):
    images, texts = _features()
    images.requires_grad_(True)
    texts.requires_grad_(True)
    full_loss = CLIPLoss()(images, texts, torch.tensor(LOG_SCALE))
    full_loss.backward()

    losses = torch.stack([r[f"clip.{mode}.loss"] for r in ranks])
    grad_images = torch.cat([r[f"clip.{mode}.grad_images"] for r in ranks])
    grad_texts = torch.cat([r[f"clip.{mode}.grad_texts"] for r in ranks])
    local_loss, _ = CLIP_MODES[mode]
    if local_loss:
        # Each rank scores its own rows; their mean is the global loss. The gather's backward
        # sums every rank's gradient into each slice: W x the global gradient, which DDP's
        # averaging turns back into exactly the single-process parameter gradient.
        torch.testing.assert_close(losses.mean(), full_loss.detach(), rtol=1e-6, atol=1e-6)
        scale = WORLD
    else:
        # Every rank computes the full loss; each keeps the gradient of its own slice.
        torch.testing.assert_close(losses, full_loss.detach().expand(WORLD), rtol=1e-6, atol=1e-6)
        scale = 1
    torch.testing.assert_close(grad_images, scale * images.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_texts, scale * texts.grad, rtol=1e-5, atol=1e-6)


def test_dino_centre_is_identical_on_both_ranks_and_equals_single_process(ranks):
    t = _dino_tensors()
    single = TeacherCentering(K, "softmax_center", center_momentum=0.9)
    targets_1 = single(t["teacher_1"], 0.04)
    targets_2 = single(t["teacher_2"], 0.04)
    assert torch.equal(ranks[0]["center.center"], ranks[1]["center.center"])
    torch.testing.assert_close(ranks[0]["center.center"], single.center)
    assert single.center.abs().sum() > 0
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["center.targets_1"], _rank_rows(targets_1, r, 2))
        torch.testing.assert_close(out["center.targets_2"], _rank_rows(targets_2, r, 2))


def test_sinkhorn_across_ranks_equals_single_process(ranks):
    t = _dino_tensors()
    full = sinkhorn_knopp(t["teacher_1"], 0.07)
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["sinkhorn.even"], _rank_rows(full, r, 2))
    gathered = _rank_rows_inverse(ranks, "sinkhorn.even")
    torch.testing.assert_close(gathered, full)
    torch.testing.assert_close(gathered.sum(dim=1), torch.ones(2 * IMAGES))


def _rank_rows_inverse(ranks, key):
    """Undo _rank_rows: back to global crop-major order."""
    views = [r[key].chunk(2) for r in ranks]
    return torch.cat([torch.cat([v[i] for v in views]) for i in range(2)])


@pytest.mark.parametrize("name", list(UNEVEN_ROWS))
def test_sinkhorn_with_uneven_rows_per_rank(ranks, name):
    t = _dino_tensors()
    counts = UNEVEN_ROWS[name]
    full = sinkhorn_knopp(t["patches"][: sum(counts)], 0.07)
    gathered = torch.cat([r[f"sinkhorn.{name}"] for r in ranks])
    assert gathered.shape == full.shape
    torch.testing.assert_close(gathered, full)
    torch.testing.assert_close(gathered.sum(dim=1), torch.ones(sum(counts)))


def test_dino_loss_mean_over_ranks_equals_single_process(ranks):
    t = _dino_tensors()
    full = DINOLoss(K, centering="sinkhorn_knopp")(t["student"], t["teacher_1"], 0.05, t["local"])
    per_rank = torch.stack([r["dino.loss"] for r in ranks])
    torch.testing.assert_close(per_rank.mean(), full)


def test_ibot_centre_with_uneven_masked_counts(ranks):
    t = _dino_tensors()
    rows = t["patches"][: sum(UNEVEN_ROWS["uneven"])]
    single = iBOTPatchLoss(K, centering="softmax_center")
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks.view(-1)[: len(rows)] = True
    single(rows, rows, 0.04, masks)
    assert torch.equal(ranks[0]["ibot.center"], ranks[1]["ibot.center"])
    torch.testing.assert_close(ranks[0]["ibot.center"], single.centering.center)


def test_gather_and_reduce_helpers(ranks):
    expected_value = torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)])
    weights = torch.arange(1.0, 5.0).view(4, 1).expand(4, 3)
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["gather_with_grad.value"], expected_value)
        torch.testing.assert_close(out["gather_keep_local.value"], expected_value)
        own = weights[2 * r : 2 * r + 2]
        # With grad: both ranks' losses reach this slice (sum over ranks); local only: this rank's.
        torch.testing.assert_close(out["gather_with_grad.grad"], WORLD * own)
        torch.testing.assert_close(out["gather_keep_local.grad"], own)
        torch.testing.assert_close(out["reduce_mean"], torch.tensor([0.5, 5.0]))
        assert out["rank_world"].tolist() == [r, WORLD]
