"""Mutation suite for Part 9's learner-facing checks (tests/part9_attribution_graphs)."""

import random
import re

import numpy as np
import pytest
import torch

import tests.part9_attribution_graphs as part9
from part_utils.attribution.build import attribute_all
from part_utils.attribution.nodes import Edges, Nodes, Target
from part_utils.attribution.transformer import (
    attention_output,
    attention_pattern,
    layer_norm_scale,
    run_and_record,
)
from part_utils.methods import add_to_class
from part_utils.reference import part9_attribution_graphs as reference
from part_utils.sae_interface import SAEOutput
from part_utils.seeding import forked_rng
from tests.suite.conftest import notebook_cells, notebook_function, stub, with_extra_draws

# replacement_forward -----------------------------------------------------------------------


def make_replacement(
    *,
    errors: bool = True,
    recorded_mlp_out: bool = False,
    read_after_write: bool = False,
    post_activation: bool = False,
    swapped_scales: bool = False,
    live_scales: bool = False,
    live_final: bool = False,
    live_pattern: bool = False,
    b_U: bool = True,
    unbatched_einsum: bool = False,
    detached_errors: bool = False,
    ln1_weights_for_ln2: bool = False,
    attention_on_residual: bool = False,
):
    """A replacement forward pass with one deliberate change (or none: the text's, with the helpers)."""

    def layer_norm(x, scale, w, b, eps):
        divisor = layer_norm_scale(x, eps) if scale is None else scale
        return (x - x.mean(dim=-1, keepdim=True)) / divisor[..., None] * w + b

    def replacement_forward(weights, recorded, dictionary, nodes):
        resid = nodes.embeddings
        latent_pre = []
        for layer in range(weights.n_layers):
            s1, s2 = recorded.ln1_scale[layer], recorded.ln2_scale[layer]
            s1, s2 = (s2, s1) if swapped_scales else (s1, s2)
            s1, s2 = (None, None) if live_scales else (s1, s2)
            x = layer_norm(resid, s1, weights.ln1_w[layer], weights.ln1_b[layer], weights.eps)
            x = resid if attention_on_residual else x
            pattern = attention_pattern(weights, layer, x) if live_pattern else recorded.patterns[layer]
            if unbatched_einsum:
                v = torch.einsum("pd,hdk->hpk", x, weights.W_V[layer]) + weights.b_V[layer][:, None]
                z = torch.einsum("hqp,hpk->hqk", pattern, v)
                resid = resid + torch.einsum("hqk,hkd->qd", z, weights.W_O[layer]) + weights.b_O[layer]
            else:
                resid = resid + attention_output(weights, layer, pattern, x)
            w2, b2 = (weights.ln1_w, weights.ln1_b) if ln1_weights_for_ln2 else (weights.ln2_w, weights.ln2_b)
            mlp_in = layer_norm(resid, s2, w2[layer], b2[layer], weights.eps)
            error = nodes.errors[layer].detach() if detached_errors else nodes.errors[layer]
            written = dictionary.write(layer, nodes.latents[layer]) + (error if errors else 0.0)
            if recorded_mlp_out:
                written = recorded.mlp_out[layer]
            if read_after_write:
                mlp_in = layer_norm(resid + written, s2, weights.ln2_w[layer], weights.ln2_b[layer], weights.eps)
            pre = dictionary.read(layer, mlp_in)
            latent_pre.append(dictionary.activation(layer, pre) if post_activation else pre)
            resid = resid + written
        final_scale = None if live_final else recorded.ln_final_scale
        final = layer_norm(resid, final_scale, weights.ln_final_w, weights.ln_final_b, weights.eps)
        return final @ weights.W_U + (weights.b_U if b_U else 0.0), torch.stack(latent_pre)

    return replacement_forward


def replacement_in_float64(weights, recorded, dictionary, nodes):
    """Correct: the reference on float64 copies of the nodes, the result kept in float64."""
    double = Nodes(*(tensor.double() for tensor in (nodes.embeddings, nodes.latents, nodes.errors)))
    weights64, recorded64 = part9.float64(weights), part9.float64(recorded)
    return reference.replacement_forward(
        weights64, recorded64, part9.dictionary_like(dictionary, weights64, recorded64), double
    )


