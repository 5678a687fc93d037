"""Mutation suite for Part 5's learner-facing checks (tests/part5_sae_variants.py)."""

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from einops import einsum

import tests.part5_sae_variants as part5
from part_utils.reference import part4_toy_sae as part4
from part_utils.reference import part5_sae_variants as reference
from part_utils.sae_interface import SAEOutput
from part_utils.seeding import forked_rng
from tests.suite.conftest import stub, with_extra_draws

AUX_DECODER = ("aux W", "aux b")


# Gated forward ----------------------------------------------------------------------------


def make_gated_forward(
    *,
    centre: str = "both",
    exp_r_mag: bool = True,
    own_mag_bias: bool = True,
    mag_relu: bool = True,
    gate: str = "indicator",
    l1_on: str = "gate",
    detached: tuple[str, ...] = AUX_DECODER,
    aux_bias: bool = True,
    aux_decoder: str = "normalized",
    sum_reconstruction: bool = False,
    target: str = "h",
    with_aux: bool = True,
    coeff_in_dict: bool = False,
    coeff_in_loss: bool = True,
    batch: str = "mean",
    matmul: bool = False,
    squeeze: bool = False,
    in_place_temporaries: bool = False,
    biases: str = "own",
    magnitude: str = "W_mag",
    aux_weighted: bool = False,
    coeff_to_device: bool = False,
):
    """A Gated forward with one deliberate change; `detached` names where it detaches (the text: AUX_DECODER)."""

    def d(tensor, where):
        return tensor.detach() if where in detached else tensor

    def forward(self, h):
        b_dec = d(self.b_dec, "centring")
        h_gate = h - b_dec if centre in ("both", "gate") else h
        h_mag = h - b_dec if centre in ("both", "mag") else h
        W_gate = self.W_enc
        if matmul:  # a correct rewrite with batched matmuls in float64
            pi_gate = (h_gate.double().transpose(0, 1) @ W_gate.double()).transpose(0, 1) + self.b_enc.double()
            W_mag = d(W_gate, "W_gate in W_mag").double() * torch.exp(d(self.r_mag, "r_mag").double()).unsqueeze(1)
            pi_mag = (h_mag.double().transpose(0, 1) @ W_mag).transpose(0, 1) + d(self.b_mag, "b_mag").double()
        else:
            b_gate, b_mag = (self.b_mag, self.b_enc) if biases == "swapped" else (self.b_enc, self.b_mag)
            pi_gate = einsum(h_gate, W_gate, "b i d, i d s -> b i s") + b_gate
            r_mag = d(self.r_mag, "r_mag")
            scale = r_mag.exp() if exp_r_mag else r_mag
            W_mag = scale[:, None, :] * d(W_gate, "W_gate in W_mag")
            pi_mag = einsum(h_mag, W_mag, "b i d, i d s -> b i s") + (d(b_mag, "b_mag") if own_mag_bias else self.b_enc)
            if magnitude == "scaled pi_gate":
                pi_mag = scale * pi_gate + b_mag
            elif magnitude == "scaled projection":  # correct: exp(r_mag) scales (h - b_dec) W_gate, then b_mag
                pi_mag = scale * einsum(h_mag, W_gate, "b i d, i d s -> b i s") + d(b_mag, "b_mag")
        magnitudes = F.relu(pi_mag) if mag_relu else pi_mag
        if in_place_temporaries:  # a correct rewrite that edits its own tensors in place
            acts = magnitudes.clone()
            acts *= (pi_gate > 0).to(acts.dtype)
        else:
            acts = {
                "indicator": (pi_gate > 0).to(magnitudes.dtype) * magnitudes,
                "where": torch.where(pi_gate > 0, magnitudes, 0.0),  # correct
                "none": magnitudes,
                "relu": F.relu(pi_gate) * magnitudes,
            }[gate]
        acts = d(acts, "acts")
        W_dec = self.W_dec_normalized.to(acts.dtype)
        b_dec_out = self.b_dec.to(acts.dtype)
        h_rec = einsum(acts, d(W_dec, "main W"), "b i s, i s d -> b i d") + d(b_dec_out, "main b")
        aux_W = {"normalized": W_dec, "raw": self.W_dec.to(acts.dtype)}[aux_decoder]
        gate_acts = F.relu(pi_gate)
        via_gate = einsum(d(gate_acts, "gate in aux"), d(aux_W, "aux W"), "b i s, i s d -> b i d") + (
            d(b_dec_out, "aux b") if aux_bias else 0.0
        )
        reference_point = h if target == "h" else h - self.b_dec
        error = (h_rec - reference_point).pow(2)
        sparsity_source = {"gate": gate_acts, "acts": acts, "abs_gate": pi_gate.abs(), "mag": F.relu(pi_mag)}[l1_on]
        sparsity = d(sparsity_source, "gate in sparsity").sum(-1)
        coeff = self.cfg.sparsity_coeff.to(h.device) if coeff_to_device else self.cfg.sparsity_coeff
        losses = {
            "L_reconstruction": error.sum(-1) if sum_reconstruction else error.mean(-1),
            "L_sparsity": coeff * sparsity if coeff_in_dict else sparsity,
            "L_aux": (via_gate - h).pow(2).mean(-1),
        }
        if squeeze:
            losses = {key: value.squeeze() for key, value in losses.items()}
        sparsity_term = losses["L_sparsity"] * (coeff if coeff_in_loss else 1.0)
        aux_term = (losses["L_aux"] * (coeff if aux_weighted else 1.0)) if with_aux else 0.0
        total = losses["L_reconstruction"] + sparsity_term + aux_term
        loss = total.mean(0).sum() if batch == "mean" else total.sum()
        return SAEOutput(losses, loss, acts, h_rec)

    return forward


def gated_forward_in_place_on_h(self, h):
    h -= self.b_dec  # changes the caller's tensor
    return reference.GatedToySAE.forward(self, h + self.b_dec)


def gated_forward_normalising_decoder_in_place(self, h):
    with torch.no_grad():
        self._W_dec.div_(self._W_dec.norm(dim=-1, keepdim=True))
    return reference.GatedToySAE.forward(self, h)


