"""Part 8's helpers: the feature tree, the splitting census, the reference's data and Matryoshka
configuration, and the figures (structure, shapes named in errors, animations paused at frame 0)."""

import pytest
import torch

from part_utils.hierarchy import (
    child_index,
    count_child_latents,
    decompose_latents,
    feature_labels,
    latent_order,
    parent_of_feature,
    splitting_census,
    tree_order,
)
from part_utils.plotting.absorption import (
    animate_absorption,
    plot_absorption_by_parent,
    plot_cooccurrence,
    plot_decoder_decomposition,
    plot_decoder_heatmaps,
    plot_parent_latent_firing,
)
from part_utils.reference import part8_feature_absorption as reference

P, C = 2, 3  # 2 parents of 3 children: features P0, P1, P0.c0 .. P0.c2, P1.c0 .. P1.c2


def test_the_tree_layout_labels_and_order_agree():
    labels = feature_labels(P, C)
    assert labels[:2] == ["P0", "P1"] and labels[child_index(1, 2, P, C)] == "P1.c2"
    assert [labels[i] for i in tree_order(P, C)] == ["P0", "P0.c0", "P0.c1", "P0.c2", "P1", "P1.c0", "P1.c1", "P1.c2"]
    assert parent_of_feature(P, C).tolist() == [0, 1, 0, 0, 0, 1, 1, 1]


def test_latents_are_ordered_by_their_best_feature_in_tree_order():
    cosine = torch.zeros(4, P * (1 + C))
    cosine[0, child_index(1, 0, P, C)] = 0.9  # P1.c0
    cosine[1, 0] = 0.8  # P0
    cosine[2, 1] = 0.7  # P1
    cosine[3, 0] = 0.95  # P0, a better match than latent 1
    assert latent_order(cosine, P, C) == [3, 1, 2, 0]


def test_decomposition_places_latents_in_their_family_and_counts_carriers():
    cosine = torch.zeros(4, P * (1 + C))
    cosine[0, [1, child_index(1, 2, P, C)]] = torch.tensor([0.6, 0.8])  # absorbing child of parent 1
    cosine[1, [0, child_index(0, 0, P, C)]] = torch.tensor([-0.2, 0.95])  # clean child of parent 0
    cosine[2, 0] = 0.9  # parent 0
    cosine[3, child_index(1, 1, P, C)] = 0.5  # dead
    points = decompose_latents(cosine, torch.tensor([True, True, True, False]), P, C)
    assert points["latent"] == [0, 1, 2] and points["family"] == [1, 0, 0]
    assert points["x"] == [0.8, 0.95, 0.0] and points["y"] == [0.6, -0.2, 0.9]
    assert points["parent_best"] == [False, False, True] and points["label"] == ["P1.c2", "P0.c0", "P0"]
    assert count_child_latents(points) == (1, 1)


def test_splitting_census_counts_latents_of_one_family_and_mixed_ones():
    cosine = torch.zeros(1, 5, P * (1 + C))
    cosine[0, 0, 0] = 1.0  # parent 0's own latent
    cosine[0, 1, [0, child_index(0, 1, P, C)]] = torch.tensor([0.6, 0.8])  # a child latent carrying parent 0
    cosine[0, 2, [0, 1]] = torch.tensor([0.6, 0.4])  # mixes the two families
    cosine[0, 3, 1] = 0.9  # parent 1's latent, but dead
    cosine[0, 4, 1] = 0.2  # carries nothing
    live = torch.tensor([[True, True, True, False, True]])
    census = splitting_census(cosine, live, P)
    assert census["latents_per_parent"].tolist() == [1.0]  # (2 + 0) / 2 parents
    assert census["mixed_latents"].tolist() == [1.0]


def test_family_presence_and_only_child_follow_the_layout():
    features = torch.zeros(1, 1, P * (1 + C))
    features[0, 0, [0, child_index(0, 2, P, C), 1, child_index(1, 0, P, C)]] = 1.0
    parent_on, child_on = reference.family_presence(features, P)
    assert parent_on.tolist() == [[[True, True]]]
    assert child_on.tolist() == [[[[False, False, True], [True, False, False]]]]
    kept = reference.only_child(features, P, 2)
    assert kept[0, 0].nonzero().flatten().tolist() == [0, 1, child_index(0, 2, P, C)]


def test_hierarchical_data_shares_orthonormal_or_unit_directions_across_instances():
    orthogonal = reference.HierarchicalToyData(reference.HierarchyConfig(n_inst=3))
    W = orthogonal.W
    assert W.shape == (3, 20, 20) and torch.equal(W[0], W[2])
    assert torch.allclose(W[0].T @ W[0], torch.eye(20), atol=1e-5)
    superposed = reference.HierarchicalToyData(reference.HierarchyConfig(n_inst=2, d_hidden=14))
    assert superposed.W.shape == (2, 14, 20) and torch.allclose(superposed.W.norm(dim=1), torch.ones(2, 20), atol=1e-5)


@pytest.mark.parametrize(
    ("first", "d_sae", "sizes"),
    [
        (5, 40, [5, 10, 20, 40]),
        (5, 20, [5, 10, 20]),
        (5, 80, [5, 10, 20, 40, 80]),
        (5, 30, [5, 10, 20, 30]),
        (8, 5, [5]),
    ],
)
def test_doubling_prefixes(first, d_sae, sizes):
    assert reference.doubling_prefixes(first, d_sae) == sizes