REPLACEMENT_WITH_OWN_ARITHMETIC = '''
def replacement_forward(weights, recorded, dictionary, nodes):
    """Correct: LayerNorm and attention written out with matmuls and broadcasting, latents kept in a tensor."""
    resid = nodes.embeddings
    pres = []
    for layer in range(weights.n_layers):
        centred = resid - resid.mean(-1, keepdim=True)
        x = centred / recorded.ln1_scale[layer].unsqueeze(-1) * weights.ln1_w[layer] + weights.ln1_b[layer]
        v = x.unsqueeze(-3) @ weights.W_V[layer] + weights.b_V[layer].unsqueeze(-2)  # [..., head, pos, d_head]
        z = recorded.patterns[layer] @ v
        resid = resid + (z @ weights.W_O[layer]).sum(-3) + weights.b_O[layer]
        centred = resid - resid.mean(-1, keepdim=True)
        mlp_in = centred / recorded.ln2_scale[layer].unsqueeze(-1) * weights.ln2_w[layer] + weights.ln2_b[layer]
        pres.append(dictionary.read(layer, mlp_in))
        resid = resid + nodes.errors[layer] + dictionary.write(layer, nodes.latents[layer])
    centred = resid - resid.mean(-1, keepdim=True)
    final = centred / recorded.ln_final_scale.unsqueeze(-1) * weights.ln_final_w + weights.ln_final_b
    return torch.einsum("...pd,dv->...pv", final, weights.W_U) + weights.b_U, torch.stack(pres, dim=0)
'''


@pytest.mark.parametrize(
    "learner",
    [
        reference.replacement_forward,
        make_replacement(),
        replacement_in_float64,
        notebook_function(REPLACEMENT_WITH_OWN_ARITHMETIC, "replacement_forward"),
    ],
)
def test_replacement_forward_accepts_the_reference_and_rewrites(checks, learner):
    checks.passes(part9.test_replacement_forward, learner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"errors": False}, "error nodes are omitted"),
        ({"recorded_mlp_out": True}, r"recorded MLP output \(`recorded\.mlp_out`\)"),
        ({"read_after_write": True}, "post-MLP residual stream"),
        ({"post_activation": True}, r"after `dictionary\.activation` \(TopK\), the post-activations"),
        ({"swapped_scales": True}, "ln1 and ln2 use each other's recorded scales"),
        ({"live_scales": True}, r"LayerNorm's scale is recomputed from the residual stream \(a live LayerNorm\)"),
        ({"live_scales": True, "live_final": True}, r"a live LayerNorm"),
        ({"live_final": True}, "final LayerNorm's scale is recomputed"),
        ({"live_pattern": True}, "attention pattern is recomputed live from W_Q and W_K"),
        ({"b_U": False}, "leave out b_U"),
        ({"ln1_weights_for_ln2": True}, "MLP's LayerNorm uses ln1's weights"),
        ({"attention_on_residual": True}, "Attention reads the residual stream itself"),
        ({"unbatched_einsum": True}, r"fails on nodes with an extra leading axis.*line \d+"),
        ({"detached_errors": True}, r"gradients with respect to `nodes\.errors` are not"),
    ],
)
def test_replacement_forward_names_each_mistake(checks, options, message):
    checks.fails(part9.test_replacement_forward, make_replacement(**options), message)


def replacement_without_gradients(weights, recorded, dictionary, nodes):
    with torch.no_grad():
        return reference.replacement_forward(weights, recorded, dictionary, nodes)


def replacement_returning_a_list(weights, recorded, dictionary, nodes):
    logits, latent_pre = reference.replacement_forward(weights, recorded, dictionary, nodes)
    return logits, list(latent_pre)


def replacement_changing_the_nodes(weights, recorded, dictionary, nodes):
    result = reference.replacement_forward(weights, recorded, dictionary, nodes)
    recorded.ln1_scale.mul_(2.0)
    return result


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (replacement_without_gradients, "carry no gradient back to the nodes"),
        (replacement_returning_a_list, r"as a list: stack them"),
        (replacement_changing_the_nodes, r"changed `recorded\.ln1_scale` in place"),
        (lambda weights, recorded, dictionary, nodes: recorded.logits, "should return two things"),
    ],
)
def test_replacement_forward_names_wrong_outputs_and_side_effects(checks, learner, message):
    checks.fails(part9.test_replacement_forward, learner, message)


