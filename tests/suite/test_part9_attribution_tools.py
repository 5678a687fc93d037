"""Part 9's machinery, part two: truth scores, predicted interventions, splicing, transcoder training, figures.

Each test builds a case whose answer is known by construction (a perfect letter detector, a graph with one
path, a dictionary that is the MLP itself, a linear map to learn) and holds the machinery to it.
"""

import math

import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from part_utils.attribution.build import build_graph
from part_utils.attribution.edge_stability import median_relative_spread, unit_effects
from part_utils.attribution.graph import AttributionGraph, Node
from part_utils.attribution.interventions import predicted_logit_change
from part_utils.attribution.nodes import Nodes, Target
from part_utils.attribution.splicing import spliced_mlp_loss
from part_utils.attribution.training import train_transcoder
from part_utils.attribution.transformer import run_and_record
from part_utils.attribution.truth import LetterMatch, letter_f1, match_letters, score_position
from part_utils.mirror import OUTPUT_POSITIONS, mirror_dataset
from part_utils.plotting.attribution import node_labels, plot_attribution_graph, plot_truth_scores
from part_utils.reference.part9_attribution_graphs import Transcoder, TranscoderConfig, attribute, replacement_forward
from tests.suite.part9_attribution_fixtures import (
    PromptSetup,
    assert_close,
    held_out_prompts,
    mirror_model,
    model_weights,
    prompt_setup,
)

KINDS = {"embedding", "error", "latent", "logit"}

# ---- truth.py ----------------------------------------------------------------------------------------------------


def test_a_perfect_letter_detector_scores_f1_one_and_is_matched_to_its_letter():
    generator = torch.Generator().manual_seed(0)
    n_prompts, n_pos, n_layers, d_latent = 260, 3, 2, 30
    letters = torch.stack([torch.randperm(n_prompts, generator=generator) % 26 for _ in range(n_pos)], dim=1)
    detects = [torch.randperm(26, generator=generator) for _ in range(n_layers)]  # latent j detects detects[l][j]
    fires = torch.rand(n_prompts, n_pos, n_layers, d_latent, generator=generator) < 0.5  # 26…29: noise
    for layer, letter_of in enumerate(detects):
        fires[:, :, layer, :26] = letters[..., None] == letter_of
    for layer, letter_of in enumerate(detects):
        f1 = letter_f1(fires[:, 0], letters[:, 0])[layer]  # [letter, d_latent]
        assert (f1[letter_of, torch.arange(26)] == 1).all()
        assert (f1 == 1).sum() == 26 and (f1[:, 26:] < 0.5).all()
    match = match_letters(fires, letters)
    assert match.latent.shape == match.f1.shape == (n_layers, n_pos, 26)
    for layer, letter_of in enumerate(detects):
        assert (match.latent[layer][:, letter_of] == torch.arange(26)).all()
        assert (match.f1[layer] == 1).all()


def one_path_graph(edge_from_output_embedding: float = 0.0) -> AttributionGraph:
    """Token at 1 → latent 7 (layer 0, position 4) → logit at 4; an embedding at 4 and an error node beside."""
    nodes = [
        Node("embedding", -1, 1, 10, 1.0),
        Node("embedding", -1, 4, 11, 1.0),
        Node("error", 0, 4, 0, 1.0),
        Node("latent", 0, 4, 7, 2.0),
        Node("logit", 2, 4, 12, 1.0),
    ]
    adjacency = torch.zeros(5, 5, dtype=torch.float64)
    adjacency[3, 0], adjacency[3, 1], adjacency[4, 3] = 1.5, edge_from_output_embedding, 2.0
    return AttributionGraph(nodes, adjacency)


def letter_match(layer: int, pos: int, letter: int, latent: int, f1: float) -> LetterMatch:
    match = LetterMatch(latent=torch.full((2, 9, 26), -1), f1=torch.zeros(2, 9, 26))
    match.latent[layer, pos, letter], match.f1[layer, pos, letter] = latent, f1
    return match