@torch.no_grad()
def gated_forward_without_gradients(self, h):
    return reference.GatedToySAE.forward(self, h)


def gated_forward_coefficient_after_instances(self, h):
    loss_dict, _, acts, h_rec = reference.GatedToySAE.forward(self, h)
    mean = {key: value.mean(0).sum() for key, value in loss_dict.items()}
    return SAEOutput(
        loss_dict,
        mean["L_reconstruction"] + self.cfg.sparsity_coeff.mean() * mean["L_sparsity"] + mean["L_aux"],
        acts,
        h_rec,
    )


def gated(forward: Any) -> type:
    return type("LearnerGatedSAE", (reference.GatedToySAE,), {"forward": forward})


@pytest.mark.parametrize(
    "forward",
    [
        make_gated_forward(matmul=True),
        make_gated_forward(coeff_in_dict=True, coeff_in_loss=False),  # sparsity_coeff inside loss_dict, counted once
        make_gated_forward(in_place_temporaries=True),
        make_gated_forward(gate="where"),
        make_gated_forward(magnitude="scaled projection"),
    ],
)
def test_gated_forward_accepts_reference_and_rewrites(checks, forward):
    checks.passes(part5.test_gated_forward, gated(forward))


def test_gated_forward_accepts_the_reference(checks):
    checks.passes(part5.test_gated_forward, reference.GatedToySAE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"centre": "none"}, "ignores b_dec"),
        ({"centre": "gate"}, "magnitude path uses h without subtracting b_dec"),
        ({"centre": "mag"}, "gate uses h without subtracting b_dec"),
        ({"exp_r_mag": False}, r"multiplies by r_mag; the scale is exp\(r_mag\)"),
        ({"own_mag_bias": False}, "its own bias, b_mag"),
        ({"biases": "swapped"}, "b_gate and b_mag are swapped"),
        ({"magnitude": "scaled pi_gate"}, r"scales π_gate, b_gate included, by exp\(r_mag\)"),
        ({"aux_weighted": True}, "weights L_aux by sparsity_coeff too"),
        ({"coeff_to_device": True}, r"raised AttributeError.*sparsity_coeff is one number \(0.4\)"),
        ({"mag_relu": False}, "magnitudes have no ReLU"),
        ({"gate": "none"}, "not gated"),
        ({"gate": "relu"}, "the gate is the indicator"),
        ({"l1_on": "acts"}, r"put the penalty on ReLU\(π_gate\)"),
        ({"l1_on": "abs_gate"}, r"takes \|π_gate\|"),
        ({"l1_on": "mag"}, r"penalises the magnitudes"),
        ({"l1_on": "acts", "coeff_in_dict": True, "coeff_in_loss": False}, r"put the penalty on ReLU\(π_gate\)"),
        (
            {"detached": ()},
            r"L_aux sends gradient into the decoder: decode ReLU\(π_gate\) with "
            r"W_dec_normalized.detach\(\) and b_dec.detach\(\)",
        ),
        ({"detached": ("aux b",)}, "L_aux sends gradient into W_dec"),
        ({"detached": ("aux W",)}, "L_aux sends gradient into b_dec"),
        ({"detached": (*AUX_DECODER, "main W", "main b")}, "detached in the main reconstruction too"),
        ({"detached": (*AUX_DECODER, "main W")}, "W_dec_normalized is detached in the main reconstruction too"),
        ({"detached": (*AUX_DECODER, "centring")}, "detached where h is centred"),
        ({"detached": (*AUX_DECODER, "W_gate in W_mag")}, "W_mag is built from a detached W_gate"),
        ({"detached": (*AUX_DECODER, "r_mag")}, "r_mag gets no gradient"),
        ({"detached": (*AUX_DECODER, "gate in aux")}, r"ReLU\(π_gate\) is detached in L_aux"),
        ({"detached": (*AUX_DECODER, "gate in sparsity")}, r"ReLU\(π_gate\) is detached in L_sparsity"),
        ({"detached": (*AUX_DECODER, "acts")}, "`acts` is detached"),
        ({"aux_bias": False}, "L_aux leaves out b_dec"),
        ({"aux_decoder": "raw"}, "L_aux uses the unnormalised decoder"),
        ({"sum_reconstruction": True}, "L_reconstruction is summed over d_in"),
        ({"target": "centred"}, "L_reconstruction compares with h - b_dec"),
        ({"with_aux": False}, "leaves out L_aux"),
        ({"coeff_in_loss": False}, "leaves out sparsity_coeff"),
        ({"coeff_in_dict": True}, r"sparsity_coeff is counted twice: loss_dict\[\"L_sparsity\"\] already includes it"),
        ({"batch": "sum"}, "summed over the batch"),
        ({"squeeze": True}, r"returned shape \(3,\), but \[batch, inst\] here is \(1, 3\)"),
    ],
)
def test_gated_forward_names_each_mistake(checks, options, message):
    checks.fails(part5.test_gated_forward, gated(make_gated_forward(**options)), message)


@pytest.mark.parametrize(
    ("forward", "message"),
    [
        (gated_forward_in_place_on_h, "`forward` changed `h` in place"),
        (gated_forward_normalising_decoder_in_place, r"`forward` changed `self._W_dec` in place"),
        (gated_forward_without_gradients, "carries no gradient"),
        (gated_forward_coefficient_after_instances, "after summing over instances"),
        (stub, "not implemented yet"),
    ],
)
def test_gated_forward_names_side_effects_and_lost_gradients(checks, forward, message):
    checks.fails(part5.test_gated_forward, gated(forward), message)


def test_gated_forward_says_when_forward_was_never_attached(checks):
    checks.fails(part5.test_gated_forward, type("GatedToySAE", (part4.ToySAE,), {}), "never attached")


def gated_encode_ungated(self, h):
    """The magnitudes alone: the gate's indicator is missing."""
    centred = h - self.b_dec
    pi_gate = einsum(centred, self.W_enc, "b i d, i d s -> b i s") + self.b_enc
    W_mag = self.r_mag.exp()[:, None, :] * self.W_enc
    return F.relu(einsum(centred, W_mag, "b i d, i d s -> b i s") + self.b_mag), pi_gate


