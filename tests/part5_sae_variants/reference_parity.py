"""The learner's JumpReLU SAE against Google DeepMind's published values and an independent NumPy run."""

from typing import Any

import numpy as np
import torch
from torch import Tensor

from part_utils.reference import part5_sae_variants as reference
from part_utils.reference.part5_sae_variants import PUBLISHED_PROJECTION_EPS
from tests.checking import CheckFailure, call_learner, check, learner_function
from tests.oracles import jumprelu_numpy
from tests.part5_sae_variants._common import _autograd_function
from tests.part5_sae_variants._step_functions import _apply

# The regression values Google DeepMind publishes with its JumpReLU SAE reference implementation (float64);
# Part 5's section on reference parity says where they come from.
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


def _to_torch(params: jumprelu_numpy.JumpReLUParams) -> dict[str, Tensor]:
    return {
        name: torch.from_numpy(np.array(getattr(params, name)))
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")
    }


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


def published_comparison(
    jumprelu: type[torch.autograd.Function], heaviside: type[torch.autograd.Function]
) -> dict[str, float]:
    """Largest absolute difference from each published value, running the case through the given functions."""
    case = jumprelu_numpy.reference_setup()
    sae = build_jumprelu_sae(
        case.params,
        bandwidth=case.bandwidth,
        sparsity_coefficient=case.sparsity_coefficient,
        use_pre_encoder_bias=case.use_pre_encoder_bias,
        jumprelu=jumprelu,
        heaviside=heaviside,
    )
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
    return {
        key: (ours[key].double() - torch.tensor(PUBLISHED[key], dtype=torch.float64)).abs().max().item()
        for key in PUBLISHED
    }


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
    projection_eps: float = jumprelu_numpy.PROJECTION_EPS,
) -> dict[str, float]:
    """Train one step per batch in torch (autograd) and in NumPy (hand-derived, the published procedure
    with `projection_eps`); the largest difference in each parameter."""
    options = {
        "bandwidth": bandwidth,
        "sparsity_coefficient": sparsity_coefficient,
        "use_pre_encoder_bias": use_pre_encoder_bias,
    }
    sae = build_jumprelu_sae(params, **options, jumprelu=jumprelu, heaviside=heaviside)
    reference.train_jumprelu_sae(
        sae, torch.from_numpy(data), lr=lr, fixed_decoder_norms=fixed_decoder_norms, project=project
    )
    independent = jumprelu_numpy.train(
        params, data, lr=lr, fixed_decoder_norms=fixed_decoder_norms, projection_eps=projection_eps, **options
    )
    return {
        name: np.abs(getattr(sae, name).detach().numpy() - getattr(independent, name)).max()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")
    }


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


ORDER = "test_reference_parity(JumpReLU, Heaviside, remove_parallel_component), in that order"


def _check_argument_order(jumprelu: type[torch.autograd.Function], heaviside: type[torch.autograd.Function]) -> None:
    """The two autograd functions in their places: by name, or by what each returns on z = [0.5, 2], θ = 1."""
    if jumprelu is heaviside:
        raise CheckFailure(f"You passed the same class as JumpReLU and as Heaviside: call {ORDER}.")
    z, threshold = torch.tensor([0.5, 2.0], dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)

    def returns(function: type[torch.autograd.Function], values: list[float]) -> bool:
        try:
            output = call_learner(
                _apply(function), z.clone(), threshold.clone(), 0.1, what=f"{function.__name__}.forward"
            )
        except CheckFailure:  # reported where the parity runs, with its location
            return False
        return (
            isinstance(output, Tensor)
            and output.shape == z.shape
            and torch.equal(output.double(), z.new_tensor(values))
        )

    named_swapped = jumprelu.__name__ == "Heaviside" or heaviside.__name__ == "JumpReLU"
    if named_swapped or (returns(jumprelu, [0.0, 1.0]) and returns(heaviside, [0.0, 2.0])):
        raise CheckFailure(f"JumpReLU and Heaviside are swapped in the call: pass them as {ORDER}.")