def test_score_position_on_a_graph_whose_only_path_is_the_truth():
    score = score_position(one_path_graph(), letter_match(0, 4, 3, latent=7, f1=0.9), 4, 1, letter=3)
    assert score.share == 1.0 and score.top_path_true and score.top_path_structural
    assert score.top_path == [4, 3, 0]
    # The same path, but the latent stands for another letter, or not well enough: structural only.
    for match in (letter_match(0, 4, 3, latent=8, f1=0.9), letter_match(0, 4, 3, latent=7, f1=0.4)):
        score = score_position(one_path_graph(), match, 4, 1, letter=3)
        assert score.share == 0.0 and not score.top_path_true and score.top_path_structural
    # A quarter of the latent's input comes from the output position's own token (a negative edge counts by size).
    score = score_position(one_path_graph(-0.5), letter_match(0, 4, 3, latent=7, f1=0.9), 4, 1, letter=3)
    assert abs(score.share - 0.75) < 1e-12 and score.top_path_true


# ---- interventions.py --------------------------------------------------------------------------------------------


def demeaned_change(change: Float[Tensor, "pos vocab"], pos: int, token: int) -> float:
    return (change[pos, token] - change[pos].mean()).item()


def predicted(setup: PromptSetup, edits: dict[tuple[int, int, int], float]) -> Float[Tensor, "pos vocab"]:
    return predicted_logit_change(
        replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes, edits
    )


def direct_edge(setup: PromptSetup, source: tuple[int, int, int], pos: int, token: int) -> float:
    args = (replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes)
    return attribute(*args, Target("logit", pos, token)).latents[source].item()


def test_a_latent_with_nothing_downstream_changes_the_logit_by_its_edge_per_unit():
    pos = 5
    for kind, layer in (("transcoder", 1), ("silent_layer_1", 0)):
        setup = prompt_setup(0, torch.float64, kind)
        token = int(setup.tokens[pos + 1])
        latent = setup.nodes.latents[layer, pos].nonzero()[0].item()
        activation = setup.nodes.latents[layer, pos, latent].item()
        per_unit = direct_edge(setup, (layer, pos, latent), pos, token) / activation
        for new_value in (0.0, 2.5 * activation):
            change = predicted(setup, {(layer, pos, latent): new_value})
            expected = (new_value - activation) * per_unit
            assert abs(demeaned_change(change, pos, token) - expected) < 1e-9, (kind, new_value)
            assert abs(expected) > 1e-4


def test_a_layer_0_edit_acts_through_every_active_layer_1_latent():
    """Change per unit of a = (edge(a→logit) + Σ_b edge(a→b) · edge(b→logit) / b's activation) / a's activation."""
    setup = prompt_setup(1, torch.float64)
    pos, token = 4, int(setup.tokens[5])
    logits = [(pos, token)]
    graph = build_graph(replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes, logits)
    logit = graph.index_of("logit", 2, pos, token)
    for latent in setup.nodes.latents[0, : pos + 1].nonzero()[:4].tolist():
        a = graph.index_of("latent", 0, *latent)
        through = sum(
            graph.adjacency[b, a] * graph.adjacency[logit, b] / node.activation
            for b, node in enumerate(graph.nodes)
            if node.kind == "latent" and node.layer == 1
        )
        change = predicted(setup, {(0, *latent): 0.0})  # a change of minus a's activation: minus the numerator
        assert abs(demeaned_change(change, pos, token) + (graph.adjacency[logit, a] + through).item()) < 1e-9, latent
        assert abs(through.item()) > 1e-6  # the downstream paths matter: the test would see them missing


def test_a_layer_1_edit_is_the_replacement_models_exact_change():
    setup = prompt_setup(2, torch.float64)
    on = setup.nodes.latents[1, 6].nonzero()[0].item()
    off = (setup.nodes.latents[1, 6] == 0).nonzero()[0].item()
    edits = {(1, 6, on): 0.0, (1, 6, off): 1.7, (1, 3, on): -0.4}
    latents = setup.nodes.latents.clone()
    for index, value in edits.items():
        latents[index] = value
    exact = setup.forward(Nodes(setup.nodes.embeddings, latents, setup.nodes.errors))[0] - setup.forward()[0]
    before = setup.nodes.latents.clone()
    change = predicted(setup, edits)
    assert_close(change, exact, 1e-12, "predicted vs exact change")
    assert change.abs().max() > 1e-3 and torch.equal(setup.nodes.latents, before)


# ---- splicing.py -------------------------------------------------------------------------------------------------


