"""Check of Exercise 3.1, `replacement_forward`: values and gradients against a float64 replacement model.

On random weights, for the prompt's own nodes (where the logits must be the model's own), for other nodes,
for an SAE on the MLP's output, and for nodes with an extra leading axis, as `attribute_all` runs it. The
gradients (vector-Jacobian products with respect to the three node tensors) tell a LayerNorm scale or an
attention pattern recomputed from the residual stream from a frozen one.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from part_utils.attribution.nodes import Nodes
from tests.checking import (
    CheckFailure,
    NotImplementedYet,
    call_learner,
    check,
    expect_tensor,
    handed_in,
    learner_function,
)
from tests.part9_attribution_graphs._common import Prompt, first_fit, prefixed, random_prompt, scaled_close
from tests.part9_attribution_graphs._replacement_model import (
    NODE_NAMES,
    VARIANT_MISTAKES,
    outputs,
    replacement_model,
    upstream_for,
)

WHAT = "replacement_forward"
N_COPIES = 3
BATCH_AXES = (
    "nodes with an extra leading axis (embeddings [copies, pos, d_model], latents [layer, copies, pos, d_latent], "
    "errors [layer, copies, pos, d_model]), as `attribute_all` runs it in section 4"
)
GRADIENT_ADVICE = (
    "something on the way from the nodes to the outputs is detached (.detach(), torch.no_grad()) or recomputed from "
    "the residual stream: with the recorded scales and patterns, the outputs are one fixed linear function of the "
    "nodes, plus biases."
)


def perturbed(nodes: Nodes, scale: float = 1.0) -> Nodes:
    """Other nodes for the same prompt: embeddings and errors moved, other latents switched on."""
    latents = nodes.latents + torch.rand(nodes.latents.shape) * (torch.rand(nodes.latents.shape) < 0.2) * 2 * scale
    return Nodes(
        nodes.embeddings + 0.5 * scale * torch.randn(nodes.embeddings.shape),
        latents,
        nodes.errors + 0.3 * scale * torch.randn(nodes.errors.shape),
    )


def batched(nodes: Nodes) -> Nodes:
    """`N_COPIES` different copies of the nodes along a new axis after the layer axis, as in `attribute_all`."""
    copies = [perturbed(nodes, scale) for scale in torch.linspace(0.0, 1.0, N_COPIES).tolist()]
    return Nodes(
        torch.stack([c.embeddings for c in copies]),
        torch.stack([c.latents for c in copies], dim=1),
        torch.stack([c.errors for c in copies], dim=1),
    )


def _two_outputs(result: object, prompt: Prompt, copies: int | None) -> dict[str, Tensor]:
    """The learner's (logits, latent_pre) as float64 tensors, after naming a wrong type or shape."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailure(
            f"`{WHAT}` should return two things, (logits [pos, vocab], latent_pre [layer, pos, d_latent]), but "
            f"returned {type(result).__name__}."
        )
    logits, latent_pre = result
    if isinstance(latent_pre, (list, tuple)):
        raise CheckFailure(
            f"`{WHAT}` returned the latent pre-activations as a {type(latent_pre).__name__}: stack them over layers "
            "into one tensor [layer, pos, d_latent] (torch.stack)."
        )
    n_pos, vocab = prompt.recorded.logits.shape
    n_layers, _, d_latent = prompt.nodes.latents.shape
    batch, copies_axis = ((), "") if copies is None else ((copies,), "copies, ")
    return {
        "logits": expect_tensor(
            logits, (*batch, n_pos, vocab), what=f"the logits from {WHAT}", axes=f"{copies_axis}pos, vocab"
        ),
        "latent_pre": expect_tensor(
            latent_pre,
            (n_layers, *batch, n_pos, d_latent),
            what=f"latent_pre from {WHAT}",
            axes=f"layer, {copies_axis}pos, d_latent",
        ),
    }


def _variant_outputs(
    prompt: Prompt, nodes: Nodes, upstream: tuple[Tensor, Tensor]
) -> list[tuple[str, dict[str, Tensor]]]:
    return [
        (message, outputs(lambda n, v=v: replacement_model(prompt, n, v), nodes, upstream))
        for message, v in VARIANT_MISTAKES
    ]


def _values_failure(values: dict[str, Tensor], expected: dict[str, Tensor], own_nodes: bool) -> str:
    if not scaled_close(values["logits"], expected["logits"]):
        if own_nodes:
            return (
                "Fed the prompt's own nodes, the logits differ from the model's own (`run_and_record`'s): follow the "
                "exercise's steps, each LayerNorm with its recorded scale, attention with the recorded pattern, the "
                "dictionary's write plus the error nodes in the MLP's place, the final LayerNorm, W_U and b_U."
            )
        return (
            "The logits do not match the replacement model's on nodes other than the prompt's own: the outputs must "
            "be computed from `nodes` (embeddings, latents through `dictionary.write`, errors), not from what was "
            "recorded."
        )
    return (
        "The logits are right, but the latent pre-activations are not: they are `dictionary.read(layer, mlp_in)`, with "
        "mlp_in ln2 of the residual stream after attention, stacked over layers."
    )


