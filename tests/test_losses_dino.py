"""DINO / iBOT losses, the two centerings and Sinkhorn-Knopp, against hand computations."""

import math

import pytest
import torch

from vtp_gen.data.masking import ibot_mask_weights
from vtp_gen.losses.dino import DINOLoss, TeacherCentering, iBOTPatchLoss, sinkhorn_knopp


def _softmax(row, temp, center=None):
    center = center or [0.0] * len(row)
    exps = [math.exp((v - c) / temp) for v, c in zip(row, center)]
    return [e / sum(exps) for e in exps]


def _ce(teacher_probs, student_row, student_temp):
    """-sum_k p_k log softmax(s / T_s)_k, written out."""
    log_norm = math.log(sum(math.exp(v / student_temp) for v in student_row))
    return -sum(p * (v / student_temp - log_norm) for p, v in zip(teacher_probs, student_row))


# B = 2 images, K = 3 prototypes; rows 0-1 are global view 1, rows 2-3 global view 2.
TEACHER = [[0.3, -0.2, 0.1], [0.0, 0.5, -0.4], [-0.1, 0.2, 0.6], [0.4, 0.1, -0.3]]
STUDENT = [[0.2, 0.1, -0.5], [-0.3, 0.4, 0.2], [0.1, -0.2, 0.3], [0.5, 0.0, -0.1]]
LOCAL = [[0.0, 0.3, -0.2], [0.6, -0.4, 0.1]]  # one local view of the two images
T_TEACHER, T_STUDENT = 0.04, 0.1


