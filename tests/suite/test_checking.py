"""The shared check machinery itself (tests/checking.py): snapshots, wrong objects, gradients, statistics."""

import math
import types

import pytest
import torch
from torch import nn

from tests.checking import (
    CHECKS_DIR,
    CheckFailure,
    NotImplementedYet,
    _in_checks,
    binomial_tolerance,
    call_learner,
    check,
    check_random_directions,
    frequencies_match,
    gradients,
    learner_callable,
)
from tests.suite.conftest import notebook_cells


class Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.register_buffer("scale", torch.ones(4))
        self.probability = torch.full((4,), 0.3)  # a plain tensor attribute


def test_call_learner_names_an_input_changed_in_place():
    def centre(h, b):
        h -= b
        return h

    with pytest.raises(CheckFailure, match=r"`centre` changed `h` in place"):
        call_learner(centre, torch.randn(5, 4), torch.randn(4), what="centre")


def test_call_learner_names_a_parameter_buffer_or_attribute_changed_in_place():
    def normalise_weight(self):
        self.weight.data /= self.weight.data.norm(dim=-1, keepdim=True)
        return self.weight

    def touch_buffer(self):
        self.scale.mul_(2)

    def touch_attribute(self):
        self.probability[0] = 1.0

    def replace_parameter(self):
        self.weight = nn.Parameter(self.weight.detach().clone())

    for function, name in [
        (normalise_weight, "self.weight"),
        (touch_buffer, "self.scale"),
        (touch_attribute, "self.probability"),
        (replace_parameter, "self.weight"),
    ]:
        with pytest.raises(CheckFailure, match=rf"changed `{name}` in place"):
            call_learner(function, Holder(), what="it")


def test_call_learner_allows_named_changes_and_leaves_others_guarded():
    def resample(self):
        self.weight.data[0] = 0.0
        return self.weight

    call_learner(resample, Holder(), what="resample", may_change={"self.weight"})
    call_learner(resample, Holder(), what="resample", may_change={"self"})
    with pytest.raises(CheckFailure, match="self.weight"):
        call_learner(resample, Holder(), what="resample", may_change={"self.scale"})


def test_call_learner_accepts_work_on_own_temporaries():
    def fine(self, h):
        centred = h.clone()
        centred -= 1.0
        out = self.weight.detach().clone()
        out.mul_(2)
        return centred, out

    call_learner(fine, Holder(), torch.randn(2, 4), what="fine")


def test_call_learner_names_grad_mode_left_switched_off_and_restores_it():
    def switch_off(x):
        torch.set_grad_enabled(False)
        return x

    with pytest.raises(CheckFailure, match="switched gradient tracking off"):
        call_learner(switch_off, torch.ones(1), what="it")
    assert torch.is_grad_enabled()


def test_call_learner_turns_stubs_and_crashes_into_one_sentence():
    def stub(x):
        raise NotImplementedError

    def crash(x):
        return x @ torch.ones(7)

    with pytest.raises(NotImplementedYet):
        call_learner(stub, torch.ones(2), what="stub")
    with pytest.raises(
        CheckFailure, match=r"raised RuntimeError: .* \(at line 2 of `crash`: `return x @ torch.ones\(7\)`\)"
    ):
        call_learner(crash, torch.ones(2), what="crash")


def test_a_crash_in_a_helper_the_notebook_gives_is_placed_at_the_learners_call():
    namespace = notebook_cells(
        "def family_sizes(x, n):\n    return x.reshape(n, -1)\n",
        "\n\n@staticmethod\ndef count(x):\n    n = 3\n    return family_sizes(x, n)\n",
    )
    with pytest.raises(CheckFailure) as failure:
        call_learner(namespace["count"].__func__, torch.ones(5), what="count")
    assert "(at line 3 of `count`: `return family_sizes(x, n)`, inside `family_sizes`, which it calls)" in str(
        failure.value
    )


def test_a_crash_names_the_notebook_globals_the_code_read():
    namespace = notebook_cells(
        "d_sae = 40\nEPS = 1e-8\n", "def first(acts, cfg):\n    return acts[:, d_sae - 1] + cfg.d_sae + EPS\n"
    )
    with pytest.raises(CheckFailure, match=r"reads the notebook's `d_sae` rather than its arguments"):
        call_learner(namespace["first"], torch.ones(2, 5), types.SimpleNamespace(d_sae=5), what="first")


def test_a_learner_line_is_found_past_check_modules_and_packages_but_not_past_the_suite():
    assert _in_checks(str(CHECKS_DIR / "checking.py"))
    assert _in_checks(str(CHECKS_DIR / "part6_sae_transformer" / "loss_recovered.py"))  # a part's package
    assert not _in_checks(__file__)  # the suite's stand-ins for learner code are learner code


def test_learner_callable_says_a_method_was_never_attached():
    class TopKToySAE(nn.Module):
        pass

    with pytest.raises(CheckFailure, match=r"`TopKToySAE` has no `auxk_loss` of yours: the method was never attached"):
        learner_callable(TopKToySAE, "auxk_loss")
    with pytest.raises(CheckFailure, match="never attached"):
        learner_callable(TopKToySAE, "__init__")  # nn.Module's own __init__ is not the learner's
    with pytest.raises(CheckFailure, match=r"Pass the class that has your `forward`"):
        learner_callable("ToyModel", "forward", owner_hint="ToyModel")


