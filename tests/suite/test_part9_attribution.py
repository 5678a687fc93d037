"""Part 9's machinery, part one: the recorded transformer, the replacement model, attribution and graphs.

Each test proves a property the notebook relies on: the plain-torch transformer is TransformerLens's, the
replacement model is exact on its prompt and affine in its nodes (edges plus biases add up, one node's edge
is what removing it changes, nothing flows backwards), batched attribution is the loop, and the graph
arithmetic (normalisation, shares through a set of nodes, the top path) is what its definitions say.
"""

import itertools
import math

import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from part_utils.attribution.build import attribute_all, build_graph
from part_utils.attribution.graph import Node, normalized_adjacency, share_through, top_path
from part_utils.attribution.nodes import Edges, Nodes, Target
from part_utils.attribution.transformer import run_and_record
from part_utils.mirror import OUTPUT_POSITIONS
from part_utils.reference.part9_attribution_graphs import attribute, replacement_forward
from tests.suite.part9_attribution_fixtures import (
    PromptSetup,
    assert_close,
    held_out_prompts,
    mirror_model,
    model_weights,
    prompt_setup,
    zero_nodes,
)

LAYER_HOOKS = {
    "patterns": "blocks.{}.attn.hook_pattern",
    "ln1_scale": "blocks.{}.ln1.hook_scale",
    "ln2_scale": "blocks.{}.ln2.hook_scale",
    "mlp_in": "blocks.{}.mlp.hook_in",
    "mlp_pre": "blocks.{}.mlp.hook_pre",
    "mlp_out": "blocks.{}.hook_mlp_out",
}
DICTIONARY_KINDS = ["transcoder", "mlp_output_sae"]


def test_run_and_record_reproduces_the_bridge_cache():
    prompts = held_out_prompts()
    logits, cache = mirror_model().run_with_cache(prompts)
    for i, tokens in enumerate(prompts):
        recorded = run_and_record(model_weights(), tokens)
        expected = {
            name: torch.stack([cache[hook.format(layer)][i] for layer in range(2)])
            for name, hook in LAYER_HOOKS.items()
        }
        expected["ln1_scale"], expected["ln2_scale"] = expected["ln1_scale"][..., 0], expected["ln2_scale"][..., 0]
        expected["ln_final_scale"] = cache["ln_final.hook_scale"][i, :, 0]
        expected["embeddings"] = cache["blocks.0.hook_resid_pre"][i]
        expected["logits"] = logits[i]
        assert torch.equal(recorded.tokens, tokens)
        for name, value in expected.items():
            assert_close(getattr(recorded, name), value, 1e-5, f"prompt {i}, {name}")


def test_run_and_record_applies_an_mlp_output_delta_as_the_bridge_hook_does():
    tokens = held_out_prompts()[1]
    delta = 0.3 * torch.randn(2, len(tokens), 64, generator=torch.Generator().manual_seed(0))

    def add_delta(layer: int):
        return lambda act, hook: act + delta[layer]

    hooks = [(f"blocks.{layer}.hook_mlp_out", add_delta(layer)) for layer in range(2)]
    expected = mirror_model().run_with_hooks(tokens[None], fwd_hooks=hooks)[0]
    recorded = run_and_record(model_weights(), tokens, mlp_out_delta=delta)
    assert_close(recorded.logits, expected, 1e-5, "logits with the delta")
    assert (recorded.logits - run_and_record(model_weights(), tokens).logits).abs().max() > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("kind", DICTIONARY_KINDS)
def test_replacement_forward_reproduces_the_logits(kind: str, dtype: torch.dtype):
    model_logits = mirror_model()(held_out_prompts())
    for i in range(len(held_out_prompts())):
        setup = prompt_setup(i, dtype, kind)
        logits, latent_pre = setup.forward()
        assert logits.dtype == dtype and latent_pre.dtype == dtype
        assert_close(logits, model_logits[i], 1e-5, f"prompt {i}: replacement vs model logits")
        reads = torch.stack([setup.dictionary.read(layer, setup.recorded.mlp_in[layer]) for layer in range(2)])
        assert_close(latent_pre, reads, 1e-5, f"prompt {i}: latent pre-activations vs the recorded MLP inputs")
        # The dictionary is random: the error nodes do real work, so the agreement is not vacuous.
        assert setup.nodes.errors.abs().max() > 0.1 and (setup.nodes.latents != 0).any()


def test_an_mlp_output_sae_reads_the_mlp_output_on_its_own_prompt():
    """Read through the MLP with the prompt's ReLU pattern frozen: at that prompt, the SAE's encoder on the output."""
    setup = prompt_setup(1, torch.float64, "mlp_output_sae")
    sae = setup.dictionary.sae
    for layer in range(2):
        on_output = setup.recorded.mlp_out[layer] @ sae.W_enc[layer] + sae.b_enc[layer]
        assert_close(setup.dictionary.read(layer, setup.recorded.mlp_in[layer]), on_output, 1e-10, f"layer {layer}")


