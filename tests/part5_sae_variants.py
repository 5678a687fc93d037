"""Checks for Part 5 (SAE variants). Call them from the notebook, e.g. `test_gated_forward(GatedToySAE)`.

Shapes differ from each other (3 instances, d_in 4, 7 latents) so that a transposed weight or a
reduction over the wrong axis fails instead of passing by accident.
"""

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils import jumprelu_numpy
from part_utils.device import get_device
from part_utils.reference import part4_toy_sae as part4
from part_utils.reference import part5_sae_variants as reference
from tests.checking import CheckFailure, call_learner, check, close, diagnose, expect_tensor, learner_callable
from tests.part4_toy_sae import _toy_model

N_INST, D_IN, D_SAE = 3, 4, 7

# Google DeepMind's published regression values for its JumpReLU reference (CURRICULUM.md).
PUBLISHED = {
    "dataset[::13001]": [-0.26036463, 0.07950339, -0.10517059, 0.11135695],
    "reconstruction[::5001]": [-0.34825447, -0.12089294, -0.20722952, 1.4071178],
    "pre-activations[::40001]": [0.6627157, -0.2485388, 0.52095324, -0.01966003],
    "loss": [81.98928],
    "grad b_dec[::7]": [-1.7614671, -2.9526186, 0.99276465],
    "grad b_enc[::37]": [0.29240608, 0.9655949, 0.20811056, 1.051967],
    "grad log θ[::37]": [-0.01634991, -0.00306892, -0.00966095, -0.0034949],
    "grad W_dec[::601]": [0.02478151, -0.01372844, 0.00353589, 0.10577872],
    "grad W_enc[::601]": [0.02030803, 0.02437474, -0.01442294, 0.01866631],
}
PUBLISHED_TOLERANCE = 1e-5
TRAINING_TOLERANCE = 1e-8


def _randomise(sae: part4.ToySAE) -> None:
    """Random weights with varied decoder norms and non-zero biases."""
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            if name == "_W_dec":
                parameter.copy_(torch.randn_like(parameter) * (torch.rand(N_INST, D_SAE, 1, device=parameter.device) * 3 + 0.1))
            elif name == "W_enc":
                parameter.normal_()
            else:
                parameter.normal_(0.0, 0.5)


def _float64(tensor: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like, dtype=torch.float64, device="cpu") if tensor is None else tensor.detach().to("cpu", torch.float64)


# Gated ------------------------------------------------------------------------------------