def test_the_model_reproduces_the_recorded_logits_on_the_prompts_own_nodes():
    with forked_rng(0):
        prompt = part9.random_prompt().in_float64()
    logits, _ = part9.replacement_model(prompt, prompt.nodes)
    assert torch.allclose(logits, prompt.recorded.logits, atol=1e-10)


# Transcoder.forward ------------------------------------------------------------------------


def make_forward(
    *,
    against_input: bool = False,
    aux_residual: str = "target - prediction",
    squared: str = "mean",
    reduce: str = "mean, sum",
    aux: str = "weighted",
    dead_after_record: bool = False,
    records: int = 1,
    aux_input: str = "pre_acts",
    pre_encoder_bias: bool = False,
    plain_tuple: bool = False,
    swapped_outputs: bool = False,
    detached_prediction: bool = False,
    counts_in_eval: bool = False,
    weighted_in_dict: bool = False,
):
    """A transcoder forward with one deliberate change (or none: the text's)."""

    def forward(self, x, target):
        pre_acts = self.pre_activations(x - self.b_dec if pre_encoder_bias else x)
        acts = self.activation(pre_acts)
        prediction = self.decode(acts)
        goal = x if against_input else target
        residual = {
            "target - prediction": lambda: goal - prediction,
            "x - prediction": lambda: x - prediction,
            "target + prediction": lambda: goal + prediction,
            "prediction - target": lambda: prediction - goal,
        }[aux_residual]()
        if dead_after_record:
            self.record_firing(acts)
        dead = self.dead_latents()
        error = ((prediction.detach() if detached_prediction else prediction) - goal).pow(2)
        loss_dict = {
            "L_reconstruction": error.mean(-1) if squared == "mean" else error.sum(-1),
            "L_aux": self.auxk_loss(acts if aux_input == "acts" else pre_acts, residual, dead),
        }
        for _ in range(0 if dead_after_record else records):
            self.record_firing(acts)
        if counts_in_eval and not self.training:
            self.steps_since_fired.add_(1)
        coefficient = {"weighted": self.cfg.aux_coeff, "none": 0.0, "unweighted": 1.0, "1/32": 1 / 32}.get(aux, 1.0)
        main = loss_dict["L_reconstruction"] * (self.cfg.aux_coeff if aux == "on reconstruction" else 1.0)
        per_input = main + coefficient * loss_dict["L_aux"]
        if weighted_in_dict:
            loss_dict["L_aux"] = self.cfg.aux_coeff * loss_dict["L_aux"]
        loss = {
            "mean, sum": lambda: per_input.mean(0).sum(),
            "sum, sum": lambda: per_input.sum(0).sum(),
            "mean, mean": lambda: per_input.mean(),
        }[reduce]()
        outputs = (loss_dict, loss, prediction, acts) if swapped_outputs else (loss_dict, loss, acts, prediction)
        return outputs if plain_tuple else SAEOutput(*outputs)

    return forward


def transcoder_class(forward):
    """The notebook's class with a forward attached, as `@add_to_class(Transcoder)` does."""
    return type("Transcoder", (reference.Transcoder,), {"forward": forward})


FORWARD_WITH_EINSUM = '''
@add_to_class(Transcoder)
def forward(self, x, target):
    """Correct: pre-activations and decoding written out with einsum, the loss with explicit sums."""
    pre_acts = torch.einsum("bid,idl->bil", x, self.W_enc) + self.b_enc
    acts = self.activation(pre_acts)
    prediction = torch.einsum("bil,ilo->bio", acts, self.W_dec_normalized) + self.b_dec
    dead = self.dead_latents()
    reconstruction = ((target - prediction) ** 2).sum(-1) / target.shape[-1]
    aux = self.auxk_loss(pre_acts, target - prediction, dead)
    self.record_firing(acts)
    loss = (reconstruction + self.cfg.aux_coeff * aux).sum(0).div(x.shape[0]).sum()
    return SAEOutput({"L_reconstruction": reconstruction, "L_aux": aux}, loss, acts, prediction)
'''


