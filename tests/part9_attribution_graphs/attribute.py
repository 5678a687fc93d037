"""Check of Exercise 4.1, `attribute`: the edges into one target, against a brute-force perturbation.

The learner's `attribute` gets the reference replacement forward pass. Frozen, that model is affine in its
nodes, so the edge from a source is exactly what the (demeaned) target loses when that source alone is
set to zero: one batched float64 run of the reference, one copy per source, gives every expected edge.
Targets: logits at two positions, active latents in both layers, and an inactive latent, whose
post-activation would pass no gradient; on a transcoder and on an SAE on the MLP's output.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from part_utils.attribution.nodes import Nodes, Target
from part_utils.reference import part9_attribution_graphs as reference
from tests.checking import CheckFailure, call_learner, check, expect_tensor, learner_function
from tests.part9_attribution_graphs._common import Prompt, first_fit, random_prompt, scaled_close

WHAT = "attribute"
EDGE_NAMES = ("embeddings", "latents", "errors")


def target_value(logits: Tensor, latent_pre: Tensor, target: Target, how: str = "demeaned") -> Tensor:
    """The target's value in each copy (leading axis of `logits` and after the layer axis of `latent_pre`)."""
    if target.kind == "logit":
        value = logits[..., target.pos, target.index]
        if how == "over positions":
            return value - logits[..., :, target.index].mean(dim=-1)
        return value if how == "raw" else value - logits[..., target.pos, :].mean(dim=-1)
    return latent_pre[0 if how == "layer 0" else target.layer, ..., target.pos, target.index]


