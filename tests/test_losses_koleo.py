"""KoLeo regulariser against a hand computation."""

import math

import pytest
import torch

from vtp_gen.losses.koleo import KoLeoLoss


def _hand_koleo(points):
    unit = [[c / math.hypot(*p) for c in p] for p in points]
    total = 0.0
    for i, p in enumerate(unit):
        nearest = min(math.dist(p, q) for j, q in enumerate(unit) if j != i)
        total += -math.log(nearest + 1e-8)
    return total / len(unit)


POINTS = [[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.2]]


def test_matches_hand_computation():
    loss = KoLeoLoss()(torch.tensor(POINTS))
    # pairwise_distance adds eps=1e-8 to the difference: negligible at this scale.
    assert loss.item() == pytest.approx(_hand_koleo(POINTS), rel=1e-5)


def test_groups_are_scored_separately_and_summed():
    other = [[0.5, -1.0], [2.0, 1.0], [-0.3, -0.4], [1.0, 1.1]]
    loss = KoLeoLoss()(torch.tensor(POINTS + other), groups=2)
    assert loss.item() == pytest.approx(_hand_koleo(POINTS) + _hand_koleo(other), rel=1e-5)


def test_spreading_points_lowers_the_loss_and_gradient_pushes_neighbours_apart():
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]], requires_grad=True)
    spread = torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]])
    loss_fn = KoLeoLoss()
    loss = loss_fn(clustered)
    assert loss > loss_fn(spread)
    loss.backward()
    # Descending the gradient moves the two close points apart (their y-gap grows).
    step = clustered.detach() - 0.01 * clustered.grad
    assert step[1, 1] - step[0, 1] > 0.05


def test_needs_a_neighbour():
    with pytest.raises(ValueError):
        KoLeoLoss()(torch.ones(1, 4))
