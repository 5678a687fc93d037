"""Mutation suite for Part 5's learner-facing checks (tests/part5_sae_variants.py)."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import einsum

import tests.part5_sae_variants as part5
from part_utils.reference import part5_sae_variants as reference
from tests.suite.conftest import stub

# Gated forward ----------------------------------------------------------------------------


def make_gated_forward(
    *,
    centre: bool = True,
    exp_r_mag: bool = True,
    own_mag_bias: bool = True,
    gate: str = "indicator",
    l1_on: str = "gate",
    detach_aux: bool = True,
    aux_bias: bool = True,
    sum_reconstruction: bool = False,
    with_aux: bool = True,
    matmul: bool = False,
):
    def forward(self, h):
        h_in = h - self.b_dec if centre else h
        if matmul:  # a correct rewrite with batched matmuls in float64
            h_in = h_in.double()
            pi_gate = (h_in.transpose(0, 1) @ self.W_enc.double()).transpose(0, 1) + self.b_enc.double()
            W_mag = self.W_enc.double() * torch.exp(self.r_mag.double()).unsqueeze(1)
            pi_mag = (h_in.transpose(0, 1) @ W_mag).transpose(0, 1) + self.b_mag.double()
        else:
            pi_gate = einsum(h_in, self.W_enc, "b i d, i d s -> b i s") + self.b_enc
            scale = self.r_mag.exp() if exp_r_mag else self.r_mag
            pi_mag = einsum(h_in, scale[:, None, :] * self.W_enc, "b i d, i d s -> b i s") + (self.b_mag if own_mag_bias else self.b_enc)
        magnitudes = F.relu(pi_mag)
        acts = {"indicator": (pi_gate > 0).to(magnitudes.dtype) * magnitudes, "none": magnitudes, "relu": F.relu(pi_gate) * magnitudes}[gate]
        W_dec = self.W_dec_normalized.to(acts.dtype)
        b_dec = self.b_dec.to(acts.dtype)
        h_rec = einsum(acts, W_dec, "b i s, i s d -> b i d") + b_dec
        aux_W, aux_b = (W_dec.detach(), b_dec.detach()) if detach_aux else (W_dec, b_dec)
        via_gate = einsum(F.relu(pi_gate), aux_W, "b i s, i s d -> b i d") + (aux_b if aux_bias else 0.0)
        error = (h_rec - h).pow(2)
        losses = {
            "L_reconstruction": error.sum(-1) if sum_reconstruction else error.mean(-1),
            "L_sparsity": (F.relu(pi_gate) if l1_on == "gate" else acts).sum(-1),
            "L_aux": (via_gate - h).pow(2).mean(-1),
        }
        total = losses["L_reconstruction"] + self.cfg.sparsity_coeff * losses["L_sparsity"] + (losses["L_aux"] if with_aux else 0.0)
        return losses, total.mean(0).sum(), acts, h_rec

    return forward


def gated(forward: Any) -> type:
    return type("LearnerGatedSAE", (reference.GatedToySAE,), {"forward": forward})


def test_gated_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part5.test_gated_forward, reference.GatedToySAE)
    checks.passes(part5.test_gated_forward, gated(make_gated_forward(matmul=True)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"centre": False}, "ignores b_dec"),
        ({"exp_r_mag": False}, r"multiplies by r_mag; the scale is exp\(r_mag\)"),
        ({"own_mag_bias": False}, "its own bias, b_mag"),
        ({"gate": "none"}, "not gated"),
        ({"gate": "relu"}, "the gate is the indicator"),
        ({"l1_on": "acts"}, r"put the penalty on ReLU\(π_gate\)"),
        ({"detach_aux": False}, "detach"),
        ({"aux_bias": False}, "L_aux leaves out b_dec"),
        ({"sum_reconstruction": True}, "L_reconstruction is summed over d_in"),
        ({"with_aux": False}, "leaves out L_aux"),
    ],
)
def test_gated_forward_names_each_mistake(checks, options, message):
    checks.fails(part5.test_gated_forward, gated(make_gated_forward(**options)), message)


def test_gated_forward_reports_a_stub(checks):
    checks.fails(part5.test_gated_forward, gated(stub), "not implemented yet")


# Heaviside and JumpReLU -------------------------------------------------------------------


def make_step_function(
    *,
    jump: bool,
    sign: float = -1.0,
    half_width: float = 0.5,
    scale_by: str = "default",
    grad_to_z: str = "default",
    reduce: str = "sum",
    use_upstream: bool = True,
) -> type[torch.autograd.Function]:
    """A Heaviside (jump=False) or JumpReLU (jump=True) with one deliberate change."""

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, threshold, bandwidth):
            ctx.save_for_backward(z, threshold)
            ctx.bandwidth = bandwidth
            active = torch.where(z > threshold, 1.0, 0.0).to(z.dtype)
            return z * active if jump else active

        @staticmethod
        def backward(ctx, grad_output):
            z, threshold = ctx.saved_tensors
            bandwidth = ctx.bandwidth
            window = ((z - threshold).abs() < half_width * bandwidth).to(z.dtype)
            default_scale = threshold / bandwidth if jump else 1.0 / bandwidth
            scale = {"default": default_scale, "none": 1.0, "inverse_bandwidth": 1.0 / bandwidth}[scale_by]
            upstream = grad_output if use_upstream else torch.ones_like(grad_output)
            grad_threshold = sign * scale * window * upstream
            if reduce == "mean":
                grad_threshold = grad_threshold.sum_to_size(threshold.shape) * threshold.numel() / z.numel()
            # reduce == "sum": returned per element; autograd sums it to threshold's shape
            default_z = (z > threshold).to(z.dtype) * grad_output if jump else None
            grad_z = {"default": default_z, "identity": grad_output, "zero": torch.zeros_like(z)}[grad_to_z]
            return grad_z, grad_threshold, None

    return Step


def test_heaviside_and_jumprelu_accept_reference_and_rewrites(checks):
    checks.passes(part5.test_heaviside, reference.Heaviside)
    checks.passes(part5.test_jumprelu, reference.JumpReLU)
    checks.passes(part5.test_heaviside, make_step_function(jump=False))
    checks.passes(part5.test_jumprelu, make_step_function(jump=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sign": 1.0}, "wrong sign"),
        ({"half_width": 1.0}, "twice too wide"),
        ({"scale_by": "none"}, "missing the 1/ε factor"),
        ({"grad_to_z": "identity"}, "passes grad_output through to z"),
        ({"reduce": "mean"}, "averaged over the batch"),
        ({"use_upstream": False}, "ignores grad_output"),
    ],
)
def test_heaviside_names_each_mistake(checks, options, message):
    checks.fails(part5.test_heaviside, make_step_function(jump=False, **options), message)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sign": 1.0}, "wrong sign"),
        ({"half_width": 1.0}, "twice too wide"),
        ({"scale_by": "inverse_bandwidth"}, "uses 1/ε; it is -\\(θ/ε\\)"),
        ({"grad_to_z": "identity"}, "passes the gradient to z everywhere"),
        ({"grad_to_z": "zero"}, "passes no gradient to z"),
        ({"reduce": "mean"}, "averaged over the batch"),
    ],
)
def test_jumprelu_names_each_mistake(checks, options, message):
    checks.fails(part5.test_jumprelu, make_step_function(jump=True, **options), message)


def test_step_checks_name_swapped_forwards_and_non_functions(checks):
    checks.fails(part5.test_jumprelu, make_step_function(jump=False), "returns H")
    checks.fails(part5.test_heaviside, make_step_function(jump=True), "returns just H")
    checks.fails(part5.test_jumprelu, lambda z, threshold, bandwidth: z, "autograd.Function subclass")


# remove_parallel_component ----------------------------------------------------------------


def test_remove_parallel_component_accepts_reference_and_rewrites(checks):
    checks.passes(part5.test_remove_parallel_component, reference.remove_parallel_component)
    checks.passes(part5.test_remove_parallel_component, lambda grad, W_dec: grad - torch.einsum("sd,sd->s", grad, W_dec)[:, None] * W_dec)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (lambda g, w: (g * w).sum(-1, keepdim=True) * w, "returned the parallel component"),
        (lambda g, w: g + (g * w).sum(-1, keepdim=True) * w, "added the parallel component"),
        (lambda g, w: g - (g * w).sum(0, keepdim=True) * w, "wrong axis"),
        (lambda g, w: g - (g * w).sum(-1, keepdim=True), "subtracted the dot product itself"),
        (stub, "not implemented yet"),
    ],
)
def test_remove_parallel_component_names_each_mistake(checks, mutant, message):
    checks.fails(part5.test_remove_parallel_component, mutant, message)


# reference parity (the learner-facing wrapper) ---------------------------------------------


def test_reference_parity_check_passes_the_reference(checks):
    checks.passes(lambda _: part5.test_reference_parity(reference.JumpReLU, reference.Heaviside, reference.remove_parallel_component), None)


@pytest.mark.parametrize(
    ("jumprelu", "heaviside", "project", "message"),
    [
        (make_step_function(jump=True, sign=1.0), reference.Heaviside, reference.remove_parallel_component, "grad log θ"),
        (make_step_function(jump=True, grad_to_z="identity"), reference.Heaviside, reference.remove_parallel_component, "grad b_"),
        (reference.JumpReLU, make_step_function(jump=False, half_width=1.0), reference.remove_parallel_component, "grad log θ"),
        (reference.JumpReLU, reference.Heaviside, lambda g, w: g, "three training steps"),
    ],
)
def test_reference_parity_check_fails_wrong_parts(checks, jumprelu, heaviside, project, message):
    checks.fails(lambda _: part5.test_reference_parity(jumprelu, heaviside, project), None, message)


# TopK -------------------------------------------------------------------------------------


def topk_with_sort(pre_acts, k):
    order = pre_acts.double().sort(dim=-1, descending=True)
    kept = torch.zeros_like(order.values)
    kept[..., :k] = order.values[..., :k].clamp(min=0)
    return torch.zeros_like(kept).scatter(-1, order.indices, kept)


def keep_top(pre_acts, k, *, dim=-1, largest=True, relu=True, by_abs=False):
    ranking = pre_acts.abs() if by_abs else pre_acts
    indices = ranking.topk(k, dim=dim, largest=largest).indices
    values = pre_acts.gather(dim, indices)
    return torch.zeros_like(pre_acts).scatter(dim, indices, F.relu(values) if relu else values)


def test_topk_activation_accepts_reference_and_rewrites(checks):
    checks.passes(part5.test_topk_activation, reference.topk_activation)
    checks.passes(part5.test_topk_activation, topk_with_sort)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (lambda x, k: keep_top(x, k, relu=False), "keeps negative values"),
        (lambda x, k: keep_top(x, k, dim=0), "taken over the batch"),
        (lambda x, k: keep_top(x, k, largest=False), "k smallest"),
        (lambda x, k: keep_top(x, k, by_abs=True), "absolute value"),
        (stub, "not implemented yet"),
    ],
)
def test_topk_activation_names_each_mistake(checks, mutant, message):
    checks.fails(part5.test_topk_activation, mutant, message)


# AuxK -------------------------------------------------------------------------------------


def make_auxk(*, live_too=False, bias=False, relu=True, clamp=True, scale=True, detach=True, mean=True, loop=False):
    def auxk_loss(self, pre_acts, h, h_reconstructed, dead):
        residual = h - h_reconstructed
        residual = residual.detach() if detach else residual
        k_aux = self.cfg.k_aux
        if loop:  # a correct rewrite: instance by instance, with a large negative instead of -inf
            rows = []
            for inst in range(pre_acts.shape[1]):
                masked = torch.where(dead[inst], pre_acts[:, inst], torch.full_like(pre_acts[:, inst], -1e9))
                top = masked.topk(k_aux, dim=-1)
                latents = torch.zeros_like(masked).scatter(-1, top.indices, top.values.clamp(min=0))
                error = (latents @ self.W_dec_normalized[inst] - residual[:, inst]).pow(2).mean(-1)
                rows.append(error * min(dead[inst].sum().item() / k_aux, 1.0))
            return torch.stack(rows, dim=1)
        masked = pre_acts if live_too else pre_acts.masked_fill(~dead, -torch.inf)
        top = masked.topk(k_aux, dim=-1)
        values = F.relu(top.values) if relu else torch.nan_to_num(top.values, neginf=0.0)
        latents = torch.zeros_like(pre_acts).scatter(-1, top.indices, values)
        decoded = einsum(latents, self.W_dec_normalized, "b i s, i s d -> b i d") + (self.b_dec if bias else 0.0)
        error = (decoded - residual).pow(2)
        error = error.mean(-1) if mean else error.sum(-1)
        factor = dead.sum(-1) / k_aux
        factor = factor.clamp(max=1.0) if clamp else factor
        return error * factor if scale else error

    return auxk_loss


def topk_sae(auxk: Any) -> type:
    return type("LearnerTopKSAE", (reference.TopKToySAE,), {"auxk_loss": auxk})


def test_auxk_loss_accepts_reference_and_rewrites(checks):
    checks.passes(part5.test_auxk_loss, reference.TopKToySAE)
    checks.passes(part5.test_auxk_loss, topk_sae(make_auxk(loop=True)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"live_too": True}, "uses live latents too"),
        ({"bias": True}, "adds b_dec"),
        ({"relu": False}, "keeps negative pre-activations"),
        ({"clamp": False}, "capped at 1"),
        ({"scale": False}, r"not scaled by min\(n_dead / k_aux, 1\)"),
        ({"mean": False}, "summed over d_in"),
        ({"detach": False}, "detach the residual"),
    ],
)
def test_auxk_loss_names_each_mistake(checks, options, message):
    checks.fails(part5.test_auxk_loss, topk_sae(make_auxk(**options)), message)


# BatchTopK --------------------------------------------------------------------------------


def batch_topk_loop(pre_acts, k):
    batch, n_inst, _ = pre_acts.shape
    out = torch.zeros_like(pre_acts)
    n_keep = round(k * batch)
    for inst in range(n_inst):
        values = F.relu(pre_acts[:, inst]).reshape(-1)
        threshold = values.sort(descending=True).values[n_keep - 1]
        out[:, inst] = torch.where(F.relu(pre_acts[:, inst]) >= threshold, F.relu(pre_acts[:, inst]), 0.0)
    return out


def batch_topk_mutant(*, relu=True, pooled=False, per_instance_count="k_batch", per_row=False):
    def activation(pre_acts, k):
        batch, n_inst, d_sae = pre_acts.shape
        x = F.relu(pre_acts) if relu else pre_acts
        if per_row:
            return keep_top(x, 1)
        if pooled:
            flat = x.reshape(-1)
            top = flat.topk(round(k * batch) * n_inst)
            return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape_as(x)
        n_keep = round(k * batch) if per_instance_count == "k_batch" else max(1, round(k))
        flat = x.transpose(0, 1).reshape(n_inst, -1)
        top = flat.topk(n_keep, dim=-1)
        return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(n_inst, batch, d_sae).transpose(0, 1)

    return activation


def test_batch_topk_accepts_reference_and_rewrites(checks):
    checks.passes(part5.test_batch_topk_activation, reference.batch_topk_activation)
    checks.passes(part5.test_batch_topk_activation, batch_topk_loop)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (batch_topk_mutant(relu=False), "Negative values are kept"),
        (batch_topk_mutant(pooled=True), "pooled across instances"),
        (batch_topk_mutant(per_instance_count="k"), r"keep round\(k · batch\)"),
        (batch_topk_mutant(per_row=True), "per-input TopK"),
        (stub, "not implemented yet"),
    ],
)
def test_batch_topk_names_each_mistake(checks, mutant, message):
    checks.fails(part5.test_batch_topk_activation, mutant, message)