def brute_force_edges(prompt: Prompt, nodes: Nodes, target: Target) -> dict[str, Tensor]:
    """Every edge as the target's value minus its value with that source alone zeroed (float64, exact)."""
    n_layers, n_pos, d_latent = nodes.latents.shape
    counts = (n_pos, n_layers * n_pos * d_latent, n_layers * n_pos)
    copies = sum(counts) + 1  # the last copy keeps every source
    embeddings = nodes.embeddings.expand(copies, -1, -1).clone()
    latents = nodes.latents[:, None].expand(-1, copies, -1, -1).clone()
    errors = nodes.errors[:, None].expand(-1, copies, -1, -1).clone()
    position = torch.arange(n_pos)
    embeddings[position, position] = 0.0
    j = torch.arange(counts[1])
    latents[j // (n_pos * d_latent), counts[0] + j, (j // d_latent) % n_pos, j % d_latent] = 0.0
    j = torch.arange(counts[2])
    errors[j // n_pos, counts[0] + counts[1] + j, j % n_pos] = 0.0
    with torch.no_grad():
        logits, latent_pre = reference.replacement_forward(
            prompt.weights, prompt.recorded, prompt.dictionary, Nodes(embeddings, latents, errors)
        )
    values = target_value(logits, latent_pre, target)
    embedding_edges, latent_edges, error_edges = (values[-1] - values[:-1]).split(counts)
    return {
        "embeddings": embedding_edges,
        "latents": latent_edges.reshape(n_layers, n_pos, d_latent),
        "errors": error_edges.reshape(n_layers, n_pos),
    }


def gradient_edges(prompt: Prompt, nodes: Nodes, target: Target, how: str, times_activation: bool) -> dict:
    """Edges by autograd in float64, from the target read as `how` says, with or without the source activation."""
    leaves = [getattr(nodes, name).clone().requires_grad_(True) for name in EDGE_NAMES]
    logits, latent_pre = reference.replacement_forward(
        prompt.weights, prompt.recorded, prompt.dictionary, Nodes(*leaves)
    )
    if how == "post":
        latent_pre = torch.stack([prompt.dictionary.activation(n, pre) for n, pre in enumerate(latent_pre)])
    value = target_value(logits, latent_pre, target, "demeaned" if how == "post" else how)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    edges = {}
    for name, leaf, grad in zip(EDGE_NAMES, leaves, grads):
        grad = torch.zeros_like(leaf) if grad is None else grad
        edge = leaf.detach() * grad if times_activation else grad
        edges[name] = edge if name == "latents" else edge.sum(-1)
    return edges


def _mistakes(prompt: Prompt, nodes: Nodes, target: Target, right: dict[str, Tensor]) -> list[tuple[str, dict]]:
    reads = [
        (
            "raw",
            "The logit target is the raw logit: take the logit minus the mean logit over the vocabulary, "
            "`logits[pos, index] - logits[pos].mean()`, since lifting every logit alike changes no probability.",
        )
    ]
    reads += [
        (
            "over positions",
            "The logit is demeaned over positions: subtract the mean over the vocabulary at "
            "its own position, `logits[pos].mean()`.",
        )
    ]
    if target.kind == "latent":
        reads = [
            (
                "post",
                "The latent target is read after `dictionary.activation` (TopK), which passes no gradient to a "
                "latent that is off: the target is the pre-activation, `latent_pre[layer, pos, index]`.",
            ),
            (
                "layer 0",
                "The latent target is read in layer 0 whatever its layer: use `latent_pre[target.layer, "
                "target.pos, target.index]`.",
            ),
        ]
    mistakes = [(message, gradient_edges(prompt, nodes, target, how, True)) for how, message in reads]
    mistakes += [
        (
            "The edges are the gradients alone: multiply each by its source's activation (`leaf.detach() * gradient`, "
            "summed over d_model for embeddings and errors).",
            gradient_edges(prompt, nodes, target, "demeaned", False),
        ),
        (
            "The edges have the wrong sign: an edge is the activation times the gradient, `+a_s · ∂t/∂a_s`.",
            {name: -edge for name, edge in right.items()},
        ),
        (
            "The error nodes' edges are all 0: error nodes are sources like the others (activation times gradient, "
            "summed over d_model).",
            {**right, "errors": torch.zeros_like(right["errors"])},
        ),
        (
            "The embeddings' edges are all 0: embeddings are sources like the others (activation times gradient, "
            "summed over d_model).",
            {**right, "embeddings": torch.zeros_like(right["embeddings"])},
        ),
    ]
    return mistakes


def _edges(result: object, nodes: Nodes) -> dict[str, Tensor]:
    """The learner's edges as float64 tensors, after naming a wrong type or a sum over the wrong axis."""
    if not all(hasattr(result, name) for name in EDGE_NAMES):
        raise CheckFailure(
            f"`{WHAT}` should return `Edges(embeddings=..., latents=..., errors=...)`, but returned "
            f"{type(result).__name__}."
        )
    n_layers, n_pos, d_latent = nodes.latents.shape
    d_model = nodes.embeddings.shape[-1]
    axes = {"embeddings": ("pos", (n_pos,)), "latents": ("layer, pos, d_latent", (n_layers, n_pos, d_latent))}
    axes["errors"] = ("layer, pos", (n_layers, n_pos))
    edges = {}
    for name, (names, shape) in axes.items():
        value = getattr(result, name)
        found = tuple(getattr(value, "shape", ()))
        if name != "latents" and found == (*shape, d_model):
            raise CheckFailure(f"`{WHAT}` returned {name} edges per d_model component: sum them over d_model.")
        if name != "latents" and found == (*shape[:-1], d_model):
            raise CheckFailure(f"`{WHAT}` summed the {name} edges over positions: sum over d_model (the last axis).")
        edges[name] = expect_tensor(value, shape, what=f"the {name} edges from {WHAT}", axes=names)
    return edges


def _check_target(function: Callable[..., object], prompt: Prompt, target: Target, where: str) -> None:
    in_float64 = prompt.in_float64()
    right = brute_force_edges(in_float64, in_float64.nodes, target)
    weights, recorded, dictionary, nodes = prompt.for_learner()
    result = call_learner(
        function, reference.replacement_forward, weights, recorded, dictionary, nodes, target, what=WHAT
    )
    actual = _edges(result, prompt.nodes)
    if scaled_close(actual, right):
        return
    fit = first_fit(actual, _mistakes(in_float64, in_float64.nodes, target, right))
    name = next(name for name in EDGE_NAMES if not scaled_close(actual[name], right[name]))
    message = fit or (
        f"the {name} edges do not match each source's activation times the target's gradient with respect to it (the "
        "target being the demeaned logit or the latent's pre-activation)."
    )
    raise CheckFailure(f"For {_named(target)}{where}: {message[0].lower()}{message[1:]}")


def _named(target: Target) -> str:
    if target.kind == "logit":
        return f"the logit of token {target.index} at position {target.pos}"
    return f"latent {target.index} of layer {target.layer} at position {target.pos}"


def _targets(prompt: Prompt) -> list[Target]:
    """Logits at two positions, an active latent in each layer, and a latent that is off, in layer 1."""
    latents, tokens = prompt.nodes.latents, prompt.recorded.tokens
    targets = [Target("logit", len(tokens) - 1, int(tokens[1])), Target("logit", 2, int(tokens[4]))]
    for layer in (1, 0):
        pos, index = (latents[layer] != 0).nonzero()[-1].tolist()
        targets.append(Target("latent", pos, index, layer))
    pos, index = (latents[1] == 0).nonzero()[len(tokens)].tolist()
    return [*targets, Target("latent", pos, index, 1)]


@check(WHAT)
def test_attribute(learner: object) -> str:
    function = learner_function(learner, WHAT)
    # Drawn before the learner's code runs.
    prompt = random_prompt()
    output_sae = random_prompt(output_sae=True)
    for target in _targets(prompt):
        _check_target(function, prompt, target, "")
    for target in _targets(output_sae)[::2]:
        _check_target(function, output_sae, target, " with an SAE on the MLP's output")
    return "edges into logits and latents, from embeddings, latents and error nodes, as a brute-force perturbation"