def _check_case(function: Callable[..., object], prompt: Prompt, nodes: Nodes, description: str | None) -> None:
    """Values, then gradients with respect to the nodes, against the float64 model and its misreadings."""
    in_float64 = prompt.in_float64()
    upstream = upstream_for(in_float64, 11)
    expected = outputs(lambda n: replacement_model(in_float64, n), nodes, upstream)
    weights, recorded, dictionary, _ = prompt.for_learner()
    leaves = {name: handed_in(getattr(nodes, name)) for name in NODE_NAMES}
    learner_nodes = Nodes(*(leaves[name][1] for name in NODE_NAMES))
    result = call_learner(function, weights, recorded, dictionary, learner_nodes, what=WHAT)
    values = _two_outputs(result, prompt, None)
    value_keys = ("logits", "latent_pre")
    if not scaled_close(values, {key: expected[key] for key in value_keys}):
        wrong = _variant_outputs(in_float64, nodes, upstream)
        fit = first_fit(values, [(message, {key: w[key] for key in value_keys}) for message, w in wrong])
        raise CheckFailure(prefixed(description, fit or _values_failure(values, expected, description is None)))
    logits, latent_pre = result
    if not (logits.requires_grad or latent_pre.requires_grad):
        raise CheckFailure(
            f"The outputs of `{WHAT}` carry no gradient back to the nodes (torch.no_grad(), .detach() or a detour "
            "through NumPy): the next exercise attributes by backpropagating through it."
        )
    total = sum((output * u.to(output.dtype)).sum() for output, u in zip((logits, latent_pre), upstream))
    grads = torch.autograd.grad(total, [leaf for leaf, _ in leaves.values()], allow_unused=True)
    actual = {
        name: torch.zeros_like(leaves[name][0], dtype=torch.float64) if g is None else g.detach().double()
        for name, g in zip(NODE_NAMES, grads)
    }
    if scaled_close(actual, {name: expected[name] for name in NODE_NAMES}):
        return
    wrong = _variant_outputs(in_float64, nodes, upstream)
    fit = first_fit({**values, **actual}, wrong)
    name = next(name for name in NODE_NAMES if not scaled_close(actual[name], expected[name]))
    otherwise = f"The values are right, but the gradients with respect to `nodes.{name}` are not: {GRADIENT_ADVICE}"
    raise CheckFailure(prefixed(description, fit or otherwise))


def _check_batched(function: Callable[..., object], prompt: Prompt) -> None:
    nodes = batched(prompt.nodes)
    expected = replacement_model(prompt.in_float64(), Nodes(*(getattr(nodes, n).double() for n in NODE_NAMES)))
    weights, recorded, dictionary, _ = prompt.for_learner()
    learner_nodes = Nodes(*(getattr(nodes, name).clone() for name in NODE_NAMES))
    try:
        result = call_learner(function, weights, recorded, dictionary, learner_nodes, what=WHAT)
        values = _two_outputs(result, prompt, N_COPIES)
    except NotImplementedYet:
        raise
    except CheckFailure as failure:
        raise CheckFailure(
            f"`{WHAT}` is right on one prompt's nodes but fails on {BATCH_AXES}: write every step for any leading "
            f"axes (`...` in einsum, the layer axis indexed first, as in `nodes.latents[layer]`). There: {failure}"
        ) from failure.__cause__
    if not scaled_close(values, {"logits": expected[0], "latent_pre": expected[1]}):
        raise CheckFailure(
            f"`{WHAT}` is right on one prompt's nodes but not on {BATCH_AXES}: each copy's outputs must be what the "
            "copy alone gives (the layer axis first, the copies axis kept in place, nothing mixed across copies)."
        )


@check(WHAT)
def test_replacement_forward(learner: object) -> str:
    function = learner_function(learner, WHAT)
    # Drawn before the learner's code runs.
    prompt = random_prompt()
    output_sae = random_prompt(output_sae=True)
    other_nodes = perturbed(prompt.nodes)
    _check_case(function, prompt, prompt.nodes, None)
    _check_case(function, prompt, other_nodes, "On nodes other than the prompt's own")
    _check_case(function, output_sae, output_sae.nodes, "With an SAE on the MLP's output (MLPOutputSAEDictionary)")
    _check_batched(function, prompt)
    return (
        "the model's logits on its own nodes, other nodes, an SAE on the MLP's output, gradients into every node, "
        "extra leading axes"
    )