def forward_in_float64(self, x, target):
    """Correct: the reference's arithmetic on float64 copies of the inputs, results kept in float64."""
    return reference.Transcoder.forward(self, x.double(), target.double())


@pytest.mark.parametrize(
    "learner",
    [
        reference.Transcoder,
        transcoder_class(make_forward()),
        transcoder_class(with_extra_draws(make_forward(), 5)),
        notebook_cells(
            FORWARD_WITH_EINSUM,
            Transcoder=type("Transcoder", (reference.Transcoder,), {}),
            add_to_class=add_to_class,
            SAEOutput=SAEOutput,
        )["Transcoder"],
    ],
)
def test_transcoder_forward_accepts_the_reference_and_rewrites(checks, learner):
    checks.passes(part9.test_transcoder_forward, learner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"against_input": True}, "trained to reconstruct its input instead of the MLP's output"),
        ({"aux_residual": "x - prediction"}, "AuxK is given the residual `x - prediction`"),
        ({"aux_residual": "target + prediction"}, "AuxK is given `target \\+ prediction`"),
        ({"aux_residual": "prediction - target"}, "AuxK is given `prediction - target`"),
        ({"aux": "on reconstruction"}, "aux_coeff multiplies L_reconstruction"),
        ({"weighted_in_dict": True}, "already multiplied by aux_coeff"),
        ({"squared": "sum"}, "summed over d_out"),
        ({"reduce": "sum, sum"}, "summed over the batch"),
        ({"reduce": "mean, mean"}, "averaged over instances"),
        ({"aux": "none"}, "no AuxK term"),
        ({"aux": "unweighted"}, "without its coefficient"),
        ({"aux": "1/32"}, "1/32 whatever the config says"),
        ({"dead_after_record": True}, "read after `self.record_firing\\(acts\\)`"),
        ({"records": 0}, "did not change: call self.record_firing"),
        ({"records": 2}, "ran twice in one forward"),
        ({"aux_input": "acts"}, "AuxK is given the activations"),
        ({"pre_encoder_bias": True}, "pre-encoder bias"),
        ({"plain_tuple": True}, "plain tuple"),
        ({"swapped_outputs": True}, "acts and h_reconstructed swapped"),
        ({"detached_prediction": True}, "the gradient of `W_(enc|dec)` is not"),
        ({"counts_in_eval": True}, "In evaluation .*changed although the transcoder is evaluating"),
    ],
)
def test_transcoder_forward_names_each_mistake(checks, options, message):
    checks.fails(part9.test_transcoder_forward, transcoder_class(make_forward(**options)), message)


def test_transcoder_forward_says_when_forward_was_never_attached(checks):
    checks.fails(part9.test_transcoder_forward, type("Transcoder", (torch.nn.Module,), {}), "never attached")


def test_transcoder_inputs_keep_clear_of_top_k_ties():
    with forked_rng(0):
        cases = part9.transcoder_cases()
    for case in cases:
        distances = part9._kink_distances(case.transcoder, case.x)
        assert all(bool((distance.abs() > part9.KINK_MARGIN).all()) for distance in distances)


# attribute ---------------------------------------------------------------------------------


def make_attribute(
    *,
    times_activation: bool = True,
    post_activation: bool = False,
    demeaned: str = "vocabulary",
    layer_ignored: bool = False,
    zero_errors: bool = False,
    zero_embeddings: bool = False,
    in_place: bool = False,
    sum_axis: int = -1,
    sign: float = 1.0,
):
    """An `attribute` with one deliberate change (or none: the text's)."""

    def attribute(forward, weights, recorded, dictionary, nodes, target):
        tensors = (nodes.embeddings, nodes.latents, nodes.errors)
        sources = [
            tensor.requires_grad_(True) if in_place else tensor.detach().clone().requires_grad_(True)
            for tensor in tensors
        ]
        if in_place:
            nodes.embeddings.data.mul_(1.0 + 1e-3)
        logits, latent_pre = forward(weights, recorded, dictionary, Nodes(*sources))
        if target.kind == "logit":
            mean = {"vocabulary": logits[target.pos].mean(), "positions": logits[:, target.index].mean(), "none": 0.0}
            value = logits[target.pos, target.index] - mean[demeaned]
        elif post_activation:
            value = dictionary.activation(target.layer, latent_pre[target.layer])[target.pos, target.index]
        else:
            value = latent_pre[0 if layer_ignored else target.layer, target.pos, target.index]
        grads = torch.autograd.grad(value, sources, allow_unused=True)
        grads = [torch.zeros_like(s) if g is None else g for s, g in zip(sources, grads)]
        edges = [(s.detach() * g if times_activation else g) * sign for s, g in zip(sources, grads)]
        embeddings, latents, errors = edges[0].sum(sum_axis), edges[1], edges[2].sum(sum_axis)
        if zero_errors:
            errors = torch.zeros_like(errors)
        if zero_embeddings:
            embeddings = torch.zeros_like(embeddings)
        return Edges(embeddings=embeddings, latents=latents, errors=errors)

    return attribute