def gated_encode_swapped(self, h):
    acts, pi_gate = reference.GatedToySAE.encode_with_gate(self, h)
    return pi_gate, acts


def gated_encode_relu_gate(self, h):
    acts, pi_gate = reference.GatedToySAE.encode_with_gate(self, h)
    return acts, F.relu(pi_gate)


def gated_forward_calling_encode(self, h):
    """A correct rewrite in the text's shape: encode with the gate, decode, and the gate for the losses."""
    acts, pi_gate = self.encode_with_gate(h)
    h_rec = self.decode(acts)
    gate = F.relu(pi_gate)
    via_gate = einsum(gate, self.W_dec_normalized.detach(), "b i s, i s d -> b i d") + self.b_dec.detach()
    losses = {
        "L_reconstruction": (h_rec - h).pow(2).mean(-1),
        "L_sparsity": gate.sum(-1),
        "L_aux": (via_gate - h).pow(2).mean(-1),
    }
    per_input = losses["L_reconstruction"] + self.cfg.sparsity_coeff * losses["L_sparsity"] + losses["L_aux"]
    return SAEOutput(losses, per_input.mean(0).sum(), acts, h_rec)


def test_gated_forward_accepts_a_forward_that_calls_encode(checks):
    checks.passes(part5.test_gated_forward, gated(gated_forward_calling_encode))


@pytest.mark.parametrize(
    ("encode", "message"),
    [
        (gated_encode_ungated, "not gated"),
        (gated_encode_swapped, r"returns \(pi_gate, acts\)"),
        (gated_encode_relu_gate, r"returns ReLU\(π_gate\); return π_gate itself"),
    ],
)
def test_gated_forward_tests_the_learners_own_encode(checks, encode, message):
    """A forward that calls `self.encode_with_gate` is checked with the learner's, not the reference's."""
    methods = {"forward": gated_forward_calling_encode, "encode_with_gate": encode}
    checks.fails(part5.test_gated_forward, type("LearnerGatedSAE", (reference.GatedToySAE,), methods), message)


def test_gated_forward_says_when_encode_was_never_written(checks):
    learner = type("GatedToySAE", (part4.ToySAE,), {"forward": gated_forward_calling_encode})
    checks.fails(part5.test_gated_forward, learner, "no `encode_with_gate` of yours")


def test_gated_forward_asks_for_named_fields(checks):
    checks.fails(
        part5.test_gated_forward, gated(lambda self, h: tuple(reference.GatedToySAE.forward(self, h))), "plain tuple"
    )


def test_gated_forward_inputs_keep_clear_of_the_gate():
    with forked_rng(0):
        for sae, h in part5._gated_cases():
            e = part5._gated_expectation(sae, h)
            assert min(e.pi_gate.abs().min(), e.pi_mag.abs().min()) > part5.GATE_MARGIN


# Heaviside and JumpReLU -------------------------------------------------------------------


def make_step_function(
    *,
    jump: bool,
    sign: float = -1.0,
    half_width: float = 0.5,
    closed: bool = False,
    kernel_scaled: bool = True,
    forward_at_theta: bool = False,
    forward_kind: str = "default",
    scale_by: str = "default",
    grad_to_z: str = "default",
    reduce: str = "sum",
    use_upstream: bool = True,
    bandwidth_grad: bool = False,
    n_grads: int = 3,
    store: str = "ctx",
    in_place_forward: bool = False,
    in_place_grad_output: bool = False,
    fixed_bandwidth: float | None = None,
    forward_dtype: torch.dtype | None = None,
    kernel: str = "divide",
) -> type[torch.autograd.Function]:
    """A Heaviside (jump=False) or JumpReLU (jump=True) with one deliberate change (or a correct variation)."""

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, z, threshold, bandwidth):
            if store == "attributes":  # correct: tensors kept as ctx attributes
                ctx.z, ctx.threshold = z, threshold
            elif store in ("output", "output too"):
                pass  # saved below, once the output exists
            elif store == "class":
                Step.saved = (z, threshold)
            else:
                ctx.save_for_backward(z, threshold)
            if store == "class bandwidth":
                Step.bandwidth = bandwidth
            else:
                ctx.bandwidth = bandwidth
            if in_place_forward:
                z.sub_(threshold)  # compares with 0 below, but the caller's z has changed
                threshold = torch.zeros_like(threshold)
            active = (z >= threshold if forward_at_theta else z > threshold).to(z.dtype)
            if forward_kind == "relu":
                return F.relu(z)
            if forward_kind == "shifted":
                return (z - threshold) * active
            if forward_kind == "below":
                return (z < threshold).to(z.dtype)
            output = z * active if jump else active
            if store == "output":  # the output saved in z's place
                ctx.save_for_backward(output, threshold)
            elif store == "output too":  # correct: z and the output, whose non-zeros are where z > θ > 0
                ctx.save_for_backward(z, threshold, output)
            return output if forward_dtype is None else output.to(forward_dtype)

        @staticmethod
        def backward(ctx, grad_output):
            if store == "attributes":
                z, threshold = ctx.z, ctx.threshold
            elif store == "class":
                z, threshold = Step.saved
            else:
                z, threshold = ctx.saved_tensors[:2]
            bandwidth = Step.bandwidth if store == "class bandwidth" else ctx.bandwidth
            bandwidth = bandwidth if fixed_bandwidth is None else fixed_bandwidth
            distance = (z - threshold).abs() / (bandwidth if kernel_scaled else 1.0)
            if kernel == "abs":  # correct: |z - θ| < ε/2, without dividing
                window = ((z - threshold).abs() < bandwidth / 2).to(z.dtype)
            else:
                window = (distance <= half_width if closed else distance < half_width).to(z.dtype)
            default_scale = threshold / bandwidth if jump else 1.0 / bandwidth
            scale = {
                "default": default_scale,
                "none": threshold if jump else 1.0,
                "inverse_bandwidth": 1.0 / bandwidth,
                "times_bandwidth": (threshold if jump else 1.0) * bandwidth,
                "z_over_bandwidth": z / bandwidth,
                "theta_over_bandwidth": threshold / bandwidth,
                "theta_squared": threshold**2 / bandwidth,
            }[scale_by]
            upstream = grad_output if use_upstream else torch.ones_like(grad_output)
            grad_threshold = sign * scale * window * upstream
            if reduce == "mean":
                grad_threshold = grad_threshold.sum_to_size(threshold.shape) * threshold.numel() / z.numel()
            elif reduce == "mean0":
                grad_threshold = grad_threshold.mean(0)
            elif reduce == "sum0":  # correct: z always has one batch dimension more than θ here
                grad_threshold = grad_threshold.sum(0)
            elif reduce == "scalar":
                grad_threshold = grad_threshold.mean()
            elif reduce == "sum_last":  # right for 1-D z, refused by autograd for the SAE's shapes
                grad_threshold = grad_threshold.sum(-1)
            # reduce == "sum": returned per element; autograd sums it to threshold's shape
            default_z = (z > threshold).to(z.dtype) * grad_output if jump else None
            if store == "output too" and jump:
                default_z = (ctx.saved_tensors[2] != 0).to(z.dtype) * grad_output
            grad_z = {
                "default": default_z,
                "identity": grad_output,
                "zero": torch.zeros_like(z),
                "kernel": window / bandwidth * grad_output,
                "relu": (z > 0).to(z.dtype) * grad_output,
                "no_upstream": (z > threshold).to(z.dtype),
            }[grad_to_z]
            if in_place_grad_output:
                grad_output *= window  # written into autograd's buffer
            grads = (grad_z, grad_threshold, torch.zeros(()) if bandwidth_grad else None)
            return grads[:n_grads]

    return Step


