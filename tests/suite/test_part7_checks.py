"""Mutation suite for Part 7's learner-facing checks (tests/part7_sae_circuits.py)."""

import pytest
import torch
import torch.nn.functional as F

import tests.part7_sae_circuits as part7
from part_utils.reference import part7_sae_circuits as reference
from tests.checking import CheckFailure
from tests.suite.conftest import notebook_function, stub

DERIVATIVES = {
    "step": lambda pre: (pre > 0).double(),
    "post-activation": lambda pre: (F.relu(pre) > 0).double(),  # correct: the same step
    "none": lambda pre: torch.ones_like(pre),
    "relu": F.relu,
    "negative": lambda pre: (pre < 0).double(),
    "at least zero": lambda pre: (pre >= 0).double(),
    "heaviside half": lambda pre: torch.heaviside(pre, torch.tensor(0.5, dtype=pre.dtype)),
    "post-activation at least zero": lambda pre: (F.relu(pre) >= 0).double(),
    "sign": torch.sign,
}


def make_loop(
    *,
    derivative: str = "step",
    transpose_result: bool = False,
    first_token_only: bool = False,
    transposed_W_in: bool = False,
    W_out_for_W_in: bool = False,
    W_in_for_W_out: bool = False,
    normalised_encoder: bool = False,
    squeeze: bool = False,
):
    """A loop Jacobian with one deliberate change (or none: a correct float64 rewrite with matmuls)."""

    def jacobian_loop(weights, mlp_pre, active_in, active_out):
        W_in = weights.W_in.T if transposed_W_in else weights.W_out.T if W_out_for_W_in else weights.W_in
        W_out = weights.W_in.T if W_in_for_W_out else weights.W_out
        W_enc_out = F.normalize(weights.W_enc_out, dim=0) if normalised_encoder else weights.W_enc_out
        tokens, k_in = active_in.shape
        k_out = active_out.shape[1]
        rows = []
        for t in range(tokens):
            pre = mlp_pre[0 if first_token_only else t].double()
            scale = DERIVATIVES[derivative](pre)
            written = weights.W_dec_in[active_in[t]].double() @ W_in.double()  # [k_in, d_mlp]
            read = (W_out.double() @ W_enc_out[:, active_out[t]].double()).T  # [k_out, d_mlp]
            block = (read * scale) @ written.T
            rows.append(block.T if transpose_result else block)
        result = torch.stack(rows).reshape(tokens, *((k_in, k_out) if transpose_result else (k_out, k_in)))
        return result.squeeze() if squeeze else result

    return jacobian_loop


def make_products(
    *,
    transposed_W_in: bool = False,
    untransposed_read: bool = False,
    transposed_written: bool = False,
    swapped: bool = False,
    W_out_for_W_in: bool = False,
    W_in_for_W_out: bool = False,
    normalised_encoder: bool = False,
    normalised_written: bool = False,
):
    def latent_products(weights):
        W_in = weights.W_in.T if transposed_W_in else weights.W_out.T if W_out_for_W_in else weights.W_in
        W_out = weights.W_in.T if W_in_for_W_out else weights.W_out
        W_enc_out = F.normalize(weights.W_enc_out, dim=0) if normalised_encoder else weights.W_enc_out
        written = weights.W_dec_in @ W_in
        written = F.normalize(written, dim=-1) if normalised_written else written
        read = W_out @ W_enc_out
        written, read = (
            (written.T if transposed_written else written),
            (read if untransposed_read else W_enc_out.T @ W_out.T),
        )
        return (
            reference.LatentProducts(written=read, read=written)
            if swapped
            else reference.LatentProducts(written=written, read=read)
        )

    return latent_products