def attribute_with_vjp(forward, weights, recorded, dictionary, nodes, target):
    """Correct: torch.func.vjp with a one-hot cotangent, in float64."""
    tensors = [tensor.double() for tensor in (nodes.embeddings, nodes.latents, nodes.errors)]
    weights, recorded = part9.float64(weights), part9.float64(recorded)
    dictionary = part9.dictionary_like(dictionary, weights, recorded)

    def value(embeddings, latents, errors):
        logits, latent_pre = forward(weights, recorded, dictionary, Nodes(embeddings, latents, errors))
        if target.kind == "logit":
            return logits[target.pos, target.index] - logits[target.pos].mean()
        return latent_pre[target.layer, target.pos, target.index]

    _, pullback = torch.func.vjp(value, *tensors)
    grads = pullback(torch.tensor(1.0, dtype=torch.float64))
    embeddings, latents, errors = (tensor * grad for tensor, grad in zip(tensors, grads))
    return Edges(embeddings.sum(-1), latents, errors.sum(-1))


def attribute_with_backward(forward, weights, recorded, dictionary, nodes, target):
    """Correct: .backward() into leaves and their .grad, einsum for the products."""
    leaves = Nodes(
        *(tensor.detach().clone().requires_grad_() for tensor in (nodes.embeddings, nodes.latents, nodes.errors))
    )
    logits, latent_pre = forward(weights, recorded, dictionary, leaves)
    demeaned = logits - logits.mean(dim=-1, keepdim=True)
    value = (
        demeaned[target.pos, target.index]
        if target.kind == "logit"
        else latent_pre[target.layer][target.pos][target.index]
    )
    value.backward()
    grad = lambda leaf: torch.zeros_like(leaf) if leaf.grad is None else leaf.grad  # noqa: E731
    return Edges(
        embeddings=torch.einsum("pd,pd->p", leaves.embeddings.detach(), grad(leaves.embeddings)),
        latents=leaves.latents.detach() * grad(leaves.latents),
        errors=torch.einsum("lpd,lpd->lp", leaves.errors.detach(), grad(leaves.errors)),
    )


@pytest.mark.parametrize(
    "learner",
    [
        reference.attribute,
        make_attribute(),
        attribute_with_vjp,
        attribute_with_backward,
        with_extra_draws(reference.attribute, 3),
    ],
)
def test_attribute_accepts_the_reference_and_rewrites(checks, learner):
    checks.passes(part9.test_attribute, learner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"times_activation": False}, "the gradients alone: multiply each by its source's activation"),
        ({"post_activation": True}, r"read after `dictionary\.activation` \(TopK\)"),
        ({"demeaned": "none"}, "the raw logit"),
        ({"demeaned": "positions"}, "demeaned over positions"),
        ({"layer_ignored": True}, "read in layer 0 whatever its layer"),
        ({"zero_errors": True}, "error nodes' edges are all 0"),
        ({"zero_embeddings": True}, "embeddings' edges are all 0"),
        ({"in_place": True}, r"changed `nodes\.embeddings` in place"),
        ({"sum_axis": 0}, "summed the embeddings edges over positions"),
        ({"sign": -1.0}, "wrong sign"),
    ],
)
def test_attribute_names_each_mistake(checks, options, message):
    checks.fails(part9.test_attribute, make_attribute(**options), message)