@pytest.mark.parametrize(
    "options",
    [
        {},  # the per-element θ gradient, which autograd sums to θ's shape
        {"reduce": "sum0"},
        {"store": "attributes"},
        {"grad_to_z": "zero"},  # Heaviside: zeros instead of None
        {"kernel": "abs"},
    ],
)
def test_heaviside_accepts_reference_and_rewrites(checks, options):
    checks.passes(part5.test_heaviside, make_step_function(jump=False, **options))


@pytest.mark.parametrize("options", [{}, {"reduce": "sum0"}, {"store": "attributes"}, {"store": "output too"}])
def test_jumprelu_accepts_rewrites(checks, options):
    checks.passes(part5.test_jumprelu, make_step_function(jump=True, **options))


def test_heaviside_and_jumprelu_accept_the_reference(checks):
    checks.passes(part5.test_heaviside, reference.Heaviside)
    checks.passes(part5.test_jumprelu, reference.JumpReLU)


COMMON_STEP_MISTAKES = [
    ({"sign": 1.0}, "wrong sign"),
    ({"half_width": 1.0}, "twice too wide"),
    ({"kernel_scaled": False}, r"evaluated at z - θ; its argument is u = \(z - θ\)/ε"),
    ({"closed": True}, "open interval"),
    ({"forward_at_theta": True}, "fires at z = θ"),
    ({"scale_by": "none"}, "missing the 1/ε factor"),
    ({"scale_by": "times_bandwidth"}, "multiplies by ε"),
    ({"reduce": "mean"}, "averaged over the batch; sum over the batch"),
    ({"reduce": "mean0"}, "averaged over the batch; sum over the batch"),
    ({"reduce": "scalar"}, "averaged over the batch; sum over the batch"),
    (
        {"reduce": "sum_last"},
        r"returns a gradient for threshold of shape \[10, 3\], which autograd cannot sum to threshold's shape \[3, 7\]",
    ),
    ({"use_upstream": False}, "ignores grad_output"),
    ({"bandwidth_grad": True}, "returns a gradient for bandwidth"),
    ({"n_grads": 2}, "one gradient per input of forward"),
    ({"store": "class"}, "used what a later forward call stored"),
    ({"store": "class bandwidth"}, "bandwidth of a later forward call"),
    ({"in_place_forward": True}, r"`{name}.forward` changed `z` in place"),
    ({"in_place_grad_output": True}, r"`{name}.backward` changed `grad_output` in place"),
    ({"fixed_bandwidth": 0.001}, r"uses a bandwidth of 0.001, not the ε each forward call receives"),
    ({"fixed_bandwidth": 0.1}, r"uses a bandwidth of 0.1, not the ε each forward call receives"),
    ({"fixed_bandwidth": 0.37}, r"uses a bandwidth of 0.37, not the ε each forward call receives"),
    ({"store": "output"}, r"computes the kernel from forward's output"),
    ({"forward_dtype": torch.float32}, r"returns torch.float32 for torch.float64 z"),
]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        *COMMON_STEP_MISTAKES,
        ({"grad_to_z": "identity"}, "passes grad_output through to z"),
        ({"grad_to_z": "kernel"}, "passes the kernel's pseudo-derivative to z"),
        ({"scale_by": "theta_over_bandwidth"}, "has a θ factor, which belongs to JumpReLU"),
        ({"forward_kind": "below"}, "is 1 below θ"),
    ],
)
def test_heaviside_names_each_mistake(checks, options, message):
    checks.fails(
        part5.test_heaviside, make_step_function(jump=False, **options), message.replace("{name}", "Heaviside")
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        *COMMON_STEP_MISTAKES,
        ({"scale_by": "inverse_bandwidth"}, "uses 1/ε; it is -\\(θ/ε\\)"),
        ({"scale_by": "z_over_bandwidth"}, "uses z/ε; the factor is θ/ε"),
        ({"scale_by": "theta_squared"}, "has θ twice"),
        ({"grad_to_z": "identity"}, "passes the gradient to z everywhere"),
        ({"grad_to_z": "zero"}, "passes no gradient to z"),
        ({"grad_to_z": "relu"}, "wherever z > 0, as a ReLU would"),
        ({"grad_to_z": "no_upstream"}, "gradient for z ignores grad_output"),
        ({"forward_kind": "relu"}, "zeroes only negative pre-activations"),
        ({"forward_kind": "shifted"}, "subtracts θ from the values it keeps"),
    ],
)
def test_jumprelu_names_each_mistake(checks, options, message):
    checks.fails(part5.test_jumprelu, make_step_function(jump=True, **options), message.replace("{name}", "JumpReLU"))


