"""Part 4's training loop: resampling revives dead latents, Adam moments reset (and what that does to the step size),
the recovery tables, and the animation stays small."""

import pytest
import torch

from part_utils.plotting.sae import (
    animate_sae_training,
    complete_instances,
    plot_step_sizes,
    recipe_table,
    recovery_table,
)
from part_utils.reference.part1_toy_models import ToyModel, ToyModelConfig
from part_utils.reference.part4_toy_sae import ToySAE, ToySAEConfig, adam_step_sizes
from part_utils.sae_training import redundant_latents, reset_adam_moments, train_sae
from part_utils.seeding import seed_everything
from part_utils.training import make_adam, train_self_supervised

N_INST = 4
KILLED = [(0, 1), (1, 3), (2, 0), (2, 4), (3, 2)]


@pytest.fixture(scope="module")
def pentagon_model() -> ToyModel:
    """The Part 4 toy model in fast mode: 5 features in 2D, instance 0's weights everywhere."""
    seed_everything(0)
    single = ToyModel(
        ToyModelConfig(n_inst=1, n_features=5, d_hidden=2), feature_probability=0.025, device=torch.device("cpu")
    )
    train_self_supervised(single, steps=1_500, lr=3e-3)
    model = ToyModel(
        ToyModelConfig(n_inst=N_INST, n_features=5, d_hidden=2), feature_probability=0.025, device=torch.device("cpu")
    )
    with torch.no_grad():
        model.W.copy_(single.W.expand_as(model.W))
    return model


def sae_with_killed_latents(model: ToyModel) -> ToySAE:
    """An SAE in which some latents can never fire: a large negative encoder bias."""
    seed_everything(1)
    sae = ToySAE(ToySAEConfig(n_inst=N_INST, d_in=2, d_sae=5), model)
    with torch.no_grad():
        for inst, latent in KILLED:
            sae.b_enc[inst, latent] = -100.0
    return sae


def dead_latents(sae: ToySAE) -> set[tuple[int, int]]:
    with torch.no_grad():
        _, _, acts, _ = sae(sae.generate_batch(50_000))
    return {tuple(index) for index in ((acts > 0).sum(0) == 0).nonzero().tolist()}


@pytest.mark.parametrize("method", ["advanced", "simple"])
def test_resampling_revives_every_dead_latent(pentagon_model, method):
    sae = sae_with_killed_latents(pentagon_model)
    assert set(KILLED) <= dead_latents(sae)
    log = train_sae(sae, steps=1_200, resample_method=method, resample_every=400, resample_window=100, log_every=100)
    assert log.resample_counts[0] >= len(KILLED)
    assert dead_latents(sae) == set(), f"still dead after {method} resampling"


def test_without_resampling_killed_latents_stay_dead(pentagon_model):
    sae = sae_with_killed_latents(pentagon_model)
    train_sae(sae, steps=800, log_every=100)
    assert set(KILLED) <= dead_latents(sae)


def test_reset_adam_moments_zeroes_only_resampled_latents(pentagon_model):
    sae = ToySAE(ToySAEConfig(n_inst=N_INST, d_in=2, d_sae=5), pentagon_model)
    optimizer = make_adam(sae.parameters(), 1e-3)
    _, loss, _, _ = sae(sae.generate_batch(256))
    loss.backward()
    optimizer.step()
    resampled = torch.zeros(N_INST, 5, dtype=torch.bool)
    resampled[1, 2] = True
    reset_adam_moments(optimizer, sae, resampled)
    for name, axis in sae.latent_axes().items():
        moments = optimizer.state[getattr(sae, name)]["exp_avg_sq"]
        picked = moments[1].select(axis - 1, 2)
        assert (picked == 0).all(), name
        assert (moments != 0).sum() > 0.5 * moments.numel(), f"{name}: other latents were reset too"


def test_redundant_latents_flags_the_less_active_duplicate():
    W = torch.tensor([[[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]]])
    W = W / W.norm(dim=-1, keepdim=True)
    flagged = redundant_latents(W, torch.tensor([[0.2, 0.1, 0.3]]), threshold=0.99)
    assert flagged.tolist() == [[False, True, False]]
    assert not redundant_latents(
        W, torch.tensor([[0.2, 0.0, 0.3]]), threshold=0.99
    ).any()  # a dead one is not "redundant"