def test_brute_force_edges_equal_autograd_and_the_batched_attribution():
    with forked_rng(0):
        prompt = part9.random_prompt().in_float64()
    targets = [Target("logit", 6, 3), Target("latent", 4, int(prompt.nodes.latents[1, 4].argmax()), 1)]
    batched = attribute_all(
        reference.replacement_forward, prompt.weights, prompt.recorded, prompt.dictionary, prompt.nodes, targets
    )
    for i, target in enumerate(targets):
        brute = part9.brute_force_edges(prompt, prompt.nodes, target)
        looped = reference.attribute(
            reference.replacement_forward, prompt.weights, prompt.recorded, prompt.dictionary, prompt.nodes, target
        )
        for name in ("embeddings", "latents", "errors"):
            assert torch.allclose(brute[name], getattr(looped, name), atol=1e-10)
            assert torch.allclose(brute[name], getattr(batched, name)[i], atol=1e-10)


# influence and prune -----------------------------------------------------------------------


def make_influence(
    *, normalise: str = "rows", absolute: bool = True, identity: bool = False, direct: bool = False, safe: bool = True
):
    def influence(adjacency):
        a = adjacency.abs() if absolute else adjacency
        dim = 1 if normalise == "rows" else 0
        sums = a.abs().sum(dim=dim, keepdim=True)
        normalised = a / (sums.clamp_min(1e-12) if safe else sums) if normalise != "none" else a
        if direct:
            return normalised
        eye = torch.eye(len(adjacency), dtype=adjacency.dtype)
        return torch.linalg.inv(eye - normalised) - (0 if identity else eye)

    return influence


def influence_by_power_series(adjacency):
    """Correct: Â + Â² + ... until the powers vanish, with torch.where for the empty rows, in float64."""
    magnitude = adjacency.double().abs()
    sums = magnitude.sum(dim=-1, keepdim=True)
    normalised = torch.where(sums > 0, magnitude / torch.where(sums > 0, sums, 1.0), 0.0)
    total, power = torch.zeros_like(normalised), normalised
    while power.abs().sum() > 0:
        total, power = total + power, power @ normalised
    return total


def influence_with_solve_triangular(adjacency):
    """Correct: a triangular solve, since every edge points forward."""
    magnitude = adjacency.abs()
    normalised = magnitude / magnitude.sum(1, keepdim=True).clamp(min=1e-30)
    eye = torch.eye(len(adjacency), dtype=adjacency.dtype)
    return torch.linalg.solve_triangular(eye - normalised, eye, upper=False) - eye


@pytest.mark.parametrize(
    "learner", [reference.influence, make_influence(), influence_by_power_series, influence_with_solve_triangular]
)
def test_influence_accepts_the_reference_and_rewrites(checks, learner):
    checks.passes(part9.test_influence, learner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"direct": True}, "This is Â itself, the direct edges"),
        ({"normalise": "none"}, "not normalised"),
        ({"absolute": False}, "keep their signs"),
        ({"normalise": "columns"}, "Each column is divided by its sum"),
        ({"identity": True}, "includes the identity"),
        ({"safe": False}, "returned NaN: a row with no incoming edges"),
    ],
)
def test_influence_names_each_mistake(checks, options, message):
    checks.fails(part9.test_influence, make_influence(**options), message)


def make_prune(*, pooled=False, strict=False, raw=False, ascending=False, logits=True, union=True):
    def prune(influence_matrix, logit_nodes, share):
        keep = torch.zeros(len(influence_matrix), dtype=torch.bool)
        rows = [influence_matrix[logit_nodes].sum(0)] if pooled else [influence_matrix[i] for i in logit_nodes]
        for row in rows:
            if not union:
                keep = torch.zeros_like(keep)
            if raw:
                keep |= row >= share * row.sum()
                continue
            order = row.argsort(descending=not ascending)
            carried = row[order].cumsum(0)
            keep[
                order[carried <= share * row.sum()] if strict else order[: int((carried < share * row.sum()).sum()) + 1]
            ] = True
        if logits:
            keep[logit_nodes] = True
        return keep

    return prune