def test_averaged_threshold_gradient_is_named_on_the_hand_checkable_case_too():
    """Averaging over the hand case's four inputs must already be told to sum, whatever else fits the numbers."""
    case = part5._step_cases()[0]
    with pytest.raises(part5.CheckFailure, match="sum over the batch"):
        part5._check_step_grad_threshold(case.threshold * 0 + (-4.0 / 4), case, "Heaviside", jump=False)


def test_step_checks_name_swapped_forwards_and_non_functions(checks):
    checks.fails(part5.test_jumprelu, make_step_function(jump=False), "returns H")
    checks.fails(part5.test_heaviside, make_step_function(jump=True), "returns just H")
    checks.fails(part5.test_jumprelu, lambda z, threshold, bandwidth: z, "autograd.Function subclass")
    with pytest.warns(DeprecationWarning):  # torch warns that autograd functions should not be instantiated
        instance = reference.Heaviside()
    checks.fails(part5.test_heaviside, instance, "not an instance of it")


def test_step_cases_put_inputs_exactly_on_the_kernel_edges():
    edges = part5._step_cases()[1]
    u = (edges.z - edges.threshold) / edges.bandwidth
    assert {-0.5, 0.0, 0.5} <= set(u.tolist())


# remove_parallel_component ----------------------------------------------------------------


def published_projection(grad, W_dec):
    """The published function, normalising inside: the rows arrive normalised, so this changes them by ~1e-12."""
    unit = W_dec / (W_dec.norm(dim=-1, keepdim=True) + 1e-6)
    return grad - torch.einsum("...d,...d->...", grad, unit)[..., None] * unit


def projection_loop(grad, W_dec):
    rows = [g - torch.dot(g, w) * w for g, w in zip(grad, W_dec)]
    return torch.stack(rows)


def projection_in_place_on_a_copy(grad, W_dec):
    result = grad.clone()
    result -= (grad * W_dec).sum(-1, keepdim=True) * W_dec
    return result


def projection_in_place(grad, W_dec):
    grad -= (grad * W_dec).sum(-1, keepdim=True) * W_dec
    return grad


def renormalising_projection(grad, W_dec):
    unit = F.normalize(W_dec, dim=-1)
    return grad - (grad * unit).sum(-1, keepdim=True) * unit


@pytest.mark.parametrize(
    "project",
    [
        reference.remove_parallel_component,
        lambda grad, W_dec: grad - torch.einsum("sd,sd->s", grad, W_dec)[:, None] * W_dec,
        lambda grad, W_dec: grad - torch.diagonal(grad @ W_dec.T)[:, None] * W_dec,
        published_projection,
        projection_loop,
        projection_in_place_on_a_copy,
        lambda grad, W_dec: grad - torch.bmm(grad[:, None, :], W_dec[:, :, None])[:, :, 0] * W_dec,
    ],
)
def test_remove_parallel_component_accepts_reference_and_rewrites(checks, project):
    checks.passes(part5.test_remove_parallel_component, project)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (lambda g, w: (g * w).sum(-1, keepdim=True) * w, "returned the parallel component"),
        (lambda g, w: g + (g * w).sum(-1, keepdim=True) * w, "added the parallel component"),
        (lambda g, w: g - (g * w).sum(0, keepdim=True) * w, "wrong axis"),
        (lambda g, w: g - (g * w).sum(-1, keepdim=True), "subtracted the dot product itself"),
        (lambda g, w: g - (g @ w.T) @ w, r"full matrix product, \(g Wᵀ\) W"),
        (lambda g, w: g - w @ (w.T @ g), "full matrix product"),
        (lambda g, w: g.clone(), "returned the gradient unchanged"),
        (lambda g, w: g - 2 * (g * w).sum(-1, keepdim=True) * w, "twice"),
        (renormalising_projection, "You normalise the rows again"),
        (lambda g, w: g - (g * (w / w.norm(dim=0))).sum(-1, keepdim=True) * (w / w.norm(dim=0)), "over d_sae"),
        (projection_in_place, "`remove_parallel_component` changed `grad` in place"),
        (lambda g, w: g - (g * w).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True) * w, r"divide by ‖w‖²"),
        (lambda g, w: g - (g * w).sum(-1) * w, "lost their row axis"),
        (lambda g, w: g - torch.dot(g.flatten(), w.flatten()) * w, "one dot product over the whole matrix"),
        (lambda g, w: g - (g * w).sum(-1, keepdim=True) * g, "times the gradient row"),
        (lambda g, w: (g - (g * w).sum(-1, keepdim=True) * w).float(), "returns torch.float32 for torch.float64"),
        (stub, "not implemented yet"),
    ],
)
def test_remove_parallel_component_names_each_mistake(checks, mutant, message):
    checks.fails(part5.test_remove_parallel_component, mutant, message)


# reference parity (the learner-facing wrapper) ---------------------------------------------


def test_reference_parity_check_passes_the_reference(checks):
    checks.passes(
        lambda _: part5.test_reference_parity(
            reference.JumpReLU, reference.Heaviside, reference.remove_parallel_component
        ),
        None,
    )


def test_reference_parity_check_passes_rewrites(checks):
    checks.passes(
        lambda _: part5.test_reference_parity(
            make_step_function(jump=True, store="attributes"), make_step_function(jump=False), published_projection
        ),
        None,
    )