def make_vectorised(
    *,
    gather_axis: str = "rows",
    derivative: str = "step",
    matmul: bool = False,
    read_by_input: bool = False,
    output: str = "toi",
    pattern: str | None = None,
):
    def jacobian_vectorised(products, mlp_pre, active_in, active_out):
        scale = DERIVATIVES[derivative](mlp_pre).to(mlp_pre.dtype)
        written = products.written[active_in]  # [tokens, k_in, d_mlp]
        read_indices = active_in if read_by_input else active_out
        read = products.read[read_indices] if gather_axis == "rows" else products.read[:, read_indices].permute(1, 2, 0)
        if matmul:  # a correct rewrite with a batched matmul in float64
            return torch.bmm(read.double() * scale.double()[:, None, :], written.double().transpose(1, 2))
        return torch.einsum(pattern or f"tom,tm,tim->{output}", read, scale, written)

    return jacobian_vectorised


# jacobian_loop -----------------------------------------------------------------------------


def test_jacobian_loop_accepts_reference_and_rewrites(checks):
    checks.passes(part7.test_jacobian_loop, reference.jacobian_loop)
    checks.passes(part7.test_jacobian_loop, make_loop())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"derivative": "none"}, "ReLU derivative is missing"),
        ({"derivative": "relu"}, r"multiplied by ReLU\(pre\)"),
        ({"derivative": "negative"}, "not where pre < 0"),
        ({"first_token_only": True}, "first token's ReLU derivative"),
        ({"transpose_result": True}, r"\[tokens, k_in, k_out\]"),
        ({"transposed_W_in": True}, "transposed weight"),
    ],
)
def test_jacobian_loop_names_each_mistake(checks, options, message):
    checks.fails(part7.test_jacobian_loop, make_loop(**options), message)


def test_a_transposed_result_with_equal_k_is_named_by_its_values():
    case = part7.random_case(n_tokens=4, k_in=3, k_out=3)
    with pytest.raises(CheckFailure, match="The result is transposed"):
        part7._diagnose(part7.expected_jacobian(case).transpose(1, 2), case, "jacobian_loop")


def test_jacobian_loop_reports_a_stub(checks):
    checks.fails(part7.test_jacobian_loop, stub, "not implemented yet")


def test_jacobian_loop_names_a_crash_with_its_line(checks):
    def crashes(weights, mlp_pre, active_in, active_out):
        return weights.missing_attribute

    checks.fails(part7.test_jacobian_loop, crashes, r"raised AttributeError.*line \d+ of `crashes`")


# latent_products and jacobian_vectorised ---------------------------------------------------


def test_jacobian_vectorised_accepts_reference_and_rewrites(checks):
    checks.passes(
        lambda _: part7.test_jacobian_vectorised(reference.latent_products, reference.jacobian_vectorised), None
    )
    line = checks.passes(
        lambda _: part7.test_jacobian_vectorised(make_products(), make_vectorised(matmul=True), loop=make_loop()), None
    )
    assert "your loop" in line and "autograd" in line


@pytest.mark.parametrize(
    ("products", "vectorised", "message"),
    [
        ({}, {"derivative": "none"}, "ReLU derivative is missing"),
        ({}, {"derivative": "relu"}, r"multiplied by ReLU\(pre\)"),
        ({}, {"gather_axis": "columns"}, "check which axis you gather along"),
        ({"transposed_W_in": True}, {}, "transposed weight"),
        ({"untransposed_read": True}, {}, r"store it transposed, \[d_sae_out, d_mlp\]"),
    ],
)
def test_jacobian_vectorised_names_each_mistake(checks, products, vectorised, message):
    learner = (make_products(**products), make_vectorised(**vectorised))
    checks.fails(lambda _: part7.test_jacobian_vectorised(*learner), None, message)


def test_jacobian_vectorised_reports_stubs(checks):
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(stub, reference.jacobian_vectorised),
        None,
        "`latent_products` is not implemented yet",
    )
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(reference.latent_products, stub),
        None,
        "`jacobian_vectorised` is not implemented yet",
    )


def test_jacobian_vectorised_notices_a_disagreeing_loop(checks):
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(
            reference.latent_products, reference.jacobian_vectorised, loop=make_loop(derivative="none")
        ),
        None,
        "disagree",
    )