def test_learner_callable_finds_properties_and_names_a_missing_property_decorator():
    class WithProperty:
        @property
        def W_dec_normalized(self):
            return 1

    class WithMethod:
        def W_dec_normalized(self):
            return 1

    assert learner_callable(WithProperty, "W_dec_normalized", as_property=True)(None) == 1
    with pytest.raises(CheckFailure, match="put `@property` between"):
        learner_callable(WithMethod, "W_dec_normalized", as_property=True)


def test_gradients_names_a_detached_loss_and_returns_zeros_where_none_flows():
    w, unused = torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)
    with torch.no_grad():
        cut_off = (w * 2).sum()
    with pytest.raises(CheckFailure, match="carries no gradient"):
        gradients(cut_off, {"w": w}, what="loss")
    grads = gradients((w * 2).sum(), {"w": w, "unused": unused}, what="loss")
    torch.testing.assert_close(grads["w"], torch.full((3,), 2.0, dtype=torch.float64))
    assert torch.equal(grads["unused"], torch.zeros(2, dtype=torch.float64))


def test_binomial_tolerance_bounds_the_false_alarm_rate():
    # Empirically, a correct sampler stays inside a (loose) 1e-3 tolerance in every one of many trials.
    generator = torch.Generator().manual_seed(0)
    p, n = torch.tensor([0.02, 0.3, 0.5, 0.97]), 2_000
    tolerance = binomial_tolerance(p, n, false_alarm=1e-6)
    frequency = (torch.rand(500, n, 4, generator=generator) < p).double().mean(1)
    assert ((frequency - p).abs() <= tolerance).all()
    # And it is not absurdly loose: a few standard deviations.
    assert (tolerance < 6 * (p * (1 - p) / n).sqrt() + 4 * math.log(2e3) / n).all()
    assert frequencies_match(frequency[0], p, n)
    assert not frequencies_match(frequency[0] + 0.05, p, n)


def _random_unit(n, d, generator):
    return nn.functional.normalize(torch.randn(n, d, generator=generator, dtype=torch.float64), dim=-1)


def _first_coordinate_positive(generator):
    """Symmetric in every coordinate but the first, which is always positive."""
    unit = _random_unit(600, 4, generator)
    unit[:, 0] = unit[:, 0].abs()
    return unit


def test_check_random_directions_accepts_independent_gaussian_directions():
    generator = torch.Generator().manual_seed(1)
    instance, latent = torch.arange(3).repeat_interleave(20), torch.arange(20).repeat(3)
    check_random_directions(_random_unit(60, 4, generator), instance, latent, what="resample_simple")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda g: nn.functional.normalize(torch.rand(60, 4, generator=g, dtype=torch.float64), dim=-1), "one orthant"),
        (lambda g: _random_unit(20, 4, g).repeat(3, 1), "same direction in every instance"),
        (
            lambda g: _random_unit(3, 4, g).repeat_interleave(20, dim=0),
            "every resampled latent of an instance the same direction",
        ),
        (_first_coordinate_positive, "favour one sign"),
    ],
)
def test_check_random_directions_names_each_structure_mistake(make, message):
    generator = torch.Generator().manual_seed(2)
    directions = make(generator)
    per_instance = len(directions) // 3
    instance, latent = torch.arange(3).repeat_interleave(per_instance), torch.arange(per_instance).repeat(3)
    with pytest.raises(CheckFailure, match=message):
        check_random_directions(make(generator), instance, latent, what="resample_simple")


def test_check_decorator_prints_one_pass_line_and_leaves_random_state(capsys):
    @check("demo")
    def demo(learner):
        torch.rand(10)
        return "fine"

    state = torch.get_rng_state()
    demo(None)
    assert torch.equal(state, torch.get_rng_state())
    assert capsys.readouterr().out.strip() == "✔ demo: all checks passed (fine)."


def test_snapshot_reaches_plain_tensor_attributes_of_submodules_and_skips_meta_tensors():
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Holder()
            self.on_meta = torch.empty(3, device="meta")

    def touch_inner(self):
        self.model.probability.mul_(2)

    with pytest.raises(CheckFailure, match=r"changed `self\.model\.probability` in place"):
        call_learner(touch_inner, Outer(), what="it")
    call_learner(lambda self: None, Outer(), what="it")  # a meta tensor has no values to compare, and is left out


def test_diagnose_among_names_both_slips_when_the_numbers_fit_both():
    from tests.checking import diagnose_among

    with pytest.raises(CheckFailure, match="Averaged; or else, as these numbers fit both: Halved."):
        diagnose_among(
            torch.ones(2),
            torch.zeros(2),
            {"Averaged.": [torch.ones(2)], "Halved.": [torch.full((2,), 3.0), torch.ones(2)]},
            otherwise="?",
        )
    with pytest.raises(CheckFailure, match=r"^\?$"):
        diagnose_among(torch.ones(2), torch.zeros(2), [("Averaged.", torch.full((2,), 5.0))], otherwise="?")


def test_checks_run_on_one_thread_and_restore_the_learners_setting():
    seen = []

    @check("demo")
    def demo(learner):
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo(None)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