class NeuronDictionary:
    """The MLP itself as a dictionary: its neurons are the latents, so splicing it in changes nothing."""

    def __init__(self, shift: Float[Tensor, " d_model"] | None = None) -> None:
        self.weights = model_weights()
        self.shift = torch.zeros(64) if shift is None else shift

    def read(self, layer: int, mlp_in: Tensor) -> Tensor:
        return mlp_in @ self.weights.W_in[layer] + self.weights.b_in[layer]

    def activation(self, layer: int, pre: Tensor) -> Tensor:
        return F.relu(pre)

    def write(self, layer: int, acts: Tensor) -> Tensor:
        return acts @ self.weights.W_out[layer] + self.weights.b_out[layer] + self.shift


class IdentityDictionary:
    """Reads the MLP's output and writes it back unchanged."""

    def read(self, layer: int, mlp_out: Tensor) -> Tensor:
        return mlp_out

    def activation(self, layer: int, pre: Tensor) -> Tensor:
        return pre

    def write(self, layer: int, acts: Tensor) -> Tensor:
        return acts


def test_splicing_a_faithful_dictionary_gives_the_clean_loss():
    tokens = held_out_prompts()
    clean = mirror_model()(tokens, return_type="loss").item()
    for layer in range(2):
        for dictionary, reads in ((NeuronDictionary(), "input"), (IdentityDictionary(), "output")):
            spliced = spliced_mlp_loss(mirror_model(), tokens, layer, dictionary, reads=reads)
            assert abs(spliced - clean) < 1e-5, (layer, reads)
        # The splice does happen: a dictionary that writes a little off costs loss. (Not by the same amount in every
        # direction of the residual stream: LayerNorm would centre that away.)
        shift = 3.0 * torch.randn(64, generator=torch.Generator().manual_seed(layer))
        assert spliced_mlp_loss(mirror_model(), tokens, layer, NeuronDictionary(shift)) > clean + 1e-3


def test_splicing_a_constant_is_mean_ablation():
    tokens = held_out_prompts()
    weights = model_weights()
    recorded = [run_and_record(weights, prompt) for prompt in tokens]
    for layer in range(2):
        one_prompt = spliced_mlp_loss(mirror_model(), tokens[:1], layer, None, constant=recorded[0].mlp_out[layer])
        assert abs(one_prompt - mirror_model()(tokens[:1], return_type="loss").item()) < 1e-5
        mean = torch.stack([r.mlp_out[layer] for r in recorded]).mean(dim=0)
        losses = []
        for prompt, clean in zip(tokens, recorded):
            delta = torch.zeros_like(clean.mlp_out)
            delta[layer] = mean - clean.mlp_out[layer]
            logits = run_and_record(weights, prompt, mlp_out_delta=delta).logits
            losses.append(F.cross_entropy(logits[:-1], prompt[1:]))
        expected = torch.stack(losses).mean().item()
        assert abs(spliced_mlp_loss(mirror_model(), tokens, layer, None, constant=mean) - expected) < 1e-5


# ---- training.py -------------------------------------------------------------------------------------------------


def linear_map_data() -> tuple[Float[Tensor, "tokens 1 d_in"], Float[Tensor, "tokens 1 d_out"]]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(512, 1, 8, generator=generator)
    return inputs, inputs @ torch.randn(8, 8, generator=generator)


def trained(seed: int, steps: int = 201) -> tuple[list[float], dict[str, Tensor], Transcoder]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transcoder = Transcoder(TranscoderConfig(n_inst=1, d_in=8, d_out=8, d_latent=32, k=8))
    losses = train_transcoder(transcoder, *linear_map_data(), steps=steps, batch_size=64, lr=1e-2, seed=seed)
    return losses, transcoder.state_dict(), transcoder


def test_train_transcoder_learns_a_linear_map_deterministically():
    losses, state, transcoder = trained(seed=0)
    assert len(losses) == 3 and losses[-1] < 0.3 * losses[0], losses
    assert not transcoder.training
    again, state_again, _ = trained(seed=0)
    assert again == losses and all(torch.equal(state[name], state_again[name]) for name in state)
    assert trained(seed=1, steps=101)[0] != trained(seed=0, steps=101)[0]


def test_train_transcoder_refuses_unpaired_rows():
    transcoder = Transcoder(TranscoderConfig(n_inst=1, d_in=8, d_out=8, d_latent=16, k=2))
    for inputs, targets in (
        (torch.zeros(10, 1, 8), torch.zeros(9, 1, 8)),
        (torch.zeros(10, 2, 8), torch.zeros(10, 1, 8)),
    ):
        with pytest.raises(ValueError, match="must pair row by row"):
            train_transcoder(transcoder, inputs, targets, steps=1)