def prune_with_searchsorted(influence_matrix, logit_nodes, share):
    """Correct: sorting with torch.sort and torch.searchsorted for the count, a list of kept indices made a mask."""
    kept = set(logit_nodes.tolist())
    for logit in logit_nodes:
        values, order = torch.sort(influence_matrix[logit].double(), descending=True)
        carried = values.cumsum(0)
        count = int(torch.searchsorted(carried, share * carried[-1])) + 1
        kept.update(order[:count].tolist())
    return torch.tensor([node in kept for node in range(len(influence_matrix))])


@pytest.mark.parametrize("learner", [reference.prune, make_prune(), prune_with_searchsorted])
def test_prune_accepts_the_reference_and_rewrites(checks, learner):
    checks.passes(part9.test_prune, learner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pooled": True}, "pooled into one ranking"),
        ({"strict": True}, "crosses the threshold is dropped"),
        ({"raw": True}, "kept by their own influence"),
        ({"ascending": True}, "ascending influence"),
        ({"logits": False}, "logits themselves are not kept"),
        ({"union": False}, "only the last logit's nodes are kept"),
    ],
)
def test_prune_names_each_mistake(checks, options, message):
    checks.fails(part9.test_prune, make_prune(**options), message)


def test_prune_returns_a_mask(checks):
    checks.fails(
        part9.test_prune, lambda m, logits, share: reference.prune(m, logits, share).nonzero().flatten(), "boolean mask"
    )


def test_prune_thresholds_keep_clear_of_every_cumulative_sum():
    with forked_rng(0):
        cases = part9.prune_cases()
    for influence_matrix, logits, share in cases:
        for row in influence_matrix[logits].double():
            carried = row.sort(descending=True).values.cumsum(0)
            assert ((carried - share * row.sum()).abs() > 1e-4 * row.sum()).all()


# intervention_effect -----------------------------------------------------------------------


def make_intervention(
    *, every_position=False, add=False, baseline="acts", pre=False, other_layer=False, logits=False, sign=1.0
):
    def intervention_effect(weights, tokens, dictionary, layer, edits):
        clean = run_and_record(weights, tokens)
        pre_acts = dictionary.read(layer, clean.mlp_in[layer])
        acts = pre_acts if pre else dictionary.activation(layer, pre_acts)
        edited = acts.clone()
        for (pos, latent), value in edits.items():
            rows = slice(None) if every_position else pos
            edited[rows, latent] = edited[rows, latent] + value if add else value
        delta = torch.zeros_like(clean.mlp_out)
        change = (
            dictionary.write(layer, edited)
            - {"acts": dictionary.write(layer, acts), "none": 0.0, "mlp_out": clean.mlp_out[layer]}[baseline]
        )
        delta[1 - layer if other_layer else layer] = change
        new = run_and_record(weights, tokens, mlp_out_delta=delta).logits
        return new if logits else sign * (new - clean.logits)

    return intervention_effect


def intervention_with_decoder_rows(weights, tokens, dictionary, layer, edits):
    """Correct: the delta built from decoder rows, (new - old) · W_dec_normalized[latent], in float64."""
    weights = part9.float64(weights)
    dictionary = part9.dictionary_like(dictionary, weights, None)
    clean = run_and_record(weights, tokens)
    acts = dictionary.activation(layer, dictionary.read(layer, clean.mlp_in[layer]))
    delta = torch.zeros_like(clean.mlp_out)
    for (pos, latent), value in edits.items():
        delta[layer, pos] += (value - acts[pos, latent]) * dictionary.sae.W_dec_normalized[layer, latent]
    return run_and_record(weights, tokens, mlp_out_delta=delta).logits - clean.logits


@pytest.mark.parametrize(
    "learner", [reference.intervention_effect, make_intervention(), intervention_with_decoder_rows]
)
def test_intervention_effect_accepts_the_reference_and_rewrites(checks, learner):
    checks.passes(part9.test_intervention_effect, learner)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"every_position": True}, "applied at every position"),
        ({"add": True}, "added to the latent's activation: set it"),
        ({"baseline": "none"}, "b_dec included"),
        ({"baseline": "mlp_out"}, "replaces the MLP by the dictionary"),
        ({"pre": True}, "edited before `dictionary.activation`"),
        ({"other_layer": True}, "MLP output of another layer"),
        ({"logits": True}, "returns the edited model's logits"),
        ({"sign": -1.0}, "wrong sign"),
    ],
)
def test_intervention_effect_names_each_mistake(checks, options, message):
    checks.fails(part9.test_intervention_effect, make_intervention(**options), message)