@pytest.mark.parametrize(
    ("jumprelu", "heaviside", "project", "message"),
    [
        (
            make_step_function(jump=True, sign=1.0),
            reference.Heaviside,
            reference.remove_parallel_component,
            "grad log θ",
        ),
        (
            make_step_function(jump=True, grad_to_z="identity"),
            reference.Heaviside,
            reference.remove_parallel_component,
            "grad b_",
        ),
        (
            reference.JumpReLU,
            make_step_function(jump=False, half_width=1.0),
            reference.remove_parallel_component,
            "grad log θ",
        ),
        (reference.JumpReLU, reference.Heaviside, lambda g, w: g, "three training steps"),
        (reference.JumpReLU, reference.Heaviside, renormalising_projection, "without the published 1e-6"),
        (reference.Heaviside, reference.JumpReLU, reference.remove_parallel_component, "swapped in the call"),
        (
            make_step_function(jump=False),
            make_step_function(jump=True),
            reference.remove_parallel_component,
            "swapped in the call",
        ),
        (reference.JumpReLU, reference.JumpReLU, reference.remove_parallel_component, "the same class"),
        (reference.JumpReLU, reference.Heaviside, lambda g, w: g - (g * w).sum() * w, "three training steps"),
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


def topk_by_threshold(pre_acts, k, *, strict=False):
    kth = pre_acts.topk(k, dim=-1).values[..., -1:]
    kept = pre_acts > kth if strict else pre_acts >= kth
    return torch.where(kept, F.relu(pre_acts), 0.0)


def topk_by_scattered_mask(pre_acts, k):
    mask = torch.zeros_like(pre_acts).scatter(-1, pre_acts.topk(k, dim=-1).indices, 1.0)
    return F.relu(pre_acts) * mask


def topk_by_kthvalue(pre_acts, k):
    kth = pre_acts.kthvalue(k, dim=-1, keepdim=True).values  # the k-th smallest
    return torch.where(pre_acts >= kth, F.relu(pre_acts), 0.0)


def topk_relu_first(pre_acts, k):
    return keep_top(F.relu(pre_acts), k)


def topk_in_place_on_a_copy(pre_acts, k):
    out = pre_acts.clone()
    out[out < out.topk(k, dim=-1).values[..., -1:]] = 0
    return out.clamp_(min=0)


def topk_zeroing_input(pre_acts, k):
    kth = pre_acts.topk(k, dim=-1).values[..., -1:]
    pre_acts[pre_acts < kth] = 0  # the AuxK loss would then read zeros
    return F.relu(pre_acts)


def topk_over_all_instances(pre_acts, k):
    batch, n_inst, d_sae = pre_acts.shape
    return keep_top(pre_acts.reshape(batch, 1, -1), k).reshape(batch, n_inst, d_sae)


def topk_straight_through(pre_acts, k):
    kept = keep_top(pre_acts, k)
    return pre_acts + (kept - pre_acts).detach()


def topk_from_next_value(pre_acts, k):
    """Correct for k < d_sae, but topk(k + 1) fails when k = d_sae."""
    next_value = pre_acts.topk(k + 1, dim=-1).values[..., -1:]
    return torch.where(pre_acts > next_value, F.relu(pre_acts), 0.0)


@pytest.mark.parametrize(
    "function",
    [
        reference.topk_activation,
        topk_with_sort,
        topk_by_threshold,
        topk_relu_first,
        topk_by_scattered_mask,
        topk_in_place_on_a_copy,
        lambda x, k: topk_with_sort(x, k).float(),
    ],
)
def test_topk_activation_accepts_reference_and_rewrites(checks, function):
    checks.passes(part5.test_topk_activation, function)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (lambda x, k: keep_top(x, k, relu=False), "keeps negative values"),
        (lambda x, k: keep_top(x, k, dim=0), "taken over the batch"),
        (lambda x, k: keep_top(x, k, dim=1), "taken over instances"),
        (topk_over_all_instances, "across all instances of an input"),
        (lambda x, k: keep_top(x, k, largest=False), "k smallest"),
        (lambda x, k: keep_top(x, k, by_abs=True), "absolute value"),
        (lambda x, k: topk_by_threshold(x, k, strict=True), "keeps k - 1 values"),
        (
            lambda x, k: torch.zeros_like(x).scatter(-1, x.topk(k, dim=-1).indices, F.relu(x)),
            "scattered the whole of ReLU",
        ),
        (topk_by_kthvalue, r"keeps more than k = 3 values per input: keep exactly k \(if you used kthvalue"),
        (lambda x, k: keep_top(x, k - 1), "keeps k - 1 values"),
        (lambda x, k: keep_top(x, k + 1), "keeps k \\+ 1 values"),
        (topk_zeroing_input, "`topk_activation` changed `pre_acts` in place"),
        (lambda x, k: keep_top(x.detach(), k), "carries no gradient back to pre_acts"),
        (topk_straight_through, "reaches every pre-activation"),
        (topk_from_next_value, "raised RuntimeError"),
        (stub, "not implemented yet"),
    ],
)
def test_topk_activation_names_each_mistake(checks, mutant, message):
    checks.fails(part5.test_topk_activation, mutant, message)


@pytest.mark.parametrize(
    "check",
    [part5.test_topk_activation, part5.test_batch_topk_activation, part5.test_remove_parallel_component],
)
def test_free_function_checks_name_a_class_passed_instead(checks, check):
    checks.fails(check, reference.TopKToySAE, "is a function of its own, not a method of `TopKToySAE`")


# AuxK -------------------------------------------------------------------------------------


