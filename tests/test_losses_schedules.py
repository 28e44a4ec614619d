"""Step-indexed schedules of the stage-1 recipe."""

import math

import pytest

from vtp_gen.losses.schedules import (
    cosine_schedule,
    learning_rate,
    teacher_momentum,
    teacher_temperature,
    weight_decay,
)


def test_teacher_temperature_warms_up_linearly_then_stays():
    assert teacher_temperature(0, 100) == pytest.approx(0.04)
    assert teacher_temperature(50, 100) == pytest.approx(0.055)
    assert teacher_temperature(100, 100) == pytest.approx(0.07)
    assert teacher_temperature(10_000, 100) == pytest.approx(0.07)
    assert teacher_temperature(0, 0) == pytest.approx(0.07)  # no warm-up


def test_momentum_and_weight_decay_follow_a_half_cosine():
    assert teacher_momentum(0, 1000) == pytest.approx(0.992)
    assert teacher_momentum(500, 1000) == pytest.approx(0.996)
    assert teacher_momentum(250, 1000) == pytest.approx(1.0 - 0.004 * (1 + math.cos(math.pi / 4)))
    assert teacher_momentum(1000, 1000) == pytest.approx(1.0)
    assert teacher_momentum(5000, 1000) == pytest.approx(1.0)
    assert weight_decay(0, 10) == pytest.approx(0.04)
    assert weight_decay(5, 10) == pytest.approx(0.12)
    assert weight_decay(10, 10) == pytest.approx(0.2)


def test_learning_rate_warmup_then_cosine_to_min():
    kwargs = dict(total_steps=110, peak_lr=1e-3, warmup_steps=10, min_lr=1e-5)
    assert learning_rate(0, **kwargs) == 0.0
    assert learning_rate(5, **kwargs) == pytest.approx(5e-4)
    assert learning_rate(10, **kwargs) == pytest.approx(1e-3)
    assert learning_rate(60, **kwargs) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert learning_rate(110, **kwargs) == pytest.approx(1e-5)
    values = [learning_rate(s, **kwargs) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        cosine_schedule(-1, 10, 0.0, 1.0)
    with pytest.raises(ValueError):
        cosine_schedule(0, 10, 0.0, 1.0, warmup_steps=11)
    assert cosine_schedule(3, 10, 1.0, 0.0, warmup_steps=10) == pytest.approx(0.3)
    assert cosine_schedule(10, 10, 1.0, 0.5, warmup_steps=10) == pytest.approx(0.5)