def edge_targets(setup: PromptSetup) -> list[Target]:
    """The logits at the output positions, and the first active latent of each layer at positions 3 and 6."""
    targets = [Target("logit", pos, int(setup.tokens[pos + 1])) for pos in OUTPUT_POSITIONS]
    for layer, pos in itertools.product(range(2), (3, 6)):
        latent = setup.nodes.latents[layer, pos].nonzero()[0].item()
        targets.append(Target("latent", pos, latent, layer))
    return targets


def target_value(setup: PromptSetup, nodes: Nodes, target: Target) -> float:
    """The target as `attribute` reads it: the demeaned logit, or the latent's pre-activation."""
    logits, latent_pre = setup.forward(nodes)
    if target.kind == "logit":
        return (logits[target.pos, target.index] - logits[target.pos].mean()).item()
    return latent_pre[target.layer, target.pos, target.index].item()


@pytest.mark.parametrize("kind", DICTIONARY_KINDS)
def test_edges_plus_biases_add_up_to_the_target(kind: str):
    setup = prompt_setup(0, torch.float64, kind)
    for target in edge_targets(setup):
        edges = attribute(replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes, target)
        bias_only = target_value(setup, zero_nodes(setup.nodes), target)
        value = target_value(setup, setup.nodes, target)
        assert abs(edges.total().item() + bias_only - value) < 1e-9, target
        assert abs(edges.total().item()) > 1e-3, target


def without(nodes: Nodes, kind: str, index: tuple[int, ...]) -> Nodes:
    """The nodes with one source (an embedding, a latent, or an error vector) scaled by 0."""
    tensors = {"embeddings": nodes.embeddings.clone(), "latents": nodes.latents.clone(), "errors": nodes.errors.clone()}
    tensors[kind][index] = 0
    return Nodes(**tensors)