def test_checks_do_not_change_the_learners_random_state(checks):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.passes(part7.test_jacobian_loop, reference.jacobian_loop)
    checks.passes(
        lambda _: part7.test_jacobian_vectorised(reference.latent_products, reference.jacobian_vectorised), None
    )
    assert torch.equal(torch.rand(3), expected)


# Further mistakes and rewrites -------------------------------------------------------------


def loop_with_python_sums(weights, mlp_pre, active_in, active_out, dtype=None):
    """Correct: four nested loops down to single numbers, into a tensor of mlp_pre's dtype (or of `dtype`)."""
    tokens, k_in = active_in.shape
    k_out = active_out.shape[1]
    jacobian = torch.zeros(tokens, k_out, k_in, dtype=dtype or mlp_pre.dtype)
    for t in range(tokens):
        for o in range(k_out):
            reads = weights.W_out @ weights.W_enc_out[:, active_out[t, o]]
            for i in range(k_in):
                writes = weights.W_dec_in[active_in[t, i]] @ weights.W_in
                jacobian[t, o, i] = sum(float(writes[m] * reads[m]) for m in range(len(writes)) if mlp_pre[t, m] > 0)
    return jacobian


def loop_in_place_on_own_temporaries(weights, mlp_pre, active_in, active_out):
    """Correct: the derivative built in place on a clone, entries written into a preallocated result."""
    tokens, k_in = active_in.shape
    jacobian = mlp_pre.new_zeros(tokens, active_out.shape[1], k_in)
    for t in range(tokens):
        derivative = mlp_pre[t].clone()
        derivative[derivative > 0] = 1.0
        derivative.clamp_(min=0.0)
        written = weights.W_dec_in[active_in[t]] @ weights.W_in
        written.mul_(derivative)
        jacobian[t] = (weights.W_out @ weights.W_enc_out[:, active_out[t]]).T @ written.T
    return jacobian


def loop_sign_of_pre(weights, mlp_pre, active_in, active_out):
    """Correct: the step written as sign(pre) clamped at 0 (0 at the kink), with einsum per token."""
    return torch.stack(
        [
            torch.einsum(
                "mo,m,im->oi",
                weights.W_out @ weights.W_enc_out[:, active_out[t]],
                torch.sign(mlp_pre[t]).clamp(min=0),
                weights.W_dec_in[active_in[t]] @ weights.W_in,
            )
            for t in range(len(mlp_pre))
        ]
    )


@pytest.mark.parametrize(
    "learner",
    [
        make_loop(derivative="post-activation"),
        loop_with_python_sums,
        loop_in_place_on_own_temporaries,
        loop_sign_of_pre,
    ],
)
def test_jacobian_loop_accepts_further_rewrites(checks, learner):
    checks.passes(part7.test_jacobian_loop, learner)


# Float64 in, float64 out: a float32 result is as close to the values as the tolerance asks, so only the dtype tells.
FLOAT32_FOR_FLOAT64 = r"returned torch\.float32 for float64 inputs: keep the inputs' dtype"


def loop_into_float32(weights, mlp_pre, active_in, active_out):
    """Right values, written into a float32 tensor whatever the inputs' dtype."""
    return loop_with_python_sums(weights, mlp_pre, active_in, active_out, dtype=torch.float32)


def vectorised_in_float32(products, mlp_pre, active_in, active_out):
    return reference.jacobian_vectorised(products, mlp_pre, active_in, active_out).float()


def products_in_float32(weights):
    products = reference.latent_products(weights)
    return reference.LatentProducts(written=products.written.float(), read=products.read.float())


