"""Reference parity with Google DeepMind's JumpReLU SAE, and torch-vs-NumPy training agreement."""

import numpy as np
import pytest

import tests.part5_sae_variants as part5
from tests.oracles import jumprelu_numpy


def test_reference_reproduces_every_published_value():
    differences = part5.published_comparison(part5.reference.JumpReLU, part5.reference.Heaviside)
    assert set(differences) == set(part5.PUBLISHED)
    for key, difference in differences.items():
        assert difference <= 1e-5, f"{key}: {difference:.2e}"


def test_numpy_implementation_reproduces_the_published_loss_and_gradients():
    case = jumprelu_numpy.reference_setup()
    loss, grads, forward = jumprelu_numpy.loss_and_grads(
        case.params,
        case.data[0],
        bandwidth=case.bandwidth,
        sparsity_coefficient=case.sparsity_coefficient,
        use_pre_encoder_bias=True,
    )
    assert abs(loss - part5.PUBLISHED["loss"][0]) <= 1e-5
    np.testing.assert_allclose(grads.log_threshold[::37], part5.PUBLISHED["grad log θ[::37]"], atol=1e-5)
    np.testing.assert_allclose(grads.W_dec.ravel()[::601], part5.PUBLISHED["grad W_dec[::601]"], atol=1e-5)
    np.testing.assert_allclose(
        forward.reconstruction.ravel()[::5001], part5.PUBLISHED["reconstruction[::5001]"], atol=1e-5
    )


def random_case(
    seed: int, d_in: int, d_sae: int, batch: int, steps: int
) -> tuple[np.ndarray, jumprelu_numpy.JumpReLUParams]:
    rng = np.random.default_rng(seed)
    W_dec = rng.normal(size=(d_sae, d_in))
    params = jumprelu_numpy.JumpReLUParams(
        W_enc=rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in),
        b_enc=rng.normal(size=d_sae) * 0.1,
        W_dec=W_dec / np.linalg.norm(W_dec, axis=-1, keepdims=True),
        b_dec=rng.normal(size=d_in) * 0.1,
        log_threshold=np.log(rng.uniform(0.05, 0.5, size=d_sae)),
    )
    return rng.normal(size=(steps, batch, d_in)), params


def test_published_case_trains_like_the_independent_run():
    case = jumprelu_numpy.reference_setup()
    options = {
        "bandwidth": case.bandwidth,
        "sparsity_coefficient": case.sparsity_coefficient,
        "use_pre_encoder_bias": True,
    }
    differences = part5.training_comparison(case.data, case.params, lr=1e-3, fixed_decoder_norms=True, **options)
    assert max(differences.values()) <= 1e-8
    trained = jumprelu_numpy.train(case.params, case.data, lr=1e-3, fixed_decoder_norms=True, **options)
    assert np.abs(trained.W_enc - case.params.W_enc).max() > 1e-4, "three steps must actually move the parameters"
    np.testing.assert_allclose(np.linalg.norm(trained.W_dec, axis=-1), 1.0, atol=1e-12)


@pytest.mark.parametrize("use_pre_encoder_bias", [True, False])
@pytest.mark.parametrize("fixed_decoder_norms", [True, False])
@pytest.mark.parametrize(("seed", "bandwidth", "sparsity_coefficient"), [(0, 0.3, 0.5), (1, 0.05, 2.0)])
def test_any_case_trains_like_the_independent_run(
    use_pre_encoder_bias, fixed_decoder_norms, seed, bandwidth, sparsity_coefficient
):
    data, params = random_case(seed, d_in=5, d_sae=11, batch=37, steps=4)
    differences = part5.training_comparison(
        data,
        params,
        lr=0.01,
        bandwidth=bandwidth,
        sparsity_coefficient=sparsity_coefficient,
        use_pre_encoder_bias=use_pre_encoder_bias,
        fixed_decoder_norms=fixed_decoder_norms,
    )
    assert max(differences.values()) <= 1e-8


def published_case_trained_with(project: object) -> dict[str, float]:
    """The published case's three steps with fixed decoder norms, projecting with `project`: differences from NumPy."""
    case = jumprelu_numpy.reference_setup()
    options = {"lr": 1e-3, "bandwidth": 0.1, "sparsity_coefficient": 1.2, "use_pre_encoder_bias": True}
    return part5.training_comparison(case.data, case.params, fixed_decoder_norms=True, project=project, **options)


def test_training_comparison_detects_a_wrong_projection():
    assert max(published_case_trained_with(lambda g, w: g).values()) > 1e-8


def test_the_published_epsilon_changes_the_three_steps_beyond_the_tolerance():
    """Projecting onto v / ‖v‖ instead of v / (‖v‖ + 1e-6) is another procedure: it lands ~1.4e-7 away."""
    case = jumprelu_numpy.reference_setup()
    options = {
        "lr": 1e-3,
        "bandwidth": case.bandwidth,
        "sparsity_coefficient": case.sparsity_coefficient,
        "use_pre_encoder_bias": True,
        "fixed_decoder_norms": True,
    }
    published = jumprelu_numpy.train(case.params, case.data, **options)
    without_eps = jumprelu_numpy.train(case.params, case.data, projection_eps=0.0, **options)
    difference = max(
        np.abs(getattr(published, name) - getattr(without_eps, name)).max()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold")
    )
    assert 1e-8 < difference < 1e-5


def test_a_projection_that_normalises_the_published_way_itself_trains_like_the_independent_run():
    """The published function normalises inside; fed rows already normalised that way, it changes them by ~1e-12."""

    def published_projection(grad, W_dec):
        unit = W_dec / (W_dec.norm(dim=-1, keepdim=True) + 1e-6)
        return grad - (grad * unit).sum(-1, keepdim=True) * unit

    assert max(published_case_trained_with(published_projection).values()) <= 1e-8