# behaviour every check shares --------------------------------------------------------------

CHECKS = [
    (part9.test_transcoder_forward, transcoder_class, reference.Transcoder.forward, "Transcoder.forward"),
    (part9.test_replacement_forward, lambda f: f, reference.replacement_forward, "replacement_forward"),
    (part9.test_attribute, lambda f: f, reference.attribute, "attribute"),
    (part9.test_influence, lambda f: f, reference.influence, "influence"),
    (part9.test_prune, lambda f: f, reference.prune, "prune"),
    (part9.test_intervention_effect, lambda f: f, reference.intervention_effect, "intervention_effect"),
]


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
def test_a_stub_reports_not_implemented(checks, check, wrap, learner, name):
    checks.fails(check, wrap(stub), rf"`{re.escape(name)}` is not implemented yet")


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
@pytest.mark.parametrize("wrong_thing", [42, "influence", None])
def test_wrong_kind_of_object_is_named(checks, check, wrap, learner, name, wrong_thing):
    checks.fails(check, wrong_thing, r"Pass (the class that has )?your `")


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS[1:])
def test_a_class_instead_of_a_free_function_is_named(checks, check, wrap, learner, name):
    checks.fails(check, reference.Transcoder, "is a function of its own, not a method")


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
def test_a_crash_is_reported_with_the_learners_line(checks, check, wrap, learner, name):
    def crashes(*args):
        return args[0].missing_attribute

    message = checks.fails(check, wrap(crashes), "raised AttributeError")
    assert re.search(r"line \d+ of `crashes`", message), message


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
@pytest.mark.parametrize("draws", [1, 17])
def test_checks_pass_code_that_draws_random_numbers(checks, check, wrap, learner, name, draws):
    checks.passes(check, wrap(with_extra_draws(learner, draws)))


@pytest.mark.parametrize(("check", "wrap", "learner", "name"), CHECKS)
def test_checks_leave_every_random_state_and_the_thread_count_as_they_were(checks, check, wrap, learner, name):
    threads = torch.get_num_threads()
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    checks.passes(check, wrap(learner))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(
    ("check", "learner"),
    [
        (part9.test_transcoder_forward, transcoder_class(make_forward(squared="sum"))),
        (part9.test_replacement_forward, make_replacement(b_U=False)),
        (part9.test_attribute, make_attribute(times_activation=False)),
        (part9.test_influence, make_influence(identity=True)),
        (part9.test_intervention_effect, make_intervention(add=True)),
    ],
)
def test_failure_messages_do_not_reveal_reference_values(checks, check, learner):
    text = checks.fails(check, learner, ".")
    assert not re.search(r"\d\.\d{3}", text), text


def forward_changing_its_target(self, x, target):
    result = reference.Transcoder.forward(self, x, target)
    target.mul_(2.0)
    return result


def influence_changing_the_adjacency(adjacency):
    result = reference.influence(adjacency)
    adjacency.abs_().add_(1.0)
    return result


def prune_changing_the_influence(influence_matrix, logit_nodes, share):
    result = reference.prune(influence_matrix, logit_nodes, share)
    influence_matrix.add_(1.0)
    return result


def intervention_changing_the_decoder(weights, tokens, dictionary, layer, edits):
    result = reference.intervention_effect(weights, tokens, dictionary, layer, edits)
    with torch.no_grad():
        dictionary.sae.W_dec.mul_(2.0)
    return result


@pytest.mark.parametrize(
    ("check", "learner", "changed"),
    [
        (part9.test_transcoder_forward, transcoder_class(forward_changing_its_target), "target"),
        (part9.test_influence, influence_changing_the_adjacency, "adjacency"),
        (part9.test_prune, prune_changing_the_influence, "influence_matrix"),
        (part9.test_intervention_effect, intervention_changing_the_decoder, "dictionary.sae.W_dec"),
    ],
)
def test_each_check_names_what_the_learners_code_changed_in_place(checks, check, learner, changed):
    checks.fails(check, learner, rf"changed `{re.escape(changed)}` in place")