# ---- plotting/attribution.py -------------------------------------------------------------------------------------


def real_graph() -> tuple[AttributionGraph, LetterMatch]:
    """Prompt 0's graph, and a match that gives letter 'c' to the first layer-0 latent at position 4."""
    setup = prompt_setup(0, torch.float64)
    logits = [(pos, int(setup.tokens[pos + 1])) for pos in OUTPUT_POSITIONS]
    graph = build_graph(replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes, logits)
    latent = setup.nodes.latents[0, 4].nonzero()[0].item()
    return graph, letter_match(0, 4, 2, latent=latent, f1=0.8)


def marker_traces(figure: go.Figure) -> dict[str, go.Scatter]:
    """The node traces by kind; one trace per kind."""
    traces = [trace for trace in figure.data if trace.mode == "markers"]
    assert len({trace.name for trace in traces}) == len(traces)
    return {trace.name: trace for trace in traces}


def test_plot_attribution_graph_shows_each_kind_kept_with_its_labels():
    graph, match = real_graph()
    labels = node_labels(graph, match, mirror_dataset().tokenizer)
    assert len(labels) == len(graph.nodes) and "letter c (F1 0.80)" in "".join(labels)
    assert labels[0] == "token '<' at position 0"
    no_errors = ~graph.mask("error")
    for kept, kinds in ((torch.ones(len(graph.nodes), dtype=torch.bool), KINDS), (no_errors, KINDS - {"error"})):
        figure = plot_attribution_graph(graph, kept, labels)
        markers = marker_traces(figure)
        assert set(markers) == kinds
        for kind, trace in markers.items():
            members = [i for i, node in enumerate(graph.nodes) if node.kind == kind and kept[i]]
            assert list(trace.hovertext) == [labels[i] for i in members] and len(trace.x) == len(members)
        shown = kept.nonzero().flatten()
        n_edges = int((graph.adjacency[shown][:, shown] != 0).sum())
        assert len(figure.data) - len(markers) == min(n_edges, 300)
    clipped = plot_attribution_graph(graph, kept, labels, max_edges=5)
    assert len(clipped.data) - len(marker_traces(clipped)) == 5


def test_plot_truth_scores_averages_each_position_over_prompts_then_seeds():
    positions = (4, 5, 6)
    # Two prompts per seed, scored position by position: [prompt 0 at 4, 5, 6, prompt 1 at 4, 5, 6].
    truth = {
        (kind, seed): {
            "share": [0.1 * seed, 0.2, 0.3, 0.3 * seed, 0.4, 0.5],
            "top_path": [1.0, 0.0, float(kind == "sae"), 1.0, 1.0, 0.0],
        }
        for kind in ("transcoder", "sae")
        for seed in (1, 2)
    }
    figure = plot_truth_scores(truth, seeds=[1, 2], positions=positions)
    bars = [trace for trace in figure.data if trace.type == "bar"]
    assert [trace.name for trace in bars] == ["transcoder", "SAE on MLP output"] * 2
    share, top_path = bars[0], bars[3]
    assert list(share.x) == ["position 4", "position 5", "position 6"]
    assert share.y == pytest.approx([0.3, 0.3, 0.4])  # position 4: seeds 1 and 2 give 0.2 and 0.4
    assert share.error_y.array == pytest.approx([0.1 * 2**0.5, 0.0, 0.0])
    assert top_path.y == pytest.approx([1.0, 0.5, 0.5])


def test_edge_stability_collects_per_unit_effects_and_their_relative_spread():
    def graph(edge: float, activation: float) -> AttributionGraph:
        nodes = [
            Node("embedding", -1, 0, 3, 1.0),
            Node("latent", 0, 1, 7, activation),
            Node("latent", 1, 1, 2, 1.0),
            Node("latent", 1, 2, 5, 1.0),  # another position: never collected
        ]
        adjacency = torch.zeros(4, 4)
        adjacency[2, 1] = edge
        adjacency[3, 1] = 9.0
        return AttributionGraph(nodes, adjacency)

    effects = unit_effects(graph(2.0, 4.0))
    unit_effects(graph(3.0, 2.0), into=effects)
    assert dict(effects) == {(0, 7, 1, 2, 1): [0.5, 1.5]}
    assert median_relative_spread(effects, min_prompts=2) == pytest.approx(0.5)
    assert math.isnan(median_relative_spread(effects, min_prompts=3))