def make_auxk(
    *,
    live_too=False,
    live_only=False,
    bias=False,
    relu="relu",
    clamp=True,
    scale="per instance",
    detach=True,
    detach_decoder=False,
    mean=True,
    flip=False,
    decoder="normalized",
    use_k=False,
    fill="-inf",
    via_reconstruction=False,
    loop=False,
    loop_min_dead=False,
    in_place=False,
    rank="value",
):
    def auxk_loss(self, pre_acts, h, h_reconstructed, dead):
        residual = h - h_reconstructed
        residual = residual.detach() if detach else residual
        residual = -residual if flip else residual
        k_aux = self.cfg.k if use_k else self.cfg.k_aux
        W = {"normalized": self.W_dec_normalized, "raw": self.W_dec}[decoder]
        W = W.detach() if detach_decoder else W
        if loop:  # a correct rewrite: instance by instance, with a large negative instead of -inf
            rows = []
            for inst in range(pre_acts.shape[1]):
                n_dead = int(dead[inst].sum())
                if loop_min_dead and n_dead == 0:  # a correct rewrite: nothing to pick, nothing to pay
                    rows.append(torch.zeros_like(pre_acts[:, inst, 0]))
                    continue
                masked = torch.where(dead[inst], pre_acts[:, inst], torch.full_like(pre_acts[:, inst], -1e9))
                top = masked.topk(min(k_aux, n_dead) if loop_min_dead else k_aux, dim=-1)
                latents = torch.zeros_like(masked).scatter(-1, top.indices, top.values.clamp(min=0))
                error = (latents @ W[inst] - residual[:, inst]).pow(2).mean(-1)
                rows.append(error * min(n_dead / k_aux, 1.0))
            return torch.stack(rows, dim=1)
        pool = torch.ones_like(dead) if live_too else ~dead if live_only else dead
        if in_place:
            pre_acts.masked_fill_(~pool, -torch.inf)
            masked = pre_acts
        elif fill == "-inf":
            masked = pre_acts.masked_fill(~pool, -torch.inf)
        elif fill == "relu first":  # a correct rewrite: ReLU, then live latents set to 0
            masked = F.relu(pre_acts).masked_fill(~pool, 0.0)
        else:  # a correct rewrite: live latents multiplied by 0, and a ReLU'd zero adds nothing
            masked = pre_acts * pool
        if rank == "abs":
            indices = pre_acts.abs().masked_fill(~pool, -torch.inf).topk(k_aux, dim=-1).indices
            top = type(masked.topk(1))((masked.gather(-1, indices), indices))
        elif rank == "batch mean":
            indices = masked.mean(0, keepdim=True).topk(k_aux, dim=-1).indices.expand(*masked.shape[:2], k_aux)
            top = type(masked.topk(1))((masked.gather(-1, indices), indices))
        elif rank == "smallest":
            top = pre_acts.masked_fill(~pool, torch.inf).topk(k_aux, dim=-1, largest=False)
            top = type(top)((top.values.masked_fill(torch.isinf(top.values), -torch.inf), top.indices))
        else:
            top = masked.topk(k_aux, dim=-1)
        values = {
            "relu": F.relu(top.values),
            "none": torch.nan_to_num(top.values, neginf=0.0),
            "mask multiply": top.values * (top.values > 0),  # -inf · 0 = NaN where no latent is dead
        }[relu]
        latents = torch.zeros_like(pre_acts).scatter(-1, top.indices, values)
        decoded = einsum(latents, W, "b i s, i s d -> b i d") + (self.b_dec if bias else 0.0)
        if via_reconstruction:  # a correct rewrite: (ê + h_rec - h)² with h_rec detached
            error = (decoded + h_reconstructed.detach() - h).pow(2)
        else:
            error = (decoded - residual).pow(2)
        error = error.mean(-1) if mean else error.sum(-1)
        counts = dead.sum(-1) if scale != "over all instances" else dead.sum().expand(dead.shape[0])
        factor = counts / k_aux
        factor = factor.clamp(max=1.0) if clamp else factor
        if scale == "fraction":
            factor = (dead.float().mean(-1) / k_aux).clamp(max=1.0)
        elif scale == "at least 1":
            factor = (counts / k_aux).clamp(min=1.0)
        elif scale == "min count":  # a correct rewrite: min(n_dead, k_aux) / k_aux
            factor = counts.clamp(max=k_aux) / k_aux
        return error if scale == "none" else error * factor

    return auxk_loss


def topk_sae(auxk: Any) -> type:
    return type("LearnerTopKSAE", (reference.TopKToySAE,), {"auxk_loss": auxk})


@pytest.mark.parametrize(
    "options",
    [
        {"loop": True},
        {"loop": True, "loop_min_dead": True},
        {"fill": "zero"},
        {"via_reconstruction": True},
        {"fill": "relu first", "scale": "min count"},
    ],
)
def test_auxk_loss_accepts_reference_and_rewrites(checks, options):
    checks.passes(part5.test_auxk_loss, topk_sae(make_auxk(**options)))


def test_auxk_loss_accepts_the_reference(checks):
    checks.passes(part5.test_auxk_loss, reference.TopKToySAE)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"live_too": True}, "uses live latents too"),
        ({"live_only": True}, "uses the live latents instead of the dead ones"),
        ({"bias": True}, "adds b_dec"),
        ({"relu": "none"}, "keeps negative pre-activations"),
        ({"relu": "mask multiply"}, "NaN or inf for an instance with fewer than k_aux dead latents"),
        ({"clamp": False}, "capped at 1"),
        ({"scale": "none"}, r"not scaled by min\(n_dead / k_aux, 1\)"),
        ({"scale": "over all instances"}, "counted over all instances"),
        ({"mean": False}, "summed over d_in"),
        ({"detach": False}, "detach the residual"),
        ({"detach_decoder": True}, "leaves the decoder without a gradient"),
        ({"flip": True}, "sign is flipped"),
        ({"decoder": "raw"}, "unnormalised decoder"),
        ({"use_k": True}, r"picks cfg.k latents"),
        ({"in_place": True}, "`auxk_loss` changed `pre_acts` in place"),
        ({"rank": "abs"}, "ranks the dead latents by absolute value"),
        ({"rank": "batch mean"}, "picks the same dead latents for every input"),
        ({"rank": "smallest"}, "picks the smallest dead pre-activations"),
        ({"scale": "fraction"}, "n_dead is the fraction of latents that are dead"),
        ({"scale": "at least 1"}, r"at least 1 \(clamp\(min=1\)\)"),
    ],
)
def test_auxk_loss_names_each_mistake(checks, options, message):
    checks.fails(part5.test_auxk_loss, topk_sae(make_auxk(**options)), message)


def test_auxk_loss_names_a_method_never_attached(checks):
    checks.fails(part5.test_auxk_loss, type("TopKToySAE", (part4.ToySAE,), {}), "never attached")


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


