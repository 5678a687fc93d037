"""Check of Exercise 7.1, `intervention_effect`: the change in the real model's logits when latents are edited.

On random weights and a prompt clear of TopK ties (so float32 and float64 keep the same latents), with
edits in each layer: an active latent switched off and an inactive one switched on, at different
positions. The expected change and every misreading of it are computed in float64.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from part_utils.attribution.nodes import TranscoderDictionary
from part_utils.attribution.transformer import TransformerWeights, run_and_record
from tests.checking import CheckFailure, call_learner, check, close, expect_tensor, learner_function
from tests.part9_attribution_graphs._common import Prompt, random_prompt

WHAT = "intervention_effect"
Edits = dict[tuple[int, int], float]


@dataclass(frozen=True)
class EditVariant:
    """The text's intervention (the defaults), or one misreading of it."""

    positions: str = "named"  # named, every (the value set at every position)
    how: str = "set"  # set, add
    baseline: str = "original write"  # original write, none (b_dec not cancelled), mlp_out (the MLP replaced)
    latents: str = "activations"  # activations, pre-activations
    layer_offset: int = 0  # the delta placed at another layer
    returned: str = "change"  # change, logits, negative change


def edit_effect(
    weights: TransformerWeights,
    tokens: Tensor,
    dictionary: TranscoderDictionary,
    layer: int,
    edits: Edits,
    v: EditVariant = EditVariant(),
) -> Tensor:
    clean = run_and_record(weights, tokens)
    pre = dictionary.read(layer, clean.mlp_in[layer])
    acts = pre if v.latents == "pre-activations" else dictionary.activation(layer, pre)
    edited = acts.clone()
    for (pos, latent), value in edits.items():
        rows = slice(None) if v.positions == "every" else pos
        edited[rows, latent] = edited[rows, latent] + value if v.how == "add" else value
    old = {"original write": dictionary.write(layer, acts), "none": 0.0, "mlp_out": clean.mlp_out[layer]}
    delta = torch.zeros_like(clean.mlp_out)
    delta[(layer + v.layer_offset) % len(delta)] = dictionary.write(layer, edited) - old[v.baseline]
    logits = run_and_record(weights, tokens, mlp_out_delta=delta).logits
    change = logits - clean.logits
    return {"change": change, "logits": logits, "negative change": -change}[v.returned]


EDIT_MISTAKES = {
    "The edit is applied at every position: change the latent only at the position its key names, "
    "`edited[pos, latent] = value`.": EditVariant(positions="every"),
    "The new value is added to the latent's activation: set it, `edited[pos, latent] = value`, so that the write "
    "changes by the new value minus the old one, times the latent's decoder row.": EditVariant(how="add"),
    "The delta is the edited latents' write alone, b_dec included: subtract what the dictionary writes with the "
    "original latents, so that only the edit's change remains.": EditVariant(baseline="none"),
    "The delta replaces the MLP by the dictionary (the edited write minus the recorded MLP output): subtract the "
    "dictionary's write of the original latents, so that what it misses stays in.": EditVariant(baseline="mlp_out"),
    "The latents are edited before `dictionary.activation`: edit the activations (after TopK), what the dictionary "
    "writes on this prompt.": EditVariant(latents="pre-activations"),
    "The change is added to the MLP output of another layer: put it at `mlp_out_delta[layer]`, the layer whose "
    "latents are edited, zero elsewhere.": EditVariant(layer_offset=1),
    "This returns the edited model's logits: return their change, the edited logits minus the clean ones.": (
        EditVariant(returned="logits")
    ),
    "The change has the wrong sign: return the edited logits minus the clean ones.": EditVariant(
        returned="negative change"
    ),
}


def _edits(prompt: Prompt, layer: int) -> Edits:
    """An active latent switched off at one position, an inactive one switched on at the next."""
    latents = prompt.nodes.latents[layer]
    on = (latents[:-2] != 0).nonzero()
    on_pos, on_latent = on[len(on) // 2].tolist()
    off_latent = int((latents[on_pos + 1] == 0).nonzero()[-1])
    return {(on_pos, on_latent): 0.0, (on_pos + 1, off_latent): 2.5}


def _check_case(function: Callable[..., object], prompt: Prompt, layer: int, edits: Edits) -> None:
    in_float64 = prompt.in_float64()
    tokens = prompt.recorded.tokens
    with torch.no_grad():
        expected = edit_effect(in_float64.weights, tokens, in_float64.dictionary, layer, edits)
    weights, _, dictionary, _ = prompt.for_learner()
    result = call_learner(function, weights, tokens.clone(), dictionary, layer, dict(edits), what=WHAT)
    actual = expect_tensor(result, tuple(expected.shape), what=WHAT, axes="pos, vocab")
    atol = 1e-5 * max(1.0, float(in_float64.recorded.logits.abs().max()))
    if close(actual, expected, rtol=1e-4, atol=atol):
        return
    where = f"With edits {edits} in layer {layer}"
    with torch.no_grad():
        for message, variant in EDIT_MISTAKES.items():
            wrong = edit_effect(in_float64.weights, tokens, in_float64.dictionary, layer, edits, variant)
            if close(actual, wrong, rtol=1e-4, atol=atol):
                raise CheckFailure(f"{where}: {message[0].lower()}{message[1:]}")
    raise CheckFailure(
        f"{where}: the change in the logits does not match a second `run_and_record` with `mlp_out_delta` at that "
        "layer, the dictionary's write of the edited latents minus its write of the original ones."
    )


@check(WHAT)
def test_intervention_effect(learner: object) -> str:
    function = learner_function(learner, WHAT)
    prompt = random_prompt()  # drawn before the learner's code runs
    for layer in (1, 0):
        _check_case(function, prompt, layer, _edits(prompt, layer))
    return "latents switched off and on in each layer, the real model rerun, the change in the logits"