@pytest.mark.parametrize("kind", DICTIONARY_KINDS)
def test_an_edge_is_what_removing_its_source_changes(kind: str):
    setup = prompt_setup(1, torch.float64, kind)
    active = setup.nodes.latents.nonzero().tolist()
    sources = [("latents", tuple(index)) for index in active[:: max(len(active) // 8, 1)]]
    sources += [("embeddings", (2,)), ("embeddings", (5,)), ("errors", (0, 3)), ("errors", (0, 6)), ("errors", (1, 4))]
    for target in edge_targets(setup):
        edges = attribute(replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes, target)
        value = target_value(setup, setup.nodes, target)
        for source, index in sources:
            removed = value - target_value(setup, without(setup.nodes, source, index), target)
            assert abs(getattr(edges, source)[index].item() - removed) < 1e-9, (target, source, index)


@pytest.mark.parametrize("kind", DICTIONARY_KINDS)
def test_attribute_all_equals_a_loop_of_attribute(kind: str):
    setup = prompt_setup(2, torch.float64, kind)
    targets = edge_targets(setup)[::-1]  # logits and latents interleaved out of order
    args = (replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes)
    batched = attribute_all(*args, targets)
    for i, target in enumerate(targets):
        looped = attribute(*args, target)
        for part in ("embeddings", "latents", "errors"):
            assert_close(getattr(batched, part)[i], getattr(looped, part), 1e-10, f"{target}: {part}")


def test_no_edge_runs_backwards():
    """Into a layer-0 latent: nothing from its own layer or later, nor from later positions (causal attention)."""
    setup = prompt_setup(3, torch.float64)
    pos = 4
    latent = setup.nodes.latents[0, pos].nonzero()[0].item()
    target = Target("latent", pos, latent, 0)
    args = (replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes)
    single, batched = attribute(*args, target), attribute_all(*args, [Target("logit", 6, 0), target])
    for latents, errors, embeddings in (
        (single.latents, single.errors, single.embeddings),
        (batched.latents[1], batched.errors[1], batched.embeddings[1]),
    ):
        assert (latents == 0).all() and (errors == 0).all()
        assert (embeddings[pos + 1 :] == 0).all() and (embeddings[: pos + 1] != 0).all()
    logit_edges = attribute(*args, Target("logit", pos, int(setup.tokens[pos + 1])))
    assert (logit_edges.latents[:, pos + 1 :] == 0).all() and (logit_edges.errors[:, pos + 1 :] == 0).all()
    assert (logit_edges.latents[:, : pos + 1] != 0).any()


def random_dag(seed: int, n: int = 8, n_inputs: int = 2, density: float = 0.6) -> Float[Tensor, "target source"]:
    """Signed edges from lower to higher nodes only; the first `n_inputs` nodes receive nothing."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(n, n, generator=generator, dtype=torch.float64)
    present = torch.rand(n, n, generator=generator) < density
    adjacency = (weights * present).tril(-1)
    adjacency[:n_inputs] = 0
    return adjacency


def test_normalized_adjacency_rows_sum_to_one_or_zero():
    adjacency = random_dag(0)
    normalized = normalized_adjacency(adjacency)
    sums = normalized.sum(dim=1)
    has_edges = adjacency.abs().sum(dim=1) > 0
    assert has_edges.any() and not has_edges.all()
    assert torch.allclose(sums[has_edges], torch.ones(int(has_edges.sum()), dtype=sums.dtype))
    assert (sums[~has_edges] == 0).all() and (normalized >= 0).all()
    assert torch.allclose(normalized * adjacency.abs().sum(dim=1, keepdim=True), adjacency.abs())


def enumerated_share(normalized: Tensor, target: int, source: int, via: list[int]) -> float:
    """Sum over every path target → v₁ → … → v_k → source (k ≥ 1, distinct vᵢ in `via`) of its edge product."""
    total = 0.0
    for length in range(1, len(via) + 1):
        for path in itertools.permutations(via, length):
            hops = zip((target, *path), (*path, source))
            total += math.prod(normalized[to, frm].item() for to, frm in hops)
    return total


@pytest.mark.parametrize("seed", range(4))
def test_share_through_equals_the_sum_over_enumerated_paths(seed: int):
    normalized = normalized_adjacency(random_dag(seed))
    generator = torch.Generator().manual_seed(100 + seed)
    target, source = 7, 0
    for _ in range(5):
        via = [node for node in range(1, 7) if torch.rand(1, generator=generator).item() < 0.6]
        expected = enumerated_share(normalized, target, source, via)
        actual = share_through(normalized, target, source, torch.tensor(via, dtype=torch.long))
        assert actual == pytest.approx(expected, abs=1e-12), via
    everything = enumerated_share(normalized, target, source, list(range(1, 7)))
    assert everything > 0


def paths_to_inputs(normalized: Tensor, node: int) -> list[list[int]]:
    """Every path from `node` back along nonzero edges until a node with no incoming edge."""
    sources = normalized[node].nonzero().flatten().tolist()
    if not sources:
        return [[node]]
    return [[node, *rest] for source in sources for rest in paths_to_inputs(normalized, source)]


def test_top_path_is_the_best_enumerated_path():
    greedy_misses = 0  # targets where always taking the strongest edge is not the best path: the test has teeth
    for seed in range(6):
        normalized = normalized_adjacency(random_dag(seed, n=10, n_inputs=2, density=0.4))
        for target in range(len(normalized)):
            paths = paths_to_inputs(normalized, target)
            strength = [math.prod(normalized[to, frm].item() for to, frm in itertools.pairwise(path)) for path in paths]
            best = paths[max(range(len(paths)), key=strength.__getitem__)]
            assert top_path(normalized, target) == best, (seed, target)
            greedy = [target]
            while normalized[greedy[-1]].any():
                greedy.append(normalized[greedy[-1]].argmax().item())
            greedy_misses += greedy != best
    assert greedy_misses > 0


def test_build_graph_is_topological_and_its_rows_are_the_edges():
    setup = prompt_setup(0, torch.float64)
    logits = [(pos, int(setup.tokens[pos + 1])) for pos in OUTPUT_POSITIONS]
    args = (replacement_forward, setup.weights, setup.recorded, setup.dictionary, setup.nodes)
    graph = build_graph(*args, logits)
    target_index, source_index = graph.adjacency.nonzero().unbind(dim=1)
    assert len(target_index) > 100 and (source_index < target_index).all()
    assert graph.adjacency[graph.mask("embedding") | graph.mask("error")].eq(0).all()
    assert graph.adjacency[:, graph.mask("logit")].eq(0).all()
    latents = [node for node in graph.nodes if node.kind == "latent"]
    assert [(n.layer, n.pos, n.index) for n in latents] == [tuple(i) for i in setup.nodes.latents.nonzero().tolist()]
    assert all(n.activation == setup.nodes.latents[n.layer, n.pos, n.index].item() for n in latents)
    last = latents[-1]
    for row in (
        graph.index_of("logit", 2, 5, logits[1][1]),
        graph.index_of("latent", last.layer, last.pos, last.index),
    ):
        node = graph.nodes[row]
        target = Target(node.kind, node.pos, node.index, 0 if node.kind == "logit" else node.layer)
        edges = attribute(*args, target)
        expected = [edge_from(edges, source) for source in graph.nodes]
        assert graph.adjacency[row].tolist() == pytest.approx(expected, abs=1e-10), node


def edge_from(edges: Edges, source: Node) -> float:
    """The edge out of one graph node, read from `attribute`'s edges (0 out of a logit)."""
    if source.kind == "embedding":
        return edges.embeddings[source.pos].item()
    if source.kind == "error":
        return edges.errors[source.layer, source.pos].item()
    if source.kind == "latent":
        return edges.latents[source.layer, source.pos, source.index].item()
    return 0.0