def test_float64_inputs_need_a_float64_result(checks):
    assert any(case[1].dtype == torch.float64 for case in part7.check_cases())
    assert "float64 in, float64 out" in checks.passes(part7.test_jacobian_loop, reference.jacobian_loop)
    checks.passes(part7.test_jacobian_loop, loop_with_python_sums)
    checks.fails(part7.test_jacobian_loop, loop_into_float32, r"`jacobian_loop` " + FLOAT32_FOR_FLOAT64)
    reference_pair = (reference.latent_products, reference.jacobian_vectorised)
    assert "float64 in, float64 out" in checks.passes(lambda _: part7.test_jacobian_vectorised(*reference_pair), None)
    checks.passes(lambda _: part7.test_jacobian_vectorised(products_with_einsum, vectorised_broadcast), None)
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(reference.latent_products, vectorised_in_float32),
        None,
        r"`jacobian_vectorised` " + FLOAT32_FOR_FLOAT64,
    )
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(products_in_float32, reference.jacobian_vectorised),
        None,
        r"`latent_products` returned a `written` of torch\.float32 for float64 inputs",
    )


def loop_binarises_mlp_pre_in_place(weights, mlp_pre, active_in, active_out):
    derivative = mlp_pre
    derivative[derivative > 0] = 1.0
    derivative[derivative <= 0] = 0.0
    return reference.jacobian_loop(weights, derivative, active_in, active_out)


def loop_renormalises_decoder_in_place(weights, mlp_pre, active_in, active_out):
    W_dec_in = weights.W_dec_in
    W_dec_in /= W_dec_in.norm(dim=-1, keepdim=True)
    return reference.jacobian_loop(weights, mlp_pre, active_in, active_out)


def loop_sorts_indices_in_place(weights, mlp_pre, active_in, active_out):
    active_in[:] = active_in.sort(dim=-1).values
    return reference.jacobian_loop(weights, mlp_pre, active_in, active_out)


def loop_reads_with_input_indices(weights, mlp_pre, active_in, active_out):
    jacobian = reference.jacobian_loop(weights, mlp_pre, active_in, active_in)
    return jacobian[:, : active_out.shape[1]] if active_out.shape[1] <= active_in.shape[1] else jacobian


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (make_loop(derivative="at least zero"), r"pre exactly 0 as on \(>= 0\)"),
        (
            make_loop(derivative="post-activation at least zero"),
            r"missing \(or is 1 everywhere, as ReLU\(pre\) >= 0 is\)",
        ),
        (make_loop(derivative="heaviside half"), "0.5 where pre is exactly 0"),
        (make_loop(W_out_for_W_in=True), "uses W_out transposed; it is its decoder row times W_in"),
        (make_loop(W_in_for_W_out=True), "uses W_in transposed; it is W_out times its encoder column"),
        (make_loop(normalised_encoder=True), "W_enc_out's columns were normalised"),
        (make_loop(squeeze=True), r"keep every axis, even one of length 1 \(no \.squeeze\(\)\)"),
        (loop_binarises_mlp_pre_in_place, "changed `mlp_pre` in place"),
        (loop_renormalises_decoder_in_place, r"changed `weights\.W_dec_in` in place"),
        (loop_sorts_indices_in_place, "changed `active_in` in place"),
        (loop_reads_with_input_indices, r"\[tokens, k_in, k_in\]"),
    ],
)
def test_jacobian_loop_names_further_mistakes(checks, learner, message):
    checks.fails(part7.test_jacobian_loop, learner, message)


def test_output_latents_read_with_input_indices_are_named_by_their_values_when_k_in_equals_k_out():
    case = part7.random_case(n_tokens=4, k_in=3, k_out=3)
    with pytest.raises(CheckFailure, match="output latents are chosen with active_in"):
        part7._diagnose(part7.expected_jacobian(case, read_by="in"), case, "jacobian_loop")


def test_every_case_has_neurons_exactly_at_the_kink():
    assert all((case[1] == 0).any() for case in part7.check_cases())


def vectorised_broadcast(products, mlp_pre, active_in, active_out):
    """Correct: broadcasting and a sum over d_mlp instead of einsum."""
    read, written = products.read[active_out], products.written[active_in]
    return (read[:, :, None, :] * (mlp_pre > 0)[:, None, None, :] * written[:, None, :, :]).sum(dim=-1)


