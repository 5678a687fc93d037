"""Mutation suite for Part 4's learner-facing checks (tests/part4_toy_sae.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tests.part4_toy_sae as part4
from tests.suite.conftest import stub
from part_utils.reference.part4_toy_sae import ToySAE, max_cosine_similarity


def with_method(name: str, function: object) -> type[ToySAE]:
    return type("LearnerToySAE", (ToySAE,), {name: function})


def with_property(name: str, function: object) -> type[ToySAE]:
    return type("LearnerToySAE", (ToySAE,), {name: property(function)})


# __init__ ---------------------------------------------------------------------------------


def make_init(*, per_instance=False, separate_tied_decoder=False, freeze=True, bias=0.0, normal=False, transposed=False, shared=False):
    def init(self, cfg, model):
        nn.Module.__init__(self)
        self.cfg = cfg
        self.model = model.requires_grad_(False) if freeze else model
        device = model.W.device

        def weight(*shape):
            if normal:
                return nn.Parameter(torch.randn(*shape, device=device))
            if per_instance:  # a different but correct way: Kaiming on each instance's matrix
                return nn.Parameter(torch.stack([nn.init.kaiming_uniform_(torch.empty(*shape[1:], device=device)) for _ in range(shape[0])]))
            if shared:
                return nn.Parameter(nn.init.kaiming_uniform_(torch.empty(1, *shape[1:], device=device)).repeat(shape[0], 1, 1))
            return nn.Parameter(nn.init.kaiming_uniform_(torch.empty(*shape, device=device)))

        self.W_enc = weight(cfg.n_inst, cfg.d_sae, cfg.d_in) if transposed else weight(cfg.n_inst, cfg.d_in, cfg.d_sae)
        self._W_dec = None if cfg.tied_weights and not separate_tied_decoder else weight(cfg.n_inst, cfg.d_sae, cfg.d_in)
        self.b_enc = nn.Parameter(torch.full((cfg.n_inst, cfg.d_sae), bias, device=device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in, device=device))

    return init


def test_init_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_init, ToySAE)
    checks.passes(part4.test_init, with_method("__init__", make_init(per_instance=True)))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (make_init(separate_tied_decoder=True), "tied SAE must set `self._W_dec = None`"),
        (make_init(freeze=False), "not frozen"),
        (make_init(bias=0.1), "biases must start at zero"),
        (make_init(normal=True), "Kaiming-uniform"),
        (make_init(transposed=True), r"\[inst, d_in, d_sae\]"),
        (make_init(shared=True), "same weights"),
    ],
)
def test_init_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_init, with_method("__init__", mutant), message)


# W_dec_normalized -------------------------------------------------------------------------

NORMALISED_MUTANTS = [
    (lambda self: self.W_dec, "unnormalised"),
    (lambda self: self.W_dec / (self.W_dec.norm(dim=-2, keepdim=True) + 1e-8), "wrong dimension"),
    (lambda self: self.W_dec / self.W_dec.norm(dim=-1, keepdim=True), "add cfg.weight_normalize_eps"),
    (lambda self: self.W_dec / (self.W_dec.pow(2).sum(-1, keepdim=True) + 1e-8), "squared norm"),
    (lambda self: self._W_dec / (self._W_dec.norm(dim=-1, keepdim=True) + 1e-8), r"use the `self.W_dec` property"),
]


def test_W_dec_normalized_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_W_dec_normalized, ToySAE)
    checks.passes(part4.test_W_dec_normalized, with_property("W_dec_normalized", lambda self: F.normalize(self.W_dec.double(), dim=-1)))


@pytest.mark.parametrize(("mutant", "message"), NORMALISED_MUTANTS)
def test_W_dec_normalized_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_W_dec_normalized, with_property("W_dec_normalized", mutant), message)


# generate_batch ---------------------------------------------------------------------------


def generate_matmul(self, batch_size):
    features = self.model.generate_batch(batch_size)  # [batch, inst, feats]
    return (self.model.W[None] @ features[..., None]).squeeze(-1).double()


def generate_features_only(self, batch_size):
    return self.model.generate_batch(batch_size)


def generate_instance_zero_features(self, batch_size):
    features = self.model.generate_batch(batch_size)[:, :1].expand(-1, self.cfg.n_inst, -1)
    return torch.einsum("ihf,bif->bih", self.model.W, features)


def generate_own_draws(self, batch_size):
    # Correct, but draws the features itself in another order: passes on statistics alone.
    probability = self.model.feature_probability
    magnitudes = torch.rand(batch_size, *probability.shape, device=probability.device)
    features = magnitudes * (torch.rand(batch_size, *probability.shape, device=probability.device) < probability)
    return torch.einsum("ihf,bif->bih", self.model.W, features)


def test_generate_batch_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_generate_batch, ToySAE)
    checks.passes(part4.test_generate_batch, with_method("generate_batch", generate_matmul))
    checks.passes(part4.test_generate_batch, with_method("generate_batch", generate_own_draws))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [(generate_features_only, "returned the features x"), (generate_instance_zero_features, r"average to W E\[x\]")],
)
def test_generate_batch_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_generate_batch, with_method("generate_batch", mutant), message)


# forward ----------------------------------------------------------------------------------


def make_forward(*, centre=True, add_back=True, normalised=True, relu=True, l1="sum", rec="mean", inst="sum", batch="mean", coeff=True):
    def forward(self, h):
        W_dec = self.W_dec_normalized if normalised else self.W_dec
        pre = torch.einsum("bid,ids->bis", h - self.b_dec if centre else h, self.W_enc) + self.b_enc
        acts = F.relu(pre) if relu else pre
        h_rec = torch.einsum("bis,isd->bid", acts, W_dec) + (self.b_dec if add_back else 0)
        squared = (h_rec - h).pow(2)
        loss_dict = {
            "L_reconstruction": squared.mean(-1) if rec == "mean" else squared.sum(-1),
            "L_sparsity": acts.abs().sum(-1) if l1 == "sum" else acts.abs().mean(-1),
        }
        per_input = loss_dict["L_reconstruction"] + (self.cfg.sparsity_coeff if coeff else 1.0) * loss_dict["L_sparsity"]
        per_instance = per_input.mean(0) if batch == "mean" else per_input.sum(0)
        loss = per_instance.sum() if inst == "sum" else per_instance.mean()
        return loss_dict, loss, acts, h_rec

    return forward


def forward_matmul_float64(self, h):
    h = h.double()
    # ReLU((h - b_dec) W_enc + b_enc), written with matmuls and clamp.
    acts = torch.clamp(((h - self.b_dec.double()).unsqueeze(-2) @ self.W_enc.double()).squeeze(-2) + self.b_enc.double(), min=0)
    h_rec = (acts.unsqueeze(-2) @ self.W_dec_normalized.double()).squeeze(-2) + self.b_dec.double()
    reconstruction = ((h_rec - h) ** 2).sum(-1) / h.shape[-1]
    sparsity = acts.sum(-1)
    loss = ((reconstruction + self.cfg.sparsity_coeff * sparsity).sum(0) / h.shape[0]).sum()
    return {"L_reconstruction": reconstruction, "L_sparsity": sparsity}, loss, acts, h_rec


def test_forward_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_forward, ToySAE)
    checks.passes(part4.test_forward, with_method("forward", make_forward()))
    checks.passes(part4.test_forward, with_method("forward", forward_matmul_float64))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"centre": False}, "subtract b_dec from h before encoding"),
        ({"add_back": False}, "forgets to add b_dec back"),
        ({"normalised": False}, "unnormalised decoder"),
        ({"relu": False}, "apply the ReLU"),
        ({"l1": "mean"}, "averaged over latents"),
        ({"rec": "sum"}, "summed over d_in"),
        ({"inst": "mean"}, "averaged over instances"),
        ({"batch": "sum"}, "summed over the batch"),
        ({"coeff": False}, "sparsity_coeff"),
    ],
)
def test_forward_names_each_mistake(checks, options, message):
    checks.fails(part4.test_forward, with_method("forward", make_forward(**options)), message)


def test_forward_refuses_the_wrong_return_shape(checks):
    checks.fails(part4.test_forward, with_method("forward", lambda self, h: make_forward()(self, h)[:2]), "tuple of four")


# max_cosine_similarity --------------------------------------------------------------------


def cosine_loop_float64(W_dec, features):
    best = torch.empty(features.shape[:2], dtype=torch.float64)
    for inst in range(features.shape[0]):
        for feature in range(features.shape[1]):
            f = features[inst, feature].double()
            cosines = [torch.dot(f, row.double()) / (f.norm() * row.double().norm()) for row in W_dec[inst]]
            best[inst, feature] = max(cosines)
    return best


def test_max_cosine_similarity_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_max_cosine_similarity, max_cosine_similarity)
    checks.passes(part4.test_max_cosine_similarity, cosine_loop_float64)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (lambda W, f: torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), W).max(-1).values, "decoder rows are not normalised"),
        (lambda W, f: torch.einsum("ifd,isd->ifs", f, F.normalize(W, dim=-1)).max(-1).values, "feature directions are not normalised"),
        (lambda W, f: torch.einsum("ifd,isd->ifs", f, W).max(-1).values, "Neither side is normalised"),
        (lambda W, f: torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=-1)).abs().max(-1).values, "absolute cosine"),
        (lambda W, f: torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=-1)).max(-2).values, "maximum over features"),
    ],
)
def test_max_cosine_similarity_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_max_cosine_similarity, mutant, message)


# resample_simple --------------------------------------------------------------------------


def make_resample_simple(*, touch_live=False, keep_bias=False, normalise=True, scale_encoder=True, return_mask=True, same_direction=False):
    def resample(self, frac_active_in_window, resample_scale):
        dead = frac_active_in_window < 1e-8
        chosen = torch.ones_like(dead) if touch_live else dead
        for inst, latent in chosen.nonzero().tolist():
            direction = torch.ones(self.cfg.d_in, device=dead.device) if same_direction else torch.randn(self.cfg.d_in, device=dead.device)
            if normalise:
                direction = direction / direction.norm()
            self.W_enc.data[inst, :, latent] = direction * (resample_scale if scale_encoder else 1.0)
            if self._W_dec is not None:
                self._W_dec.data[inst, latent] = direction
            if not keep_bias:
                self.b_enc.data[inst, latent] = 0.0
        return dead if return_mask else None

    return resample


def test_resample_simple_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_resample_simple, ToySAE)
    checks.passes(part4.test_resample_simple, with_method("resample_simple", make_resample_simple()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"touch_live": True}, "changed live latents"),
        ({"keep_bias": True}, "non-zero encoder bias"),
        ({"normalise": False}, "unit norm"),
        ({"scale_encoder": False}, "scale them down by resample_scale"),
        ({"return_mask": False}, "return the boolean mask"),
        ({"same_direction": True}, "same direction"),
    ],
)
def test_resample_simple_names_each_mistake(checks, options, message):
    checks.fails(part4.test_resample_simple, with_method("resample_simple", make_resample_simple(**options)), message)


# resample_advanced ------------------------------------------------------------------------


def make_resample_advanced(*, weighting="squared", centre=True, normalise=True, norm_over="live", touch_live=False, keep_bias=False):
    def resample(self, frac_active_in_window, resample_scale, batch_size=4_096):
        dead = frac_active_in_window < 1e-8
        chosen = torch.ones_like(dead) if touch_live else dead
        h = self.generate_batch(batch_size)
        loss = self.forward(h)[0]["L_reconstruction"]
        weights = {"squared": loss.pow(2), "linear": loss, "uniform": torch.ones_like(loss)}[weighting]
        for inst in range(self.cfg.n_inst):
            latents = chosen[inst].nonzero().squeeze(-1)
            if len(latents) == 0:
                continue
            picks = torch.multinomial(weights[:, inst], len(latents), replacement=True)
            directions = h[picks, inst] - (self.b_dec[inst] if centre else 0)
            if normalise:
                directions = directions / directions.norm(dim=-1, keepdim=True)
            norms = self.W_enc[inst].norm(dim=0)
            live_norm = {"live": norms[~dead[inst]].mean(), "all": norms.mean(), "none": torch.tensor(1.0)}[norm_over]
            unit = directions / directions.norm(dim=-1, keepdim=True)
            self.W_enc.data[inst][:, latents] = (unit * live_norm * resample_scale).T
            self._W_dec.data[inst][latents] = directions
            if not keep_bias:
                self.b_enc.data[inst][latents] = 0.0
        return dead

    return resample


def test_resample_advanced_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_resample_advanced, ToySAE)
    checks.passes(part4.test_resample_advanced, with_method("resample_advanced", make_resample_advanced()))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weighting": "uniform"}, "drawn uniformly"),
        ({"weighting": "linear"}, "squared reconstruction loss"),
        ({"centre": False}, "not centred"),
        ({"normalise": False}, "not normalised"),
        ({"norm_over": "all"}, "only the live latents"),
        ({"norm_over": "none"}, "not scaled by the mean live encoder norm"),
        ({"touch_live": True}, "changed live latents"),
        ({"keep_bias": True}, "non-zero encoder bias"),
    ],
)
def test_resample_advanced_names_each_mistake(checks, options, message):
    checks.fails(part4.test_resample_advanced, with_method("resample_advanced", make_resample_advanced(**options)), message)


# shared behaviour -------------------------------------------------------------------------

METHOD_CHECKS = [
    (part4.test_init, "__init__"),
    (part4.test_generate_batch, "generate_batch"),
    (part4.test_forward, "forward"),
    (part4.test_resample_simple, "resample_simple"),
    (part4.test_resample_advanced, "resample_advanced"),
]


@pytest.mark.parametrize(("check", "name"), METHOD_CHECKS)
def test_stubs_report_not_implemented(checks, check, name):
    checks.fails(check, with_method(name, stub), rf"`{name}` is not implemented yet")


def test_stub_property_and_function_report_not_implemented(checks):
    checks.fails(part4.test_W_dec_normalized, with_property("W_dec_normalized", stub), "not implemented yet")
    checks.fails(part4.test_max_cosine_similarity, stub, "not implemented yet")


@pytest.mark.parametrize(("check", "name"), METHOD_CHECKS)
def test_wrong_kind_of_object_is_named(checks, check, name):
    checks.fails(check, 3.5, rf"Pass (the class that has )?your `{name}`")