def _projection_probe() -> tuple[Tensor, Tensor]:
    """A gradient, and decoder rows normalised the published way, as the training loop hands them in."""
    W_dec = torch.nn.functional.normalize(torch.randn(6, 4, dtype=torch.float64), dim=-1)
    return torch.randn(6, 4, dtype=torch.float64), W_dec / (W_dec.norm(dim=-1, keepdim=True) + PUBLISHED_PROJECTION_EPS)


def _project_shortcut(project: Any, grad: Tensor, rows: Tensor) -> None:
    """Name a projection that three training steps could not match before spending them: far from g - (g · w) w
    on rows normalised the published way, or equal to it on rows normalised to exactly 1."""
    output = call_learner(project, grad.clone(), rows.clone(), what="remove_parallel_component")
    if not (isinstance(output, Tensor) and output.shape == grad.shape):
        return  # the training below reports it
    output = output.detach().double()
    unit = rows / rows.norm(dim=-1, keepdim=True)
    if torch.allclose(output, grad - (grad * unit).sum(-1, keepdim=True) * unit, rtol=1e-12, atol=1e-14):
        raise CheckFailure(WITHOUT_EPS)
    if not torch.allclose(output, grad - (grad * rows).sum(-1, keepdim=True) * rows, rtol=1e-6, atol=1e-9):
        raise CheckFailure(
            "After three training steps with fixed decoder norms the parameters would differ from the independent run: "
            "remove_parallel_component does not return g - (g · w) w; its own check above names the mistake."
        )


WITHOUT_EPS = (
    "Your training matches the procedure without the published 1e-6 in the row normalisation: "
    "remove_parallel_component must use the rows as given, not normalise them again."
)


@check("reference parity (Google DeepMind's JumpReLU)")
def test_reference_parity(jumprelu: object, heaviside: object, project: object) -> str:
    jumprelu_fn = _autograd_function(jumprelu, "JumpReLU")
    heaviside_fn = _autograd_function(heaviside, "Heaviside")
    project_fn = learner_function(project, "remove_parallel_component")
    probe = _projection_probe()  # drawn before the learner's code runs
    _check_argument_order(jumprelu_fn, heaviside_fn)
    differences = call_learner(
        published_comparison, jumprelu_fn, heaviside_fn, what="the JumpReLU SAE with your functions"
    )
    print(f"{'published value':<26} largest |difference|")
    for key, difference in differences.items():
        print(f"{key:<26} {difference:.1e}")
    for key, difference in differences.items():
        if not difference <= PUBLISHED_TOLERANCE:
            hint = next((text for word, text in PARITY_HINTS.items() if word in key), "your functions")
            raise CheckFailure(
                f"`{key}` differs from the published value by {difference:.2e} "
                f"(> {PUBLISHED_TOLERANCE:g}); look at {hint}."
            )
    _project_shortcut(project_fn, *probe)
    case = jumprelu_numpy.reference_setup()
    options = {
        "lr": 1e-3,
        "bandwidth": case.bandwidth,
        "sparsity_coefficient": case.sparsity_coefficient,
        "use_pre_encoder_bias": case.use_pre_encoder_bias,
        "fixed_decoder_norms": True,
        "jumprelu": jumprelu_fn,
        "heaviside": heaviside_fn,
        "project": project_fn,
    }
    training = call_learner(
        training_comparison, case.data, case.params, **options, what="three training steps with fixed decoder norms"
    )
    worst = max(training.values())
    print(f"{'3 training steps vs NumPy':<26} {worst:.1e}")
    if not worst <= TRAINING_TOLERANCE:
        without_eps = call_learner(
            training_comparison,
            case.data,
            case.params,
            **options,
            projection_eps=0.0,
            what="three training steps with fixed decoder norms",
        )
        if max(without_eps.values()) <= TRAINING_TOLERANCE:
            raise CheckFailure(WITHOUT_EPS)
        raise CheckFailure(
            "After three training steps with fixed decoder norms the parameters differ from the "
            f"independent run by {worst:.2e}; look at remove_parallel_component."
        )
    return (
        f"all {len(PUBLISHED)} published values within {PUBLISHED_TOLERANCE:g}, "
        f"three training steps within {TRAINING_TOLERANCE:g}"
    )