def test_dino_loss_swaps_global_views_and_uses_both_for_local_views():
    loss_fn = DINOLoss(out_dim=3, student_temp=T_STUDENT, centering="softmax_center")
    loss = loss_fn(torch.tensor(STUDENT), torch.tensor(TEACHER), T_TEACHER, student_local=torch.tensor(LOCAL))

    t = [_softmax(row, T_TEACHER) for row in TEACHER]  # centre is 0 on the first call
    pairs = []
    for b in range(2):
        pairs.append(_ce(t[2 + b], STUDENT[b], T_STUDENT))  # student view 1 <- teacher view 2
        pairs.append(_ce(t[b], STUDENT[2 + b], T_STUDENT))  # student view 2 <- teacher view 1
        pairs.append(_ce(t[b], LOCAL[b], T_STUDENT))  # local view <- both teacher views
        pairs.append(_ce(t[2 + b], LOCAL[b], T_STUDENT))
    # 4 crop-pair terms (2 global + 2 local), each a mean over B = 2 images.
    expected = sum(pairs) / (2 * 4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_without_local_views():
    loss = DINOLoss(3, T_STUDENT)(torch.tensor(STUDENT), torch.tensor(TEACHER), T_TEACHER)
    t = [_softmax(row, T_TEACHER) for row in TEACHER]
    expected = (
        sum(_ce(t[2 + b], STUDENT[b], T_STUDENT) + _ce(t[b], STUDENT[2 + b], T_STUDENT) for b in range(2)) / 4
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_softmax_centre_is_an_ema_of_teacher_means_applied_from_the_next_step():
    centering = TeacherCentering(3, "softmax_center", center_momentum=0.9)
    first = centering(torch.tensor(TEACHER), T_TEACHER)
    torch.testing.assert_close(first, torch.tensor([_softmax(r, T_TEACHER) for r in TEACHER]))
    batch_mean = [sum(r[k] for r in TEACHER) / 4 for k in range(3)]
    expected_center = [0.1 * m for m in batch_mean]
    torch.testing.assert_close(centering.center, torch.tensor([expected_center]))

    second = centering(torch.tensor(STUDENT), T_TEACHER)
    torch.testing.assert_close(
        second, torch.tensor([_softmax(r, T_TEACHER, expected_center) for r in STUDENT])
    )
    student_mean = [sum(r[k] for r in STUDENT) / 4 for k in range(3)]
    expected_center = [0.9 * c + 0.1 * m for c, m in zip(expected_center, student_mean)]
    torch.testing.assert_close(centering.center, torch.tensor([expected_center]))

    centering.eval()  # validation must not move the centre
    centering(torch.tensor(TEACHER), T_TEACHER)
    torch.testing.assert_close(centering.center, torch.tensor([expected_center]))


def test_sinkhorn_one_iteration_by_hand():
    logits = [[0.2, -0.1], [0.0, 0.3], [0.5, 0.1]]  # N = 3 samples, K = 2 prototypes
    temp = 0.5
    q = [[math.exp(v / temp) for v in row] for row in logits]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    col = [sum(q[n][k] for n in range(3)) for k in range(2)]  # prototype mass
    q = [[q[n][k] / col[k] / 2 for k in range(2)] for n in range(3)]
    q = [[v / sum(row) / 3 for v in row] for row in q]  # sample mass 1/N
    expected = [[v * 3 for v in row] for row in q]
    out = sinkhorn_knopp(torch.tensor(logits), temp, n_iterations=1)
    torch.testing.assert_close(out, torch.tensor(expected))


def test_sinkhorn_rows_are_distributions_and_prototypes_share_mass_equally():
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    three = sinkhorn_knopp(logits, 0.5, n_iterations=3)
    torch.testing.assert_close(three.sum(dim=1), torch.ones(12))
    # After 3 iterations each prototype holds nearly N/K = 3 samples' worth of mass
    # (a plain softmax of the same logits is off by 0.65) ...
    plain_softmax_error = (torch.softmax(logits / 0.5, dim=-1).sum(dim=0) - 3.0).abs().max()
    assert (three.sum(dim=0) - 3.0).abs().max() < min(0.25, plain_softmax_error / 2)
    # ... and exactly so at convergence.
    many = sinkhorn_knopp(logits, 0.5, n_iterations=200)
    torch.testing.assert_close(many.sum(dim=0), torch.full((4,), 3.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(many.sum(dim=1), torch.ones(12))


def test_sinkhorn_survives_logits_that_overflow_exp():
    logits = torch.tensor([[100.0, 90.0], [95.0, 100.0]])  # exp(100 / 0.04) is inf in float32
    out = sinkhorn_knopp(logits, 0.04)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2))


def test_dino_loss_with_sinkhorn_uses_sinkhorn_targets():
    loss_fn = DINOLoss(3, T_STUDENT, centering="sinkhorn_knopp")
    loss = loss_fn(torch.tensor(STUDENT), torch.tensor(TEACHER), T_TEACHER)
    t = sinkhorn_knopp(torch.tensor(TEACHER), T_TEACHER).tolist()
    expected = (
        sum(_ce(t[2 + b], STUDENT[b], T_STUDENT) + _ce(t[b], STUDENT[2 + b], T_STUDENT) for b in range(2)) / 4
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert loss_fn.centering.center.abs().sum() == 0  # stateless mode leaves the buffer alone


def test_ibot_loss_weights_each_image_equally():
    # 3 global crops of N = 3 patches: crop 0 has 2 masked patches, crop 1 has 1, crop 2 none.
    masks = torch.tensor([[True, False, True], [False, True, False], [False, False, False]])
    teacher = [[0.3, -0.2, 0.1], [0.0, 0.5, -0.4], [-0.1, 0.2, 0.6]]
    student = [[0.2, 0.1, -0.5], [-0.3, 0.4, 0.2], [0.1, -0.2, 0.3]]
    loss = iBOTPatchLoss(3, T_STUDENT)(torch.tensor(student), torch.tensor(teacher), T_TEACHER, masks)
    ce = [_ce(_softmax(t, T_TEACHER), s, T_STUDENT) for t, s in zip(teacher, student)]
    expected = (0.5 * ce[0] + 0.5 * ce[1] + 1.0 * ce[2]) / 3  # divided by all 3 crops
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(ibot_mask_weights(masks), torch.tensor([0.5, 0.5, 1.0]))


def test_ibot_loss_with_nothing_masked_is_zero_and_keeps_the_centre():
    masks = torch.zeros(2, 4, dtype=torch.bool)
    loss_fn = iBOTPatchLoss(3)
    loss = loss_fn(torch.zeros(0, 3), torch.zeros(0, 3), 0.04, masks)
    assert loss.item() == 0.0
    assert loss_fn.centering.center.abs().sum() == 0


def test_losses_reject_misaligned_inputs():
    with pytest.raises(ValueError, match="2B"):
        DINOLoss(3)(torch.zeros(3, 3), torch.zeros(3, 3), 0.04)
    with pytest.raises(ValueError, match="masked"):
        iBOTPatchLoss(3)(torch.zeros(2, 3), torch.zeros(2, 3), 0.04, torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(3, centering="mean")


def test_gradient_flows_to_student_only():
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    DINOLoss(3)(student, teacher, 0.04).backward()
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None