def vectorised_in_place_on_own_temporaries(products, mlp_pre, active_in, active_out):
    """Correct: masks the gathered rows in place (gathering made a new tensor) and multiplies in float64."""
    read = products.read[active_out].double()
    read.mul_((mlp_pre > 0).double()[:, None, :])
    return read @ products.written[active_in].double().transpose(-1, -2)


def products_with_einsum(weights):
    return reference.LatentProducts(
        written=torch.einsum("sd,dm->sm", weights.W_dec_in.double(), weights.W_in.double()),
        read=torch.einsum("md,do->om", weights.W_out.double(), weights.W_enc_out.double()),
    )


@pytest.mark.parametrize(
    ("products", "vectorised"),
    [
        (products_with_einsum, vectorised_broadcast),
        (reference.latent_products, vectorised_in_place_on_own_temporaries),
        (make_products(), make_vectorised(derivative="post-activation")),
    ],
)
def test_jacobian_vectorised_accepts_further_rewrites(checks, products, vectorised):
    checks.passes(lambda _: part7.test_jacobian_vectorised(products, vectorised, loop=loop_sign_of_pre), None)


def vectorised_binarises_mlp_pre_in_place(products, mlp_pre, active_in, active_out):
    return reference.jacobian_vectorised(products, mlp_pre.gt_(0).to(mlp_pre.dtype), active_in, active_out)


def vectorised_masks_products_in_place(products, mlp_pre, active_in, active_out):
    written = products.written
    written[:] = written * 1.0001
    return reference.jacobian_vectorised(products, mlp_pre, active_in, active_out)


def vectorised_squeezes(products, mlp_pre, active_in, active_out):
    return reference.jacobian_vectorised(products, mlp_pre, active_in, active_out).squeeze()


def products_normalise_decoder_in_place(weights):
    weights.W_dec_in.div_(weights.W_dec_in.norm(dim=-1, keepdim=True))
    return reference.latent_products(weights)


@pytest.mark.parametrize(
    ("products", "vectorised", "message"),
    [
        (make_products(), make_vectorised(derivative="at least zero"), r"pre exactly 0 as on \(>= 0\)"),
        (make_products(), make_vectorised(read_by_input=True), r"\[tokens, k_in, k_in\]"),
        (make_products(), make_vectorised(output="tio"), r"returned shape \[tokens, k_in, k_out\]"),
        (make_products(), vectorised_squeezes, r"no \.squeeze\(\)"),
        (make_products(), vectorised_binarises_mlp_pre_in_place, "changed `mlp_pre` in place"),
        (make_products(), vectorised_masks_products_in_place, r"changed `products\.written` in place"),
        (products_normalise_decoder_in_place, make_vectorised(), r"changed `weights\.W_dec_in` in place"),
        (make_products(transposed_written=True), make_vectorised(), r"`written` is \[d_mlp, d_sae_in\]"),
        (make_products(swapped=True), make_vectorised(), "`written` and `read` are swapped"),
        (make_products(W_out_for_W_in=True), make_vectorised(), "`written` uses W_out transposed"),
        (make_products(W_in_for_W_out=True), make_vectorised(), "`read` uses W_in transposed"),
        (make_products(normalised_encoder=True), make_vectorised(), "W_enc_out's columns were normalised"),
        (make_products(normalised_written=True), make_vectorised(), "`written`'s rows were normalised"),
    ],
)
def test_jacobian_vectorised_names_further_mistakes(checks, products, vectorised, message):
    checks.fails(lambda _: part7.test_jacobian_vectorised(products, vectorised), None, message)


def test_a_value_instead_of_the_function_is_named(checks):
    checks.fails(part7.test_jacobian_loop, torch.zeros(3), r"Pass your `jacobian_loop` function itself")
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(reference.latent_products, torch.zeros(3)),
        None,
        r"Pass your `jacobian_vectorised` function itself",
    )


# Issue 24: wrong indices and loop ranges, state across calls, the promise of no Python loops -----------