def test_matryoshka_config_defaults_to_one_prefix_and_refuses_bad_sizes():
    assert reference.MatryoshkaToySAEConfig(n_inst=1, d_in=4, d_sae=6).prefix_sizes == [6]
    for sizes in ([2, 2, 6], [3, 2, 6], [2, 4], [0, 6]):
        with pytest.raises(ValueError, match="prefix_sizes must increase strictly"):
            reference.MatryoshkaToySAEConfig(n_inst=1, d_in=4, d_sae=6, prefix_sizes=sizes)


def test_matryoshka_with_one_prefix_is_batch_topk():
    torch.manual_seed(0)
    data = reference.HierarchicalToyData(reference.HierarchyConfig(n_inst=2, n_parents=2, n_children=1, d_hidden=4))
    cfg = reference.MatryoshkaToySAEConfig(n_inst=2, d_in=4, d_sae=6, k=[1.5, 2.0])
    matryoshka = reference.MatryoshkaToySAE(cfg, data)
    batch_topk = reference.BatchTopKToySAE(cfg, data)
    batch_topk.load_state_dict(matryoshka.state_dict())
    h = torch.randn(16, 2, 4)
    ours, theirs = matryoshka(h), batch_topk(h)
    assert torch.allclose(ours[0]["L_matryoshka"], theirs[0]["L_reconstruction"]) and torch.allclose(ours[1], theirs[1])


def test_absorption_report_sees_a_fully_absorbed_parent():
    """An SAE-like module whose child latent writes parent + child and whose parent latent fires only alone."""
    data = reference.HierarchicalToyData(reference.HierarchyConfig(n_inst=1, n_parents=1, n_children=1, d_hidden=2))

    class Absorbing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = data
            directions = data.feature_directions[0]  # [feats, d]: parent, child
            self.W_dec_normalized = torch.stack(
                [directions[0], torch.nn.functional.normalize(directions[0] + directions[1], dim=0)]
            )[None]

        def encode(self, h):
            parent, child = (h @ self.model.feature_directions[0].T).unbind(-1)
            has_child = child > 0.5
            return torch.stack([parent * ~has_child, (parent + child) * has_child], dim=-1).clamp_min(0)

    features = torch.zeros(8, 1, 2)
    features[:, 0, 0] = 1.0
    features[4:, 0, 1] = 1.0
    report = reference.absorption_report(Absorbing(), features)
    assert report["parent_latent"].tolist() == [[0]]
    assert (
        report["absorption"].tolist() == [[1.0]]
        and report["fires_alone"].tolist() == [[1.0]]
        and report["fires_with_child"].tolist() == [[0.0]]
    )


# figures --------------------------------------------------------------------------------------


def _panel(d_sae: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(d_sae)
    return torch.rand(d_sae, P * (1 + C)) * 2 - 1, torch.tensor([True] * (d_sae - 1) + [False])


def test_cooccurrence_is_conditional_and_in_tree_order():
    features = torch.zeros(4, P * (1 + C))
    features[:, 0] = 1.0
    features[:2, child_index(0, 1, P, C)] = 1.0
    figure = plot_cooccurrence(features, P, C)
    z, names = figure.data[0].z, list(figure.data[0].x)
    assert names[:3] == ["P0", "P0.c0", "P0.c1"]
    assert z[names.index("P0.c1")][names.index("P0")] == 1.0 and z[names.index("P0")][names.index("P0.c1")] == 0.5


def test_cooccurrence_names_a_wrong_shape():
    with pytest.raises(ValueError, match=r"plot_cooccurrence: `features` must have shape \[batch, feats=8\]"):
        plot_cooccurrence(torch.zeros(3, 5), P, C)


def test_decomposition_draws_one_point_per_live_latent_and_a_legend():
    figure = plot_decoder_decomposition({"a": _panel(), "b": _panel(7)}, P, C)
    points = sum(len(trace.x) for trace in figure.data if trace.mode == "markers" and trace.x[0] is not None)
    assert points == 5 + 6
    assert {trace.name for trace in figure.data if trace.showlegend is not False} >= {
        "family P0",
        "best match: the parent",
    }


def test_bar_figures_have_a_bar_per_parent():
    firing = plot_parent_latent_firing({"x": (torch.tensor([1.0, 0.9]), torch.tensor([0.2, 0.5]))})
    assert [len(bar.y) for bar in firing.data] == [2, 2]
    rates = plot_absorption_by_parent({"x": torch.tensor([0.1, 0.3]), "y": torch.tensor([0.0, 0.2])})
    assert [bar.name for bar in rates.data] == ["x (mean 0.20)", "y (mean 0.10)"]


def test_heatmaps_show_live_latents_against_features_in_tree_order():
    panels = {(name, width): _panel(width) for name in ("A", "B") for width in (4, 8)}
    figure = plot_decoder_heatmaps(panels, P, C)
    assert len(figure.data) == 4 and all(len(trace.x) == width - 1 for trace, width in zip(figure.data, (4, 8, 4, 8)))
    assert list(figure.data[0].y)[:2] == ["P0", "P0.c0"]


def test_absorption_animation_starts_paused_at_its_first_frame():
    frames = [(*_panel(), torch.tensor([0.1 * step, 0.2])) for step in range(3)]
    figure = animate_absorption({"a": frames, "b": frames}, [0, 25, 50], P, C)
    assert len(figure.frames) == 3 and figure.layout.sliders[0].active == 0
    with pytest.raises(ValueError, match="one \\(cosine, live, absorption\\) frame per step"):
        animate_absorption({"a": frames[:2]}, [0, 25, 50], P, C)