@check("GatedToySAE.forward")
def test_gated_forward(learner: object) -> str:
    forward = learner_callable(learner, "forward")
    sae = reference.GatedToySAE(part4.ToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, sparsity_coeff=0.3), _toy_model())
    _randomise(sae)
    h = torch.randn(64, N_INST, D_IN, device=sae.W_enc.device)
    result = call_learner(forward, sae, h, what="forward")
    if not isinstance(result, tuple) or len(result) != 4:
        raise CheckFailure("`forward` should return (loss_dict, loss, acts, h_reconstructed).")
    loss_dict, loss, acts, h_reconstructed = result
    if not isinstance(loss_dict, dict) or set(loss_dict) != {"L_reconstruction", "L_sparsity", "L_aux"}:
        raise CheckFailure('`loss_dict` should have exactly the keys "L_reconstruction", "L_sparsity" and "L_aux".')

    p = {name: value.detach().cpu().double() for name, value in sae.named_parameters() if not name.startswith("model.")}
    W_dec_unit = p["_W_dec"] / (p["_W_dec"].norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    x = h.cpu().double()
    encode = lambda inputs, W, b: torch.einsum("bid,ids->bis", inputs, W) + b  # noqa: E731
    decode = lambda latents: torch.einsum("bis,isd->bid", latents, W_dec_unit) + p["b_dec"]  # noqa: E731
    centred = x - p["b_dec"]
    pi_gate = encode(centred, p["W_enc"], p["b_enc"])
    W_mag = p["r_mag"].exp()[:, None, :] * p["W_enc"]
    pi_mag = encode(centred, W_mag, p["b_mag"])
    gate = (pi_gate > 0).double()
    expected_acts = gate * F.relu(pi_mag)
    diagnose(
        expect_tensor(acts, (64, N_INST, D_SAE), what="acts", axes="batch, inst, d_sae"),
        expected_acts,
        {
            "`acts` ignores b_dec: subtract b_dec from h before both the gate and the magnitude path.": (encode(x, p["W_enc"], p["b_enc"]) > 0).double()
            * F.relu(encode(x, W_mag, p["b_mag"])),
            "The magnitude path uses W_gate itself: scale each latent's column by exp(r_mag).": gate * F.relu(encode(centred, p["W_enc"], p["b_mag"])),
            "The magnitude path multiplies by r_mag; the scale is exp(r_mag).": gate * F.relu(encode(centred, p["r_mag"][:, None, :] * p["W_enc"], p["b_mag"])),
            "The magnitude path uses b_gate; it has its own bias, b_mag.": gate * F.relu(encode(centred, W_mag, p["b_enc"])),
            "`acts` is not gated: multiply ReLU(π_mag) by the indicator 1[π_gate > 0].": F.relu(pi_mag),
            "`acts` multiplies by ReLU(π_gate); the gate is the indicator 1[π_gate > 0].": F.relu(pi_gate) * F.relu(pi_mag),
        },
        otherwise="`acts` should be 1[π_gate > 0] · ReLU(π_mag), both computed from h - b_dec.",
    )
    diagnose(
        expect_tensor(h_reconstructed, (64, N_INST, D_IN), what="h_reconstructed", axes="batch, inst, d_in"),
        decode(expected_acts),
        {"The reconstruction uses the unnormalised decoder: decode with self.W_dec_normalized.": torch.einsum("bis,isd->bid", expected_acts, p["_W_dec"]) + p["b_dec"]},
        otherwise="`h_reconstructed` should be acts @ W_dec_normalized + b_dec.",
    )
    reconstruction = (decode(expected_acts) - x).pow(2)
    aux = (decode(F.relu(pi_gate)) - x).pow(2)
    terms = {
        "L_reconstruction": (reconstruction.mean(-1), {"L_reconstruction is summed over d_in; average it.": reconstruction.sum(-1)}),
        "L_sparsity": (
            F.relu(pi_gate).sum(-1),
            {
                "L_sparsity is the L1 of the activations; put the penalty on ReLU(π_gate), the gate.": expected_acts.sum(-1),
                "L_sparsity averages over latents; the L1 norm sums over d_sae.": F.relu(pi_gate).mean(-1),
            },
        ),
        "L_aux": (
            aux.mean(-1),
            {
                "L_aux is summed over d_in; average it.": aux.sum(-1),
                "L_aux decodes the activations; it should decode ReLU(π_gate), the gate alone.": reconstruction.mean(-1),
                "L_aux leaves out b_dec: decode ReLU(π_gate) with W_dec_normalized and add b_dec.": (decode(F.relu(pi_gate)) - p["b_dec"] - x).pow(2).mean(-1),
            },
        ),
    }
    for key, (expected, mistakes) in terms.items():
        actual = expect_tensor(loss_dict[key], (64, N_INST), what=f'loss_dict["{key}"]', axes="batch, inst")
        diagnose(actual, expected, mistakes, otherwise=f'loss_dict["{key}"] is not what the text describes; re-read its definition.')
    per_input = terms["L_reconstruction"][0] + 0.3 * terms["L_sparsity"][0] + terms["L_aux"][0]
    actual_loss = expect_tensor(loss.reshape(()) if isinstance(loss, Tensor) and loss.numel() == 1 else loss, (), what="loss", axes="a scalar")
    diagnose(
        actual_loss,
        per_input.mean(0).sum(),
        {
            "The loss leaves out L_aux.": (per_input - terms["L_aux"][0]).mean(0).sum(),
            "The loss leaves out sparsity_coeff.": (per_input + 0.7 * terms["L_sparsity"][0]).mean(0).sum(),
            "The loss is averaged over instances; sum over instances.": per_input.mean(),
        },
        otherwise="The loss should be L_reconstruction + sparsity_coeff · L_sparsity + L_aux, averaged over the batch, summed over instances.",
    )
    _check_gated_gradients(sae, h, loss, forward)
    return "gate, magnitudes, all three loss terms, and where their gradients go"


def _check_gated_gradients(sae: reference.GatedToySAE, h: Tensor, loss: Tensor, forward: Any) -> None:
    if not loss.requires_grad:
        raise CheckFailure("The loss carries no gradient: do not compute it under torch.no_grad() or from detached tensors.")
    sae.zero_grad()
    loss.backward()
    learner_grads = {name: _float64(value.grad, value) for name, value in sae.named_parameters()}
    sae.zero_grad()
    reference.GatedToySAE.forward(sae, h)[1].backward()
    expected = {name: _float64(value.grad, value) for name, value in sae.named_parameters()}
    for name in ("_W_dec", "b_dec"):
        if not close(learner_grads[name], expected[name]):
            raise CheckFailure(
                "L_aux sends gradient into the decoder: decode ReLU(π_gate) with W_dec_normalized.detach() and b_dec.detach()."
            )
    for name in ("W_enc", "b_enc", "r_mag", "b_mag"):
        if not close(learner_grads[name], expected[name]):
            raise CheckFailure(f"The gradient of {name} differs from the reference: build acts with the indicator and ReLU as described, without .detach().")


# JumpReLU ---------------------------------------------------------------------------------


def _autograd_function(thing: object, name: str) -> type[torch.autograd.Function]:
    if not (isinstance(thing, type) and issubclass(thing, torch.autograd.Function)):
        raise CheckFailure(f"Pass your `{name}` class itself (a torch.autograd.Function subclass), e.g. `test_{name.lower()}({name})`.")
    return thing


def _run_function(function: type[torch.autograd.Function], z: Tensor, threshold: Tensor, bandwidth: float, upstream: Tensor, name: str) -> tuple[Tensor, Tensor, Tensor]:
    z = z.clone().requires_grad_(True)
    threshold = threshold.clone().requires_grad_(True)
    output = call_learner(function.apply, z, threshold, bandwidth, what=f"{name}.forward")
    output_64 = expect_tensor(output, tuple(z.shape), what=f"{name}.forward", axes="the shape of z")
    if not output.requires_grad:
        raise CheckFailure(f"`{name}.apply` returns a tensor without a gradient: return the output of forward directly, without .detach().")
    call_learner(output.backward, upstream, what=f"{name}.backward")
    return output_64, _float64(z.grad, z), _float64(threshold.grad, threshold)


def _jumprelu_cases() -> list[tuple[str, Tensor, Tensor, float, Tensor]]:
    """The hand-checkable case, then a seeded batch with many pre-activations near the threshold."""
    hand = ("the hand-checkable case", torch.tensor([1.0, 1.4, 1.6, 2.0], dtype=torch.float64), torch.full((4,), 1.5, dtype=torch.float64), 0.5, torch.ones(4, dtype=torch.float64))
    threshold = torch.rand(N_INST, D_SAE, dtype=torch.float64) * 0.4 + 0.2
    bandwidth = 0.2
    z = threshold + (torch.rand(10, N_INST, D_SAE, dtype=torch.float64) - 0.5) * 4 * bandwidth
    upstream = torch.randn(10, N_INST, D_SAE, dtype=torch.float64)
    return [hand, ("a random batch (θ per latent, z per input)", z, threshold, bandwidth, upstream)]


def _threshold_mistakes(expected: Tensor, z: Tensor, threshold: Tensor, bandwidth: float, upstream: Tensor, scale: Tensor) -> dict[str, Tensor]:
    """θ-gradients of the usual mistakes; `scale` is 1 for Heaviside and θ for JumpReLU."""
    window = reference.rectangle((z - threshold) / bandwidth)
    wide = reference.rectangle((z - threshold) / (2 * bandwidth))
    sum_to = lambda tensor: tensor.sum_to_size(threshold.shape)  # noqa: E731
    batch = z.numel() // threshold.numel()
    return {
        "The threshold gradient has the wrong sign: it is -(scale/ε)·K((z-θ)/ε), negative inside the window.": -expected,
        "The kernel is twice too wide: K(u) is 1 for -1/2 < u < 1/2 with u = (z - θ)/ε, i.e. |z - θ| < ε/2.": sum_to(-(scale / bandwidth) * wide * upstream),
        "The threshold gradient is missing the 1/ε factor.": sum_to(-scale * window * upstream),
        "The threshold gradient ignores grad_output: multiply by the gradient flowing in.": sum_to(-(scale / bandwidth) * window),
        "The threshold gradient is averaged over the batch; sum it (θ is shared by every input).": expected / batch,
    }


def _check_autograd_function(function: type[torch.autograd.Function], name: str, *, jump: bool) -> None:
    for case, z, threshold, bandwidth, upstream in _jumprelu_cases():
        output, grad_z, grad_threshold = _run_function(function, z, threshold, bandwidth, upstream, name)
        active = (z > threshold).double()
        expected_output = z * active if jump else active
        if not close(output, expected_output):
            if jump and close(output, active):
                raise CheckFailure(f"{name} returns H(z - θ); JumpReLU returns z · H(z - θ).")
            if not jump and close(output, z * active):
                raise CheckFailure(f"{name} returns z · H(z - θ); the Heaviside step returns just H(z - θ) (0 or 1).")
            raise CheckFailure(f"{name}'s forward is wrong on {case}: it should be {'z · ' if jump else ''}1[z > θ].")
        expected_z = active * upstream if jump else torch.zeros_like(z)
        if not close(grad_z, expected_z):
            if not jump:
                raise CheckFailure("Heaviside passes a gradient to z; its pseudo-derivative in z is 0 (return zeros or None).")
            if close(grad_z, upstream):
                raise CheckFailure("JumpReLU passes the gradient to z everywhere; ∂/∂z is H(z - θ): only where z > θ.")
            raise CheckFailure("JumpReLU's gradient for z should be H(z - θ) · grad_output.")
        scale = threshold if jump else torch.ones_like(threshold)
        expected_threshold = (-(scale / bandwidth) * reference.rectangle((z - threshold) / bandwidth) * upstream).sum_to_size(threshold.shape)
        mistakes = _threshold_mistakes(expected_threshold, z, threshold, bandwidth, upstream, scale)
        if jump:
            mistakes["JumpReLU's threshold gradient uses 1/ε; it is -(θ/ε)·K((z-θ)/ε)."] = (
                -(1 / bandwidth) * reference.rectangle((z - threshold) / bandwidth) * upstream
            ).sum_to_size(threshold.shape)
        diagnose(grad_threshold, expected_threshold, mistakes, otherwise=f"{name}'s threshold gradient is wrong on {case}.")


@check("Heaviside")
def test_heaviside(learner: object) -> str:
    _check_autograd_function(_autograd_function(learner, "Heaviside"), "Heaviside", jump=False)
    return "forward, zero gradient to z, rectangle-kernel gradient to θ summed over the batch"


@check("JumpReLU")
def test_jumprelu(learner: object) -> str:
    _check_autograd_function(_autograd_function(learner, "JumpReLU"), "JumpReLU", jump=True)
    return "forward, H(z - θ) gradient to z, -(θ/ε)K gradient to θ summed over the batch"


@check("remove_parallel_component")
def test_remove_parallel_component(learner: object) -> str:
    project = learner_callable(learner, "remove_parallel_component")
    W_dec = F.normalize(torch.randn(D_SAE, D_IN, dtype=torch.float64), dim=-1)
    grad = torch.randn(D_SAE, D_IN, dtype=torch.float64)
    actual = expect_tensor(call_learner(project, grad.clone(), W_dec.clone(), what="remove_parallel_component"), (D_SAE, D_IN), what="remove_parallel_component", axes="d_sae, d_in")
    parallel = (grad * W_dec).sum(-1, keepdim=True) * W_dec
    diagnose(
        actual,
        grad - parallel,
        {
            "You returned the parallel component; return the gradient minus it.": parallel,
            "You added the parallel component; subtract it.": grad + parallel,
            "The dot product runs over the wrong axis: take g · w along each row (over d_in).": grad - (grad * W_dec).sum(0, keepdim=True) * W_dec,
            "You subtracted the dot product itself; subtract (g · w) times the row w.": grad - (grad * W_dec).sum(-1, keepdim=True),
        },
        otherwise="Each row should become g - (g · w) w, with w the decoder row and g its gradient.",
    )
    if (actual * W_dec).sum(-1).abs().max() > 1e-10:
        raise CheckFailure("The result still has a component along each decoder row.")
    return "each gradient row made orthogonal to its decoder row"


# Reference parity -------------------------------------------------------------------------


def _to_torch(params: jumprelu_numpy.JumpReLUParams) -> dict[str, Tensor]:
    return {name: torch.from_numpy(np.array(getattr(params, name))) for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")}


def build_jumprelu_sae(
    params: jumprelu_numpy.JumpReLUParams,
    *,
    bandwidth: float,
    sparsity_coefficient: float,
    use_pre_encoder_bias: bool,
    jumprelu: type[torch.autograd.Function] = reference.JumpReLU,
    heaviside: type[torch.autograd.Function] = reference.Heaviside,
) -> reference.JumpReLUSAE:
    """The torch JumpReLU SAE (float64) with the given parameters and autograd functions."""
    return reference.JumpReLUSAE(
        **_to_torch(params),
        bandwidth=bandwidth,
        sparsity_coefficient=sparsity_coefficient,
        use_pre_encoder_bias=use_pre_encoder_bias,
        jumprelu=jumprelu,
        heaviside=heaviside,
    )


def published_comparison(jumprelu: type[torch.autograd.Function], heaviside: type[torch.autograd.Function]) -> dict[str, float]:
    """Largest absolute difference from each published value, running the case through the given functions."""
    case = jumprelu_numpy.reference_setup()
    sae = build_jumprelu_sae(case.params, bandwidth=case.bandwidth, sparsity_coefficient=case.sparsity_coefficient, use_pre_encoder_bias=case.use_pre_encoder_bias, jumprelu=jumprelu, heaviside=heaviside)
    loss, reconstruction, pre_acts = sae(torch.from_numpy(case.data[0]))
    loss.backward()
    ours = {
        "dataset[::13001]": torch.from_numpy(case.data).ravel()[::13001],
        "reconstruction[::5001]": reconstruction.detach().ravel()[::5001],
        "pre-activations[::40001]": pre_acts.detach().ravel()[::40001],
        "loss": loss.detach().reshape(1),
        "grad b_dec[::7]": sae.b_dec.grad[::7],
        "grad b_enc[::37]": sae.b_enc.grad[::37],
        "grad log θ[::37]": sae.log_threshold.grad[::37],
        "grad W_dec[::601]": sae.W_dec.grad.ravel()[::601],
        "grad W_enc[::601]": sae.W_enc.grad.ravel()[::601],
    }
    return {key: (ours[key].double() - torch.tensor(PUBLISHED[key], dtype=torch.float64)).abs().max().item() for key in PUBLISHED}


def training_comparison(
    data: np.ndarray,
    params: jumprelu_numpy.JumpReLUParams,
    *,
    lr: float,
    bandwidth: float,
    sparsity_coefficient: float,
    use_pre_encoder_bias: bool,
    fixed_decoder_norms: bool,
    jumprelu: type[torch.autograd.Function] = reference.JumpReLU,
    heaviside: type[torch.autograd.Function] = reference.Heaviside,
    project: Any = reference.remove_parallel_component,
) -> dict[str, float]:
    """Train one step per batch in torch (autograd) and in NumPy (hand-derived); largest parameter differences."""
    options = {"bandwidth": bandwidth, "sparsity_coefficient": sparsity_coefficient, "use_pre_encoder_bias": use_pre_encoder_bias}
    sae = build_jumprelu_sae(params, **options, jumprelu=jumprelu, heaviside=heaviside)
    reference.train_jumprelu_sae(sae, torch.from_numpy(data), lr=lr, fixed_decoder_norms=fixed_decoder_norms, project=project)
    independent = jumprelu_numpy.train(params, data, lr=lr, fixed_decoder_norms=fixed_decoder_norms, **options)
    return {name: np.abs(getattr(sae, name).detach().numpy() - getattr(independent, name)).max() for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")}


PARITY_HINTS = {
    "reconstruction": "your JumpReLU forward (z · 1[z > θ])",
    "pre-activations": "nothing of yours: check that part_utils is unmodified",
    "loss": "your Heaviside forward (the L0 count)",
    "log θ": "the threshold pseudo-derivatives of JumpReLU and Heaviside",
    "b_enc": "JumpReLU's gradient to z",
    "W_enc": "JumpReLU's gradient to z",
    "W_dec": "your JumpReLU forward",
    "b_dec": "JumpReLU's gradient to z",
}


@check("reference parity (Google DeepMind's JumpReLU)")
def test_reference_parity(jumprelu: object, heaviside: object, project: object) -> str:
    jumprelu_fn = _autograd_function(jumprelu, "JumpReLU")
    heaviside_fn = _autograd_function(heaviside, "Heaviside")
    project_fn = learner_callable(project, "remove_parallel_component")
    differences = call_learner(published_comparison, jumprelu_fn, heaviside_fn, what="the JumpReLU SAE with your functions")
    print(f"{'published value':<26} largest |difference|")
    for key, difference in differences.items():
        print(f"{key:<26} {difference:.1e}")
    for key, difference in differences.items():
        if not difference <= PUBLISHED_TOLERANCE:
            hint = next((text for word, text in PARITY_HINTS.items() if word in key), "your functions")
            raise CheckFailure(f"`{key}` differs from the published value by {difference:.2e} (> {PUBLISHED_TOLERANCE:g}); look at {hint}.")
    case = jumprelu_numpy.reference_setup()
    training = call_learner(
        training_comparison,
        case.data,
        case.params,
        lr=1e-3,
        bandwidth=case.bandwidth,
        sparsity_coefficient=case.sparsity_coefficient,
        use_pre_encoder_bias=case.use_pre_encoder_bias,
        fixed_decoder_norms=True,
        jumprelu=jumprelu_fn,
        heaviside=heaviside_fn,
        project=project_fn,
        what="three training steps with fixed decoder norms",
    )
    worst = max(training.values())
    print(f"{'3 training steps vs NumPy':<26} {worst:.1e}")
    if not worst <= TRAINING_TOLERANCE:
        raise CheckFailure(f"After three training steps with fixed decoder norms the parameters differ from the independent run by {worst:.2e}; look at remove_parallel_component.")
    return f"all {len(PUBLISHED)} published values within {PUBLISHED_TOLERANCE:g}, three training steps within {TRAINING_TOLERANCE:g}"


# TopK and AuxK ----------------------------------------------------------------------------


@check("topk_activation")
def test_topk_activation(learner: object) -> str:
    function = learner_callable(learner, "topk_activation")
    pre_acts = torch.randn(16, N_INST, D_SAE) - 0.8  # many rows have negative values among their top k
    k = 3
    actual = expect_tensor(call_learner(function, pre_acts.to(get_device()), k, what="topk_activation"), (16, N_INST, D_SAE), what="topk_activation", axes="batch, inst, d_sae")
    x = pre_acts.double()

    def keep(values: Tensor, dim: int, largest: bool = True) -> Tensor:
        top = values.topk(k, dim=dim, largest=largest)
        return torch.zeros_like(values).scatter(dim, top.indices, top.values)

    diagnose(
        actual,
        F.relu(keep(x, -1)),
        {
            "TopK keeps negative values: apply a ReLU to the k kept pre-activations.": keep(x, -1),
            "The top k are taken over the batch; take them over d_sae, for each input.": F.relu(keep(x, 0)),
            "You kept the k smallest values; keep the k largest.": F.relu(keep(x, -1, largest=False)),
            "You ranked by absolute value; rank the pre-activations themselves.": F.relu(torch.zeros_like(x).scatter(-1, x.abs().topk(k, dim=-1).indices, x.gather(-1, x.abs().topk(k, dim=-1).indices))),
        },
        otherwise="Each input should keep its k largest pre-activations (ReLU applied) and zero the rest.",
    )
    return "k largest per input, ReLU on the kept values, zeros elsewhere"


def _topk_sae() -> reference.TopKToySAE:
    sae = reference.TopKToySAE(reference.TopKToySAEConfig(n_inst=N_INST, d_in=D_IN, d_sae=D_SAE, k=2, k_aux=3), _toy_model())
    _randomise(sae)
    return sae


@check("auxk_loss")
def test_auxk_loss(learner: object) -> str:
    function = learner_callable(learner, "auxk_loss")
    sae = _topk_sae()
    device = sae.W_enc.device
    dead = torch.zeros(N_INST, D_SAE, dtype=torch.bool)
    dead[0, 4] = True  # one dead latent: the loss is scaled by 1/3
    dead[1, [0, 2, 3, 5, 6]] = True  # five dead: more than k_aux, scale 1
    pre_acts = (torch.randn(32, N_INST, D_SAE) + 0.3).to(device).requires_grad_(True)
    h = torch.randn(32, N_INST, D_IN, device=device)
    h_reconstructed = torch.randn(32, N_INST, D_IN, device=device).requires_grad_(True)
    result = call_learner(function, sae, pre_acts, h, h_reconstructed, dead.to(device), what="auxk_loss")
    actual = expect_tensor(result, (32, N_INST), what="auxk_loss", axes="batch, inst")

    x, target = pre_acts.detach().cpu().double(), (h - h_reconstructed).detach().cpu().double()
    W = sae.W_dec_normalized.detach().cpu().double()
    b_dec = sae.b_dec.detach().cpu().double()

    def aux(mask: Tensor, *, select: Tensor | None = None, relu: bool = True, bias: bool = False, clamp: bool = True, scale: bool = True, mean: bool = True) -> Tensor:
        top = x.masked_fill(~(mask if select is None else select), -torch.inf).topk(3, dim=-1)
        values = F.relu(top.values) if relu else torch.where(torch.isinf(top.values), 0.0, top.values)
        latents = torch.zeros_like(x).scatter(-1, top.indices, values)
        decoded = torch.einsum("bis,isd->bid", latents, W) + (b_dec if bias else 0.0)
        error = (decoded - target).pow(2)
        error = error.mean(-1) if mean else error.sum(-1)
        factor = mask.sum(-1).double() / 3
        return error * (factor.clamp(max=1.0) if clamp else factor) if scale else error

    everyone = torch.ones_like(dead)
    diagnose(
        actual,
        aux(dead),
        {
            "AuxK uses live latents too: take the top k_aux among dead latents only.": aux(dead, select=everyone),
            "AuxK adds b_dec: decode the residual without the bias.": aux(dead, bias=True),
            "AuxK keeps negative pre-activations: apply a ReLU to the chosen values.": aux(dead, relu=False),
            "The scale n_dead / k_aux must be capped at 1.": aux(dead, clamp=False),
            "The loss is not scaled by min(n_dead / k_aux, 1).": aux(dead, scale=False),
            "The error is summed over d_in; average it.": aux(dead, mean=False),
        },
        otherwise="auxk_loss should be the mean over d_in of (ê - e)², ê decoded from the top k_aux dead pre-activations, scaled by min(n_dead / k_aux, 1).",
    )
    if not result.requires_grad:
        raise CheckFailure("auxk_loss carries no gradient: the dead latents' pre-activations must receive one.")
    result.sum().backward()
    if h_reconstructed.grad is not None and h_reconstructed.grad.abs().max() > 0:
        raise CheckFailure("AuxK sends gradient into h_reconstructed: detach the residual h - h_reconstructed.")
    if pre_acts.grad is None or pre_acts.grad[:, 2].abs().max() > 0 or pre_acts.grad[:, :, 1].abs().max() > 0:
        raise CheckFailure("AuxK sends gradient to latents that are not dead.")
    return "dead latents only, ReLU, no bias, detached residual, scaled by min(n_dead / k_aux, 1)"


# BatchTopK --------------------------------------------------------------------------------


@check("batch_topk_activation")
def test_batch_topk_activation(learner: object) -> str:
    function = learner_callable(learner, "batch_topk_activation")
    batch, k = 40, 0.5  # keep 20 of 40 × 7 values per instance
    # Instance 0 has fewer positive values than it keeps, so a missing ReLU shows.
    pre_acts = torch.randn(batch, N_INST, D_SAE) * torch.linspace(0.5, 2.0, N_INST)[:, None] - torch.tensor([1.5, 0.5, 0.0])[:, None]
    actual = expect_tensor(call_learner(function, pre_acts.to(get_device()), k, what="batch_topk_activation"), (batch, N_INST, D_SAE), what="batch_topk_activation", axes="batch, inst, d_sae")
    x = pre_acts.double()

    def keep_per_instance(values: Tensor, n_keep: int) -> Tensor:
        flat = values.transpose(0, 1).reshape(N_INST, -1)
        top = flat.topk(n_keep, dim=-1)
        return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(N_INST, batch, D_SAE).transpose(0, 1)

    pooled_top = x.reshape(-1).topk(round(k * batch) * N_INST)
    pooled = torch.zeros_like(x).reshape(-1).scatter(0, pooled_top.indices, pooled_top.values).reshape_as(x)
    per_row = x.topk(1, dim=-1)
    diagnose(
        actual,
        F.relu(keep_per_instance(x, round(k * batch))),
        {
            "Negative values are kept: apply a ReLU.": keep_per_instance(x, round(k * batch)),
            "The top values are pooled across instances; pick them separately for each instance.": F.relu(pooled),
            "You kept k values per instance; keep k · batch (k is the average per input).": F.relu(keep_per_instance(x, 1)),
            "This is per-input TopK; BatchTopK ranks all batch × d_sae values of an instance together.": F.relu(torch.zeros_like(x).scatter(-1, per_row.indices, per_row.values)),
        },
        otherwise="For each instance keep the round(k · batch) largest values across the whole batch (ReLU applied) and zero the rest.",
    )
    return "k · batch largest per instance across the batch, ReLU applied"