def test_animation_of_16_instances_and_200_frames_is_under_5_mb(pentagon_model, test_output_dir, offline_page):
    model = ToyModel(
        ToyModelConfig(n_inst=16, n_features=5, d_hidden=2), feature_probability=0.025, device=torch.device("cpu")
    )
    with torch.no_grad():
        model.W.copy_(pentagon_model.W[:1].expand_as(model.W))
    sae = ToySAE(ToySAEConfig(n_inst=16, d_in=2, d_sae=5), model)
    log = train_sae(sae, steps=1_000, log_every=5, resample_method="advanced", resample_every=300, resample_window=100)
    assert len(log.snapshots) == 201
    figure = animate_sae_training(log, model.W.detach().transpose(1, 2), colour_by_loss=True)
    path = test_output_dir / "animation.html"
    figure.write_html(path, include_plotlyjs="directory")  # plotly.min.js beside it, no CDN
    size_mb = path.stat().st_size / 1e6
    assert size_mb <= 5.0, f"{size_mb:.2f} MB"

    page = offline_page.page
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_function("() => document.querySelector('.plotly-graph-div svg.main-svg')")
    assert not offline_page.errors and not offline_page.refused, "errors on opening the animation"

    rail = page.query_selector(".slider-rail-rect").bounding_box()
    page.mouse.click(rail["x"] + rail["width"] - 1, rail["y"] + rail["height"] / 2)  # jump to the last frame
    page.wait_for_function(
        "n => document.querySelector('.plotly-graph-div')._fullLayout.sliders[0].active === n",
        arg=len(log.snapshots) - 1,
    )
    page.screenshot(path=str(test_output_dir / "animation-last-frame.png"))
    # plotly.js rejects the promise of an animation that a newer one interrupts, and its slider
    # leaves that rejection unhandled: the only error a user's clicks may cause.
    assert set(offline_page.errors) <= {"Uncaught (in promise) undefined"}, offline_page.errors


@pytest.mark.parametrize("reset_at", [0, 1_250, 8_750])
def test_adam_step_sizes_follow_the_bias_correction_of_the_global_step(reset_at):
    """Zeroed moments with a running step count: lr·(1 − β₁ⁿ)/(1 − β₁ᵗ⁺ⁿ)·√((1 − β₂ᵗ⁺ⁿ)/(1 − β₂ⁿ)); fresh: lr."""
    sizes = adam_step_sizes(reset_at, n_steps=1_000, lr=1e-3)
    beta1, beta2 = 0.9, 0.999
    for n in (1, 12, 100, 1_000):
        t = reset_at + n
        expected = (1 - beta1**n) / (1 - beta1**t) * ((1 - beta2**t) / (1 - beta2**n)) ** 0.5
        assert sizes[n - 1] == pytest.approx(expected, rel=1e-4), n
    if reset_at == 0:
        assert sizes == pytest.approx([1.0] * 1_000, rel=1e-4)
    else:
        assert max(sizes) > 5.0 and sizes[-1] > 1.15  # a kick of several lr, still above lr after 1,000 steps


def fake_report(mmcs: list[float], recovered: list[int], dead: list[int]) -> dict[str, torch.Tensor]:
    return {
        "mmcs": torch.tensor(mmcs),
        "hungarian": torch.tensor(mmcs) - 0.1,
        "recall": torch.full((len(mmcs),), 0.5),
        "recovered": torch.tensor(recovered),
        "dead": torch.tensor(dead),
        "l0": torch.full((len(mmcs),), 0.1),
        "fvu": torch.full((len(mmcs),), 0.01),
    }


def test_recipe_table_counts_complete_instances_and_shows_mean_and_sd():
    reports = {
        "a": fake_report([1.0, 0.9, 0.8], [5, 5, 4], [0, 1, 0]),
        "b": fake_report([1.0, 1.0, 1.0], [5, 5, 5], [0, 0, 0]),
    }
    assert complete_instances(reports["a"], 5).tolist() == [True, False, False]
    table = recipe_table(reports, 5)
    assert table.columns["all 5 features, no dead latent"] == ["1/3", "3/3"]
    assert table.columns["mean max cos sim"][0] == "0.9000 ± 0.1000"
    assert table.columns["Hungarian cos sim"][1] == "0.9000 ± 0.0000"
    assert table.columns["dead latents (all instances)"] == [1, 0]


def test_recovery_table_shows_hungarian_and_recall_beside_mmcs():
    table = recovery_table(fake_report([0.95, 0.99], [4, 5], [1, 0]))
    names = list(table.columns)
    assert names[1:4] == ["mean max cos sim", "Hungarian cos sim", "recall"]
    assert table.columns["Hungarian cos sim"] == ["0.8500", "0.8900"]


def test_plot_step_sizes_draws_one_line_per_curve_on_a_log_axis():
    figure = plot_step_sizes({"fresh": [1.0, 1.0, 1.0], "reset": [3.2, 4.2, 5.0]})
    assert [trace.name for trace in figure.data] == ["fresh", "reset"]
    assert list(figure.data[1].x) == [1, 2, 3]
    assert figure.layout.xaxis.type == "log"