def loop_derivatives_first(weights, mlp_pre, active_in, active_out):
    """Computes the derivative in a loop of its own first: what is left is the last token's."""
    tokens, k_in = active_in.shape
    jacobian = torch.zeros(tokens, active_out.shape[1], k_in, dtype=mlp_pre.dtype)
    for t in range(tokens):
        derivative = (mlp_pre[t] > 0).to(mlp_pre.dtype)
    for t in range(tokens):
        for o in range(active_out.shape[1]):
            reads = weights.W_out @ weights.W_enc_out[:, active_out[t, o]]
            for i in range(k_in):
                jacobian[t, o, i] = (weights.W_dec_in[active_in[t, i]] @ weights.W_in * derivative * reads).sum()
    return jacobian


def loop_with(*, derivative_row: str = "t", o_range: str = "k_out", write: str = "toi"):
    """The reference loop with the derivative's row, the range of o, or the order J is filled in changed."""

    def jacobian_loop(weights, mlp_pre, active_in, active_out):
        tokens, k_in = active_in.shape
        k_out = active_out.shape[1]
        jacobian = torch.zeros(tokens, k_out, k_in, dtype=mlp_pre.dtype)
        for t in range(tokens):
            for o in range(k_out if o_range == "k_out" else k_in):
                reads = weights.W_out @ weights.W_enc_out[:, active_out[t, o]]
                for i in range(k_in):
                    row = {"t": t, "o": o, "i": i}[derivative_row]
                    entry = (weights.W_dec_in[active_in[t, i]] @ weights.W_in * (mlp_pre[row] > 0) * reads).sum()
                    if write == "toi":
                        jacobian[t, o, i] = entry
                    else:
                        jacobian[t, i, o] = entry
        return jacobian

    return jacobian_loop


def loop_heaviside(weights, mlp_pre, active_in, active_out):
    """Correct: torch.heaviside with 0 at the kink, and torch.dot for each entry."""
    tokens, k_in = active_in.shape
    jacobian = mlp_pre.new_zeros(tokens, active_out.shape[1], k_in)
    for t in range(tokens):
        derivative = torch.heaviside(mlp_pre[t], mlp_pre.new_zeros(()))
        for o, latent_out in enumerate(active_out[t]):
            reads = weights.W_out @ weights.W_enc_out[:, latent_out]
            for i, latent_in in enumerate(active_in[t]):
                jacobian[t, o, i] = torch.dot(weights.W_dec_in[latent_in] @ weights.W_in, derivative * reads)
    return jacobian


# Loops over the notebook's `k` (4 there) instead of this input's k_out.
LOOP_OVER_NOTEBOOK_K = notebook_function(
    "def jacobian_loop(weights, mlp_pre, active_in, active_out):\n"
    "    J = torch.zeros(len(mlp_pre), active_out.shape[1], active_in.shape[1], dtype=mlp_pre.dtype)\n"
    "    for t in range(len(mlp_pre)):\n"
    "        for o in range(k):\n"
    "            reads = weights.W_out @ weights.W_enc_out[:, active_out[t, o]]\n"
    "            for i in range(active_in.shape[1]):\n"
    "                writes = weights.W_dec_in[active_in[t, i]] @ weights.W_in\n"
    "                J[t, o, i] = (writes * (mlp_pre[t] > 0) * reads).sum()\n"
    "    return J\n",
    "jacobian_loop",
    k=4,
)


def test_jacobian_loop_accepts_a_heaviside_rewrite(checks):
    checks.passes(part7.test_jacobian_loop, loop_heaviside)


@pytest.mark.parametrize(
    ("learner", "message"),
    [
        (loop_derivatives_first, "last token's ReLU derivative"),
        (loop_with(derivative_row="o"), r"comes from row o \(or i\) of mlp_pre"),
        (loop_with(derivative_row="i"), r"comes from row o \(or i\) of mlp_pre"),
        (make_loop(derivative="sign"), r"torch\.sign\(pre\), which is −1 where pre < 0"),
        (loop_with(o_range="k_in"), r"left some entries of J at 0.*o over range\(k_out\)"),
        (loop_with(write="tio"), r"indexed past the end.*filled as J\[t, o, i\]"),
        (LOOP_OVER_NOTEBOOK_K, r"indexed past the end.*reads the notebook's `k` rather than its arguments"),
    ],
)
def test_jacobian_loop_names_wrong_indices_and_ranges(checks, learner, message):
    checks.fails(part7.test_jacobian_loop, learner, message)