def batch_topk_mutant(
    *,
    relu="before",
    pooled=False,
    count="round",
    per_row=False,
    transpose=True,
    transpose_back=None,
    in_place=False,
    detach=False,
    per_latent=False,
):
    def activation(pre_acts, k):
        batch, n_inst, d_sae = pre_acts.shape
        if in_place:
            pre_acts.relu_()
        x = F.relu(pre_acts) if relu == "before" else pre_acts
        x = x.detach() if detach else x
        if per_row:
            return keep_top(x, 1)
        n_keep = {
            "round": round(k * batch),
            "int": int(k * batch),
            "ceil": -int(-k * batch // 1),
            "k": max(1, round(k)),
            "inst": round(k * n_inst),
            "d_sae": round(k * d_sae),
            "k batch d_sae": round(k * batch * d_sae),
        }[count]
        if per_latent:
            top = x.topk(min(n_keep, batch), dim=0)
            return torch.zeros_like(x).scatter(0, top.indices, top.values)
        if pooled:
            flat = x.reshape(-1)
            top = flat.topk(n_keep * n_inst)
            return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape_as(x)
        flat = x.transpose(0, 1).reshape(n_inst, -1) if transpose else x.reshape(n_inst, -1)
        top = flat.topk(min(n_keep, flat.shape[-1]), dim=-1)
        kept = torch.zeros_like(flat).scatter(-1, top.indices, top.values)
        back = transpose if transpose_back is None else transpose_back
        kept = kept.reshape(n_inst, batch, d_sae).transpose(0, 1) if back else kept.reshape(batch, n_inst, d_sae)
        return F.relu(kept) if relu == "after" else kept

    return activation


def batch_topk_latent_major(pre_acts, k):
    """A correct rewrite: each instance flattened latent by latent, and put back the same way."""
    batch, n_inst, d_sae = pre_acts.shape
    flat = F.relu(pre_acts).permute(1, 2, 0).reshape(n_inst, -1)
    top = flat.topk(round(k * batch), dim=-1)
    kept = torch.zeros_like(flat).scatter(-1, top.indices, top.values)
    return kept.reshape(n_inst, d_sae, batch).permute(2, 0, 1)


def batch_topk_by_kthvalue(pre_acts, k):
    batch, n_inst, d_sae = pre_acts.shape
    flat = F.relu(pre_acts.double()).permute(1, 0, 2).reshape(n_inst, -1)
    n_keep = round(k * batch)
    threshold = flat.kthvalue(flat.shape[-1] - n_keep + 1, dim=-1, keepdim=True).values
    kept = torch.where(flat >= threshold, flat, 0.0)
    return kept.reshape(n_inst, batch, d_sae).permute(1, 0, 2)


@pytest.mark.parametrize(
    "function",
    [
        reference.batch_topk_activation,
        batch_topk_loop,
        batch_topk_mutant(relu="after"),
        batch_topk_by_kthvalue,
        batch_topk_latent_major,
    ],
)
def test_batch_topk_accepts_reference_and_rewrites(checks, function):
    checks.passes(part5.test_batch_topk_activation, function)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (batch_topk_mutant(relu="none"), "Negative values are kept"),
        (batch_topk_mutant(pooled=True), "pooled across instances"),
        (batch_topk_mutant(count="k"), r"keep round\(k · batch\)"),
        (batch_topk_mutant(per_row=True), "per-input TopK"),
        (batch_topk_mutant(count="int"), r"truncated with int\(\)"),
        (batch_topk_mutant(count="ceil"), "rounded up"),
        (batch_topk_mutant(transpose=False), "without moving inst first"),
        (batch_topk_mutant(transpose_back=False), "put back with a plain reshape"),
        (batch_topk_mutant(per_latent=True), "top values of each latent over the batch"),
        (batch_topk_mutant(count="inst"), r"number of instances \(shape\[1\]\) as the batch size"),
        (batch_topk_mutant(count="d_sae"), r"d_sae \(shape\[-1\]\) as the batch size"),
        (batch_topk_mutant(count="k batch d_sae"), r"You keep \d+ values per instance, but round\(k · batch\) = 25"),
        (batch_topk_mutant(in_place=True), "`batch_topk_activation` changed `pre_acts` in place"),
        (batch_topk_mutant(detach=True), "carries no gradient back to pre_acts"),
        (stub, "not implemented yet"),
    ],
)
def test_batch_topk_names_each_mistake(checks, mutant, message):
    checks.fails(part5.test_batch_topk_activation, mutant, message)


# Verdicts that do not depend on the learner's random draws --------------------------------


@pytest.mark.parametrize("draws", [1, 7, 39])
@pytest.mark.parametrize(
    ("check", "learner"),
    [
        (part5.test_gated_forward, lambda draws: gated(with_extra_draws(reference.GatedToySAE.forward, draws))),
        (
            part5.test_remove_parallel_component,
            lambda draws: with_extra_draws(reference.remove_parallel_component, draws),
        ),
        (part5.test_topk_activation, lambda draws: with_extra_draws(reference.topk_activation, draws)),
        (part5.test_auxk_loss, lambda draws: topk_sae(with_extra_draws(reference.TopKToySAE.auxk_loss, draws))),
        (part5.test_batch_topk_activation, lambda draws: with_extra_draws(reference.batch_topk_activation, draws)),
    ],
)
def test_checks_pass_code_that_draws_random_numbers(checks, check, learner, draws):
    checks.passes(check, learner(draws))


@pytest.mark.parametrize("draws", [1, 39])
def test_step_checks_pass_functions_that_draw_random_numbers(checks, draws):
    class DrawingJumpReLU(reference.JumpReLU):
        @staticmethod
        def forward(ctx, z, threshold, bandwidth):
            torch.rand(draws)
            return reference.JumpReLU.forward(ctx, z, threshold, bandwidth)

    checks.passes(part5.test_jumprelu, DrawingJumpReLU)


# Random states ----------------------------------------------------------------------------


def test_checks_leave_every_random_state_as_it_was():
    import random

    import numpy as np

    states = lambda: (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state())  # noqa: E731
    before = states()
    for check, learner in [
        (part5.test_gated_forward, reference.GatedToySAE),
        (part5.test_heaviside, reference.Heaviside),
        (part5.test_jumprelu, reference.JumpReLU),
        (part5.test_remove_parallel_component, reference.remove_parallel_component),
        (part5.test_topk_activation, reference.topk_activation),
        (part5.test_auxk_loss, reference.TopKToySAE),
        (part5.test_batch_topk_activation, reference.batch_topk_activation),
    ]:
        check(learner)
    after = states()
    assert before[0] == after[0] and before[1] == after[1] and torch.equal(before[2], after[2])
