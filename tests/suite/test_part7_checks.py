"""Mutation suite for Part 7's learner-facing checks (tests/part7_sae_circuits.py)."""

import pytest
import torch
import torch.nn.functional as F

import tests.part7_sae_circuits as part7
from part_utils.reference import part7_sae_circuits as reference
from tests.checking import CheckFailure
from tests.suite.conftest import stub


def make_loop(*, derivative: str = "step", transpose_result: bool = False, first_token_only: bool = False, transposed_W_in: bool = False):
    """A loop Jacobian with one deliberate change (or none: a correct float64 rewrite with matmuls)."""

    def jacobian_loop(weights, mlp_pre, active_in, active_out):
        W_in = weights.W_in.T if transposed_W_in else weights.W_in
        tokens, k_in = active_in.shape
        k_out = active_out.shape[1]
        rows = []
        for t in range(tokens):
            pre = mlp_pre[0 if first_token_only else t].double()
            scale = {"step": (pre > 0).double(), "none": torch.ones_like(pre), "relu": F.relu(pre), "negative": (pre < 0).double()}[derivative]
            written = weights.W_dec_in[active_in[t]].double() @ W_in.double()  # [k_in, d_mlp]
            read = (weights.W_out.double() @ weights.W_enc_out[:, active_out[t]].double()).T  # [k_out, d_mlp]
            block = (read * scale) @ written.T
            rows.append(block.T if transpose_result else block)
        return torch.stack(rows).reshape(tokens, *((k_in, k_out) if transpose_result else (k_out, k_in)))

    return jacobian_loop


def make_products(*, transposed_W_in: bool = False, untransposed_read: bool = False):
    def latent_products(weights):
        W_in = weights.W_in.T if transposed_W_in else weights.W_in
        read = weights.W_out @ weights.W_enc_out
        return reference.LatentProducts(written=weights.W_dec_in @ W_in, read=read if untransposed_read else weights.W_enc_out.T @ weights.W_out.T)

    return latent_products


def make_vectorised(*, gather_axis: str = "rows", derivative: str = "step", matmul: bool = False):
    def jacobian_vectorised(products, mlp_pre, active_in, active_out):
        scale = {"step": (mlp_pre > 0).to(mlp_pre.dtype), "none": torch.ones_like(mlp_pre), "relu": F.relu(mlp_pre)}[derivative]
        written = products.written[active_in]  # [tokens, k_in, d_mlp]
        read = products.read[active_out] if gather_axis == "rows" else products.read[:, active_out].permute(1, 2, 0)
        if matmul:  # a correct rewrite with a batched matmul in float64
            return torch.bmm(read.double() * scale.double()[:, None, :], written.double().transpose(1, 2))
        return torch.einsum("tom,tm,tim->toi", read, scale, written)

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
    checks.passes(lambda _: part7.test_jacobian_vectorised(reference.latent_products, reference.jacobian_vectorised), None)
    line = checks.passes(lambda _: part7.test_jacobian_vectorised(make_products(), make_vectorised(matmul=True), loop=make_loop()), None)
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
    checks.fails(lambda _: part7.test_jacobian_vectorised(stub, reference.jacobian_vectorised), None, "`latent_products` is not implemented yet")
    checks.fails(lambda _: part7.test_jacobian_vectorised(reference.latent_products, stub), None, "`jacobian_vectorised` is not implemented yet")


def test_jacobian_vectorised_notices_a_disagreeing_loop(checks):
    checks.fails(
        lambda _: part7.test_jacobian_vectorised(reference.latent_products, reference.jacobian_vectorised, loop=make_loop(derivative="none")),
        None,
        "disagree",
    )


def test_checks_do_not_change_the_learners_random_state(checks):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    checks.passes(part7.test_jacobian_loop, reference.jacobian_loop)
    checks.passes(lambda _: part7.test_jacobian_vectorised(reference.latent_products, reference.jacobian_vectorised), None)
    assert torch.equal(torch.rand(3), expected)