PRODUCTS_KEPT = []


def products_kept_from_the_first_call(weights):
    """Computes the products once per pair of SAEs, as the text suggests, but for whatever weights come next."""
    if not PRODUCTS_KEPT:
        PRODUCTS_KEPT.append(reference.latent_products(weights))
    return PRODUCTS_KEPT[0]


def products_decoder_normalised_by_columns(weights):
    return reference.LatentProducts(
        written=F.normalize(weights.W_dec_in, dim=0) @ weights.W_in, read=(weights.W_out @ weights.W_enc_out).T
    )


def products_multi_dot(weights):
    """Correct: torch.linalg.multi_dot and .mT."""
    return reference.LatentProducts(
        written=torch.linalg.multi_dot([weights.W_dec_in, weights.W_in]),
        read=torch.linalg.multi_dot([weights.W_enc_out.mT, weights.W_out.mT]),
    )


def vectorised_loop_over_tokens(products, mlp_pre, active_in, active_out):
    return torch.stack(
        [
            (products.read[active_out[t]] * (mlp_pre[t] > 0)) @ products.written[active_in[t]].T
            for t in range(len(mlp_pre))
        ]
    )


def vectorised_loop_over_output_latents(products, mlp_pre, active_in, active_out):
    written = products.written[active_in] * (mlp_pre > 0)[:, None, :]
    rows = [torch.einsum("tm,tim->ti", products.read[active_out[:, o]], written) for o in range(active_out.shape[1])]
    return torch.stack(rows, dim=1)


def vectorised_by_the_loop(products, mlp_pre, active_in, active_out):
    """Hands the work to the slow loop, through the products' weights rebuilt as identities."""
    weights = reference.CircuitWeights(
        W_dec_in=products.written,
        W_in=torch.eye(products.written.shape[1], dtype=products.written.dtype),
        W_out=torch.eye(products.read.shape[1], dtype=products.read.dtype),
        W_enc_out=products.read.T,
    )
    return reference.jacobian_loop(weights, mlp_pre, active_in, active_out)


def vectorised_index_select(products, mlp_pre, active_in, active_out):
    """Correct: index_select on flattened indices, reshaped, then a batched matmul."""
    written = products.written.index_select(0, active_in.flatten()).view(*active_in.shape, -1)
    read = products.read.index_select(0, active_out.flatten()).view(*active_out.shape, -1)
    return torch.matmul(read * (mlp_pre > 0).to(read.dtype).unsqueeze(1), written.transpose(1, 2))


@pytest.mark.parametrize(
    ("products", "vectorised", "message"),
    [
        (products_kept_from_the_first_call, make_vectorised(), "products of the weights of an earlier call"),
        (products_decoder_normalised_by_columns, make_vectorised(), r"W_dec_in was normalised along its columns"),
        (make_products(), vectorised_loop_over_tokens, "loops in Python over the tokens"),
        (make_products(), vectorised_loop_over_output_latents, "loops in Python over the active latents"),
        (make_products(), vectorised_by_the_loop, "loops in Python over the tokens"),
        (make_products(), make_vectorised(pattern="som,tm,tim->toi"), "summed over the tokens instead of matched"),
        (make_products(), make_vectorised(pattern="tom,sm,tim->toi"), "summed over the tokens instead of matched"),
    ],
)
def test_jacobian_vectorised_names_state_loops_and_axes(checks, products, vectorised, message):
    PRODUCTS_KEPT.clear()
    checks.fails(lambda _: part7.test_jacobian_vectorised(products, vectorised), None, message)


def test_jacobian_vectorised_accepts_index_select_and_multi_dot(checks):
    checks.passes(lambda _: part7.test_jacobian_vectorised(products_multi_dot, vectorised_index_select), None)
