"""The shared training loop, learning-rate schedules, seeding and device choice."""

import random

import numpy as np
import torch

from part_utils.device import get_device
from part_utils.progress import progress_disabled
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.seeding import forked_rng, seed_everything
from part_utils.training import constant_lr, cosine_decay_lr, linear_decay_lr, train_self_supervised


def small_model() -> ToyModel:
    return ToyModel(
        ToyModelConfig(n_inst=4, n_features=5, d_hidden=2), feature_probability=0.1, device=torch.device("cpu")
    )


def test_training_reduces_the_loss_and_logs_at_log_steps():
    seed_everything(0)
    model = small_model()
    log = train_self_supervised(
        model, steps=400, batch_size=256, lr=1e-2, log_every=100, snapshot=lambda: model.W.detach().clone()
    )
    assert log.steps == [0, 100, 200, 300, 399]
    assert len(log.snapshots) == 5 and log.snapshots[0].shape == (4, 2, 5)
    assert log.losses[-1] < 0.7 * log.losses[0]


def test_training_is_deterministic_under_a_seed():
    runs = []
    for _ in range(2):
        seed_everything(3)
        model = small_model()
        train_self_supervised(model, steps=50, batch_size=128)
        runs.append(model.W.detach().clone())
    assert torch.equal(*runs)


def test_learning_rate_schedules():
    assert constant_lr(7, 10) == 1.0
    assert linear_decay_lr(0, 10) == 1.0 and linear_decay_lr(5, 10) == 0.5
    assert cosine_decay_lr(0, 10) == 1.0 and abs(cosine_decay_lr(10, 10)) < 1e-12


def test_forked_rng_restores_every_generator():
    seed_everything(5)
    expected = (random.random(), np.random.rand(), torch.rand(2))
    seed_everything(5)
    with forked_rng(123):
        random.random(), np.random.rand(), torch.rand(100)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(2), expected[2])


def test_device_helper_prefers_an_accelerator():
    device = get_device()
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device.type == "cpu"


def test_progress_bars_obey_tqdm_disable(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_disabled()
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert not progress_disabled()
