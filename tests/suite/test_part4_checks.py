"""Mutation suite for Part 4's learner-facing checks (tests/part4_toy_sae/)."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tests.part4_toy_sae as part4
from part_utils.reference.part4_toy_sae import ToySAE, max_cosine_similarity
from part_utils.sae_interface import SAEOutput
from part_utils.seeding import forked_rng
from tests.checking import binomial_tolerance
from tests.suite.conftest import stub


def with_method(name: str, function: object) -> type[ToySAE]:
    return type("LearnerToySAE", (ToySAE,), {name: function})


def with_property(name: str, function: object) -> type[ToySAE]:
    return type("LearnerToySAE", (ToySAE,), {name: property(function)})


def after_extra_draws(function: object, extra: int) -> object:
    """The same method, preceded by `extra` random draws: a correct sampler must pass whatever came before."""

    def run(self, *args, **kwargs):
        torch.rand(extra)
        return function(self, *args, **kwargs)

    return run


# __init__ ---------------------------------------------------------------------------------


def make_init(
    *,
    per_instance=False,
    separate_tied_decoder=False,
    freeze=True,
    bias=0.0,
    draw="kaiming",
    transposed=False,
    shared=False,
    device_of_model=True,
    copy_model=False,
    decoder_as_encoder=False,
    transposed_matrices=False,
    trainable=True,
    dtype=torch.float32,
    broadcast_rows=False,
):
    def init(self, cfg, model):
        nn.Module.__init__(self)
        self.cfg = cfg
        stored = copy.deepcopy(model) if copy_model else model
        self.model = stored.requires_grad_(False) if freeze else stored
        device = model.W.device if device_of_model else torch.device("cpu")

        def weight(*shape):
            empty = lambda *s: torch.empty(*s, device=device)  # noqa: E731
            if per_instance:  # a different but correct way: Kaiming on each instance's matrix
                values = torch.stack([nn.init.kaiming_uniform_(empty(*shape[1:])) for _ in range(shape[0])])
            elif transposed_matrices:  # each instance's matrix made transposed, then turned round: the wrong fan
                values = torch.stack([nn.init.kaiming_uniform_(empty(*shape[1:][::-1])).T for _ in range(shape[0])])
            elif shared:
                values = nn.init.kaiming_uniform_(empty(1, *shape[1:])).repeat(shape[0], 1, 1)
            elif broadcast_rows:
                values = nn.init.kaiming_uniform_(empty(shape[0], 1, shape[2])).expand(*shape).clone()
            elif draw == "kaiming":
                values = nn.init.kaiming_uniform_(empty(*shape))
            else:
                values = {
                    "normal": lambda: torch.randn(*shape, device=device),
                    "kaiming_normal": lambda: nn.init.kaiming_normal_(empty(*shape)),
                    "rand": lambda: torch.rand(*shape, device=device),
                    "linear_default": lambda: nn.init.kaiming_uniform_(empty(*shape), a=math.sqrt(5)),
                    "xavier": lambda: nn.init.xavier_uniform_(empty(*shape)),
                    "gain_one": lambda: nn.init.kaiming_uniform_(empty(*shape), nonlinearity="linear"),
                }[draw]()
            return nn.Parameter(values.to(dtype), requires_grad=trainable)

        self.W_enc = weight(cfg.n_inst, cfg.d_sae, cfg.d_in) if transposed else weight(cfg.n_inst, cfg.d_in, cfg.d_sae)
        if cfg.tied_weights and not separate_tied_decoder:
            self._W_dec = None
        elif decoder_as_encoder:
            self._W_dec = nn.Parameter(self.W_enc.detach().transpose(1, 2).clone())
        else:
            self._W_dec = weight(cfg.n_inst, cfg.d_sae, cfg.d_in)
        self.b_enc = nn.Parameter(torch.full((cfg.n_inst, cfg.d_sae), bias, device=device))
        self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in, device=device))

    return init


def init_transposed_whole(self, cfg, model):
    """Correct: Kaiming on the whole transposed tensor has the same fan (d_in × d_sae), so the same distribution."""
    nn.Module.__init__(self)
    self.cfg, self.model = cfg, model.requires_grad_(False)
    device = next(model.parameters()).device
    self.W_enc = nn.Parameter(
        nn.init.kaiming_uniform_(torch.empty(cfg.n_inst, cfg.d_sae, cfg.d_in, device=device))
        .transpose(1, 2)
        .contiguous()
    )
    self._W_dec = (
        None
        if cfg.tied_weights
        else nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.n_inst, cfg.d_sae, cfg.d_in, device=device)))
    )
    self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae, device=device))
    self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in, device=device))


def init_bound_by_hand(self, cfg, model):
    """Correct: the Kaiming-uniform bound written out, drawn in float64 and cast."""
    nn.Module.__init__(self)
    self.cfg = cfg
    self.model = model
    for parameter in model.parameters():
        parameter.requires_grad = False
    bound = math.sqrt(6 / (cfg.d_in * cfg.d_sae))
    uniform = lambda *shape: nn.Parameter(
        (torch.rand(*shape, dtype=torch.float64) * 2 - 1).mul(bound).float().to(model.W.device)
    )  # noqa: E731
    self.W_enc = uniform(cfg.n_inst, cfg.d_in, cfg.d_sae)
    self._W_dec = None if cfg.tied_weights else uniform(cfg.n_inst, cfg.d_sae, cfg.d_in)
    self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae).to(model.W.device))
    self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in).to(model.W.device))


@pytest.mark.parametrize("init", [None, make_init(per_instance=True), init_transposed_whole, init_bound_by_hand])
def test_init_accepts_reference_and_rewrites(checks, init):
    checks.passes(part4.test_init, ToySAE if init is None else with_method("__init__", init))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (make_init(separate_tied_decoder=True), "tied SAE must set `self._W_dec = None`"),
        (make_init(freeze=False), "not frozen"),
        (make_init(bias=0.1), "biases must start at zero"),
        (make_init(draw="normal"), "normally distributed"),
        (make_init(transposed=True), r"\[inst, d_in, d_sae\]"),
        (make_init(shared=True), "Two instances got the same"),
        (make_init(draw="kaiming_normal"), "normally distributed"),
        (make_init(draw="rand"), r"positive \(torch.rand\?\)"),
        (make_init(draw="linear_default"), r"nn.Linear's `a=math.sqrt\(5\)`"),
        (make_init(draw="xavier"), "Xavier-uniform"),
        (make_init(draw="gain_one"), "gain 1"),
        (make_init(transposed_matrices=True), "scale for the transposed matrix"),
        (make_init(broadcast_rows=True), "All rows of each instance's `self.W_enc` are the same"),
        (make_init(decoder_as_encoder=True), r"copy of W_encᵀ"),
        (make_init(device_of_model=False), "model's device"),
        (make_init(copy_model=True), "toy model itself"),
        (make_init(trainable=False), "does not require grad"),
        (make_init(dtype=torch.float64), "keep the default float32"),
    ],
)
def test_init_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_init, with_method("__init__", mutant), message)


def test_init_tied_failures_say_tied(checks):
    def init(self, cfg, model):
        make_init()(self, cfg, model)
        if cfg.tied_weights:
            self.b_dec.data += 1.0

    checks.fails(part4.test_init, with_method("__init__", init), r"^For a tied SAE: both biases")


# W_dec_normalized -------------------------------------------------------------------------


def normalise_in_place(self):
    W = self.W_dec
    W.data /= W.data.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps
    return W


def normalise_own_result_in_place(self):
    out = self.W_dec.clone()
    out /= out.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps  # autograd still needs `out` for the norm
    return out


def normalise_in_place_tied_only(self):
    if self._W_dec is None:
        return normalise_in_place(self)
    return ToySAE.W_dec_normalized.fget(self)


def normalise_clone_in_place(self):
    norm = self.W_dec.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps
    out = self.W_dec.clone()
    out /= norm  # in place, but on its own copy
    return out


NORMALISED_MUTANTS = [
    (lambda self: self.W_dec, "unnormalised"),
    (lambda self: self.W_dec / (self.W_dec.norm(dim=-2, keepdim=True) + 1e-8), "wrong dimension"),
    (lambda self: self.W_dec / self.W_dec.norm(dim=-1, keepdim=True), "add cfg.weight_normalize_eps"),
    (lambda self: self.W_dec / (self.W_dec.pow(2).sum(-1, keepdim=True) + 1e-8), "squared norm"),
    (lambda self: self._W_dec / (self._W_dec.norm(dim=-1, keepdim=True) + 1e-8), r"use the `self.W_dec` property"),
    (lambda self: self.W_dec / (self.W_dec.pow(2).sum(-1, keepdim=True) + 1e-8).sqrt(), "inside the square root"),
    (lambda self: self.W_dec / (self.W_dec.norm(dim=-1, keepdim=True).detach() + 1e-8), "norm is detached"),
    (lambda self: self.W_dec.data / (self.W_dec.data.norm(dim=-1, keepdim=True) + 1e-8), "carries no gradient"),
    (lambda self: self.W_dec / (self.W_dec.abs().sum(-1, keepdim=True) + 1e-8), "L1 norm"),
    (lambda self: self.W_dec / (self.W_dec.norm(dim=(-2, -1), keepdim=True) + 1e-8), "whole matrix"),
    (lambda self: self.W_dec / (self.W_dec.norm(dim=0, keepdim=True) + 1e-8), r"over instances \(dim 0\)"),
    (lambda self: F.normalize(self.W_enc.transpose(-1, -2), dim=-1), "untied SAE has its own decoder"),
    (normalise_in_place, r"changed `self._W_dec` in place"),
    (lambda self: self.W_dec / (self.W_dec.norm(dim=-1) + 1e-8), r"keepdim=True"),
    (normalise_own_result_in_place, r"in-place operation .* changed a tensor that autograd still needed"),
    (normalise_in_place_tied_only, r"^For a tied SAE: `W_dec_normalized` changed `self.W_enc` in place"),
]


def test_W_dec_normalized_accepts_reference_and_rewrites(checks):
    checks.passes(part4.test_W_dec_normalized, ToySAE)
    checks.passes(
        part4.test_W_dec_normalized,
        with_property("W_dec_normalized", lambda self: F.normalize(self.W_dec.double(), dim=-1)),
    )
    checks.passes(part4.test_W_dec_normalized, with_property("W_dec_normalized", normalise_clone_in_place))
    checks.passes(
        part4.test_W_dec_normalized,
        with_property(
            "W_dec_normalized",
            lambda self: self.W_dec / torch.linalg.vector_norm(self.W_dec, dim=-1, keepdim=True).clamp_min(1e-8),
        ),
    )
    checks.passes(
        part4.test_W_dec_normalized,
        with_property(
            "W_dec_normalized",
            lambda self: self.W_dec / (torch.einsum("isd,isd->is", self.W_dec, self.W_dec).sqrt()[..., None] + 1e-8),
        ),
    )


@pytest.mark.parametrize(("mutant", "message"), NORMALISED_MUTANTS)
def test_W_dec_normalized_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_W_dec_normalized, with_property("W_dec_normalized", mutant), message)


def test_W_dec_normalized_names_a_plain_method(checks):
    checks.fails(
        part4.test_W_dec_normalized,
        with_method("W_dec_normalized", lambda self: self.W_dec),
        r"plain method.*@property",
    )


# generate_batch ---------------------------------------------------------------------------


def generate_matmul(self, batch_size):
    features = self.model.generate_batch(batch_size)  # [batch, inst, feats]
    return (self.model.W[None] @ features[..., None]).squeeze(-1).double()


def generate_bmm(self, batch_size):
    features = self.model.generate_batch(batch_size).transpose(0, 1)  # [inst, batch, feats]
    return torch.bmm(features, self.model.W.transpose(1, 2)).transpose(0, 1)


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


def make_own_draws(*, reversed_presence=False, normal_magnitudes=False, shared_over_instances=False):
    def generate(self, batch_size):
        probability = self.model.feature_probability
        shape, device = (batch_size, *probability.shape), probability.device
        presence_draw = (
            torch.rand(batch_size, 1, probability.shape[1], device=device)
            if shared_over_instances
            else torch.rand(shape, device=device)
        )
        present = presence_draw > probability if reversed_presence else presence_draw < probability
        magnitudes = torch.randn(shape, device=device) if normal_magnitudes else torch.rand(shape, device=device)
        return torch.einsum("ihf,bif->bih", self.model.W, magnitudes * present)

    return generate


def generate_and_clamp_probability(self, batch_size):
    self.model.feature_probability = self.model.feature_probability.clamp(max=0.3)
    return ToySAE.generate_batch(self, batch_size)


def test_generate_batch_accepts_reference_and_rewrites(checks):
    for generate in (None, generate_matmul, generate_bmm, generate_own_draws):
        checks.passes(
            part4.test_generate_batch, ToySAE if generate is None else with_method("generate_batch", generate)
        )


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (generate_features_only, "returned something of shape \\[batch, inst, feats\\]"),
        (generate_instance_zero_features, "instance 0's features"),
        (lambda self, n: F.relu(ToySAE.generate_batch(self, n)), "no negative values"),
        (
            lambda self, n: torch.einsum("ihf,bjf->bih", self.model.W, self.model.generate_batch(n)),
            "sums the features of all instances",
        ),
        (
            lambda self, n: torch.einsum(
                "ifh,bif->bih", self.model.W.reshape(self.cfg.n_inst, -1, self.cfg.d_in), self.model.generate_batch(n)
            ),
            "W is reshaped",
        ),
        (generate_and_clamp_probability, r"changed `self\.model\.feature_probability` in place"),
        (make_own_draws(reversed_presence=True), "probability 1 - p"),
        (make_own_draws(normal_magnitudes=True), "negative values"),
        (make_own_draws(shared_over_instances=True), "correlated across instances"),
    ],
)
def test_generate_batch_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_generate_batch, with_method("generate_batch", mutant), message)


# forward ----------------------------------------------------------------------------------


def make_forward(
    *,
    centre=True,
    add_back=True,
    normalised=True,
    relu=True,
    l1="sum",
    rec="mean",
    inst="sum",
    batch="mean",
    coeff=True,
    in_place_centre=False,
    no_grad=False,
    detach=None,
    bias_after_relu=False,
    coeff_in_dict=False,
    target="h",
    squeeze=False,
    raw_decoder=False,
    activation=F.relu,
    decode_pre=False,
):
    def forward(self, h):
        cut = lambda tensor, place: tensor.detach() if detach == place else tensor  # noqa: E731
        with torch.no_grad() if no_grad else torch.enable_grad():
            W_dec = self.W_dec_normalized if normalised else self.W_dec
            if raw_decoder:
                W_dec = F.normalize(self._W_dec, dim=-1)
            if in_place_centre:
                centred = h
                centred -= self.b_dec
            else:
                centred = h - cut(self.b_dec, "b_dec") if centre else h
            pre = torch.einsum("bid,ids->bis", centred, self.W_enc) + (0 if bias_after_relu else self.b_enc)
            acts = activation(pre) if relu else pre
            if bias_after_relu:
                acts = acts + self.b_enc
            h_rec = torch.einsum("bis,isd->bid", cut(pre if decode_pre else acts, "acts"), cut(W_dec, "decoder")) + (
                self.b_dec if add_back else 0
            )
            compared = h - self.b_dec if target == "centred" else h
            squared = (h_rec - compared).pow(2)
            reconstruction = squared.mean(-1) if rec == "mean" else squared.sum(-1)
            if rec == "rmse":
                reconstruction = squared.mean(-1).sqrt()
            if rec == "mse_loss":
                reconstruction = F.mse_loss(h_rec, compared)
            sparsity = acts.abs().sum(-1) if l1 == "sum" else acts.abs().mean(-1)
            coefficient = self.cfg.sparsity_coeff if coeff else 1.0
            loss_dict = {
                "L_reconstruction": reconstruction,
                "L_sparsity": coefficient * sparsity if coeff_in_dict else sparsity,
            }
            per_input = reconstruction + (1.0 if coeff_in_dict else coefficient) * cut(sparsity, "sparsity")
            per_instance = per_input.mean(0) if batch == "mean" else per_input.sum(0)
            loss = per_instance.sum() if inst == "sum" else per_instance.mean()
        if squeeze:
            acts, h_rec = acts.squeeze(), h_rec.squeeze()
        return SAEOutput(loss_dict, loss, acts, h_rec)

    return forward


def forward_matmul_float64(self, h):
    h = h.double()
    # ReLU((h - b_dec) W_enc + b_enc), written with matmuls and clamp.
    acts = torch.clamp(
        ((h - self.b_dec.double()).unsqueeze(-2) @ self.W_enc.double()).squeeze(-2) + self.b_enc.double(), min=0
    )
    h_rec = (acts.unsqueeze(-2) @ self.W_dec_normalized.double()).squeeze(-2) + self.b_dec.double()
    reconstruction = ((h_rec - h) ** 2).sum(-1) / h.shape[-1]
    sparsity = acts.sum(-1)
    loss = ((reconstruction + self.cfg.sparsity_coeff * sparsity).sum(0) / h.shape[0]).sum()
    return SAEOutput({"L_reconstruction": reconstruction, "L_sparsity": sparsity}, loss, acts, h_rec)


def forward_in_place_on_own_copies(self, h):
    centred = h.clone()
    centred -= self.b_dec  # in place, but on its own copy
    pre = torch.einsum("bid,ids->bis", centred, self.W_enc)
    pre += self.b_enc
    acts = torch.where(pre > 0, pre, torch.zeros_like(pre))
    h_rec = torch.einsum("bis,isd->bid", acts, self.W_dec_normalized) + self.b_dec
    loss_dict = {"L_reconstruction": F.mse_loss(h_rec, h, reduction="none").mean(-1), "L_sparsity": acts.sum(-1)}
    loss = loss_dict["L_reconstruction"].mean(0).sum() + self.cfg.sparsity_coeff * loss_dict["L_sparsity"].mean(0).sum()
    return SAEOutput(loss_dict, loss, acts, h_rec)


def forward_normalising_decoder_in_place(self, h):
    if self._W_dec is not None:
        self._W_dec.data /= self._W_dec.data.norm(dim=-1, keepdim=True)
    return make_forward()(self, h)


@pytest.mark.parametrize("forward", [None, make_forward(), forward_matmul_float64, forward_in_place_on_own_copies])
def test_forward_accepts_reference_and_rewrites(checks, forward):
    checks.passes(part4.test_forward, ToySAE if forward is None else with_method("forward", forward))


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
        ({"in_place_centre": True}, r"`forward` changed `h` in place"),
        ({"no_grad": True}, "carries no gradient"),
        ({"detach": "decoder"}, "No gradient reaches the decoder"),
        ({"detach": "acts"}, "`acts` is detached where you decode it"),
        ({"detach": "b_dec"}, "b_dec is detached where you subtract it"),
        ({"detach": "sparsity"}, "sparsity term carries no gradient"),
        ({"bias_after_relu": True}, "b_enc is added after the ReLU"),
        ({"coeff_in_dict": True}, "L_sparsity includes sparsity_coeff"),
        ({"target": "centred"}, r"compares h_reconstructed with h - b_dec"),
        ({"rec": "rmse"}, "root of the mean squared error"),
        ({"squeeze": True}, r"^With one instance, a batch of one and d_in = d_sae = 5: `acts` returned shape"),
        ({"rec": "mse_loss"}, r'loss_dict\["L_reconstruction"\] is a single number'),
        ({"activation": lambda pre: F.leaky_relu(pre, 0.01)}, "not a leaky or smooth version"),
        ({"decode_pre": True}, "decodes the pre-activations"),
        ({"raw_decoder": True}, r"^For a tied SAE: `forward` reads `self._W_dec`, which a tied SAE sets to None"),
    ],
)
def test_forward_names_each_mistake(checks, options, message):
    checks.fails(part4.test_forward, with_method("forward", make_forward(**options)), message)


def test_forward_names_a_decoder_normalised_in_place(checks):
    checks.fails(
        part4.test_forward,
        with_method("forward", forward_normalising_decoder_in_place),
        r"changed `self._W_dec` in place",
    )


def pre_activations_uncentred(self, h):
    return torch.einsum("bid,ids->bis", h, self.W_enc) + self.b_enc


def pre_activations_detached(self, h):
    return torch.einsum("bid,ids->bis", h - self.b_dec, self.W_enc.detach()) + self.b_enc.detach()


def pre_activations_matmul(self, h):
    """Correct: one matmul per instance, written with unsqueeze."""
    return ((h - self.b_dec).unsqueeze(-2) @ self.W_enc).squeeze(-2) + self.b_enc


def decode_without_bias(self, acts):
    return torch.einsum("bis,isd->bid", acts, self.W_dec_normalized)


def decode_matmul(self, acts):
    """Correct: the decoder applied with a batched matmul."""
    return (acts.unsqueeze(-2) @ self.W_dec_normalized).squeeze(-2) + self.b_dec


def forward_through_encode_and_decode(self, h):
    """Correct, in the text's shape: encode, decode, then the losses."""
    acts = self.encode(h)
    h_rec = self.decode(acts)
    loss_dict = {"L_reconstruction": (h_rec - h).pow(2).mean(-1), "L_sparsity": acts.sum(-1)}
    loss = (loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]).mean(0).sum()
    return SAEOutput(loss_dict, loss, acts, h_rec)


def with_methods(**methods):
    return type("LearnerToySAE", (ToySAE,), methods)


def test_forward_accepts_its_methods_written_otherwise(checks):
    learner = with_methods(
        pre_activations=pre_activations_matmul, decode=decode_matmul, forward=forward_through_encode_and_decode
    )
    checks.passes(part4.test_forward, learner)


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ({"pre_activations": pre_activations_uncentred}, r"`pre_activations` ignores b_dec"),
        (
            {"pre_activations": pre_activations_detached},
            r"No gradient reaches `W_enc`, although the output of `pre_activations` is right",
        ),
        ({"decode": decode_without_bias}, r"forgets to add b_dec back"),
        ({"decode": lambda self, acts: decode_matmul(self, acts).detach()}, r"output of `decode` carries no gradient"),
        # A forward that calls encode is checked with the learner's own pre-activations and decoder.
        ({"forward": forward_through_encode_and_decode, "pre_activations": pre_activations_uncentred}, "ignores b_dec"),
        ({"forward": lambda self, h: tuple(ToySAE.forward(self, h))}, "plain tuple"),
    ],
)
def test_forward_names_mistakes_in_each_method(checks, methods, message):
    checks.fails(part4.test_forward, with_methods(**methods), message)


def test_forward_asks_for_the_class_when_given_a_function(checks):
    checks.fails(part4.test_forward, forward_through_encode_and_decode, r"Pass the class, `test_forward\(ToySAE\)`")


def test_forward_refuses_the_wrong_return_shape(checks):
    checks.fails(
        part4.test_forward, with_method("forward", lambda self, h: make_forward()(self, h)[:2]), "tuple of four"
    )


def test_forward_names_a_loss_from_item(checks):
    def forward(self, h):
        loss_dict, loss, acts, h_rec = make_forward()(self, h)
        return SAEOutput(loss_dict, loss.item(), acts, h_rec)

    checks.fails(part4.test_forward, with_method("forward", forward), r"Python float \(from .item\(\)\?\)")


# max_cosine_similarity --------------------------------------------------------------------


def cosine_loop_float64(W_dec, features):
    best = torch.empty(features.shape[:2], dtype=torch.float64)
    for inst in range(features.shape[0]):
        for feature in range(features.shape[1]):
            f = features[inst, feature].double()
            cosines = [torch.dot(f, row.double()) / (f.norm() * row.double().norm()) for row in W_dec[inst]]
            best[inst, feature] = max(cosines)
    return best


def cosine_broadcast(W_dec, features):
    return F.cosine_similarity(features[:, :, None, :], W_dec[:, None, :, :], dim=-1).amax(-1)


def cosine_in_place_on_copies(W_dec, features):
    W, f = W_dec.clone(), features.clone()
    W /= W.norm(dim=-1, keepdim=True)
    f /= f.norm(dim=-1, keepdim=True)
    return (f @ W.transpose(1, 2)).max(dim=-1).values


def cosine_normalising_inputs_in_place(W_dec, features):
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    features /= features.norm(dim=-1, keepdim=True)
    return torch.einsum("ifd,isd->ifs", features, W_dec).max(-1).values


def unit_cosines(W, f):
    return torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=-1))


@pytest.mark.parametrize(
    "function", [max_cosine_similarity, cosine_loop_float64, cosine_broadcast, cosine_in_place_on_copies]
)
def test_max_cosine_similarity_accepts_reference_and_rewrites(checks, function):
    checks.passes(part4.test_max_cosine_similarity, function)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (
            lambda W, f: torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), W).max(-1).values,
            "decoder rows are not normalised",
        ),
        (
            lambda W, f: torch.einsum("ifd,isd->ifs", f, F.normalize(W, dim=-1)).max(-1).values,
            "feature directions are not normalised",
        ),
        (lambda W, f: torch.einsum("ifd,isd->ifs", f, W).max(-1).values, "Neither side is normalised"),
        (lambda W, f: unit_cosines(W, f).abs().max(-1).values, "absolute cosine"),
        (lambda W, f: unit_cosines(W, f).max(-2).values, "maximum over features"),
        (lambda W, f: unit_cosines(W, f).pow(2).max(-1).values, "squared the cosine"),
        (lambda W, f: unit_cosines(W, f).mean(-1), "averaged over latents"),
        (lambda W, f: unit_cosines(W, f).max(-1), r"\(values, indices\) pair"),
        (lambda W, f: unit_cosines(W, f).argmax(-1), "returned integers"),
        (
            lambda W, f: torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), F.normalize(W, dim=1)).max(-1).values,
            r"normalised over latents \(dim 1\)",
        ),
        (cosine_normalising_inputs_in_place, r"changed `W_dec` in place"),
    ],
)
def test_max_cosine_similarity_names_each_mistake(checks, mutant, message):
    checks.fails(part4.test_max_cosine_similarity, mutant, message)


def test_max_cosine_similarity_names_the_wrong_axis_when_shapes_agree(checks):
    def wrong_axis_square_only(W, f):
        cosine = unit_cosines(W, f)
        return cosine.max(-2).values if W.shape[1] == f.shape[1] else cosine.max(-1).values

    checks.fails(
        part4.test_max_cosine_similarity,
        wrong_axis_square_only,
        r"^With as many latents as features: you took the maximum over features",
    )


# resample_simple --------------------------------------------------------------------------


def make_resample_simple(
    *,
    touch_live=False,
    keep_bias=False,
    normalise=True,
    scale_encoder=True,
    return_mask=True,
    same_direction=False,
    draw="randn",
    threshold=1e-8,
    float_mask=False,
    replace_parameter=False,
    copy_then_write=False,
    divide_scale=False,
    zero_b_dec=False,
    tied_unit=False,
):
    def resample(self, frac_active_in_window, resample_scale):
        dead = frac_active_in_window < threshold
        chosen = torch.ones_like(dead) if touch_live else dead
        d_in, device = self.cfg.d_in, dead.device
        per_latent = torch.randn(self.cfg.d_sae, d_in, device=device)
        per_instance = torch.randn(self.cfg.n_inst, d_in, device=device)
        new_W_enc = self.W_enc.detach().clone()
        for inst, latent in chosen.nonzero().tolist():
            direction = {
                "randn": lambda: torch.randn(d_in, device=device),
                "rand": lambda: torch.rand(d_in, device=device),
                "per latent": lambda: per_latent[latent],  # noqa: B023  (called at once, below)
                "per instance": lambda: per_instance[inst],  # noqa: B023
                "ones": lambda: torch.ones(d_in, device=device),
            }["ones" if same_direction else draw]()
            if normalise:
                direction = direction / direction.norm()
            scale = 1.0 / resample_scale if divide_scale else resample_scale if scale_encoder else 1.0
            if self._W_dec is None and tied_unit:
                scale = 1.0
            if replace_parameter:
                new_W_enc[inst, :, latent] = direction * scale
            elif copy_then_write:
                column = self.W_enc.data[[inst], :, [latent]]  # advanced indexing: a copy
                column[:] = direction * scale
            else:
                self.W_enc.data[inst, :, latent] = direction * scale
            if self._W_dec is not None and not copy_then_write:
                self._W_dec.data[inst, latent] = direction
            if not keep_bias:
                self.b_enc.data[inst, latent] = 0.0
        if replace_parameter:
            self.W_enc = nn.Parameter(new_W_enc)
        if zero_b_dec:
            self.b_dec.data.zero_()
        if not return_mask:
            return None
        return dead.float() if float_mask else dead

    return resample


def resample_simple_all_at_once(self, frac_active_in_window, resample_scale):
    """Correct, drawing differently: a float64 direction for every latent, kept only where dead."""
    dead = frac_active_in_window == 0
    directions = (
        F.normalize(torch.randn(*dead.shape, self.cfg.d_in, dtype=torch.float64), dim=-1).float().to(dead.device)
    )
    self.W_enc.data = torch.where(dead[:, None, :], directions.transpose(1, 2) * resample_scale, self.W_enc.data)
    if self._W_dec is not None:
        self._W_dec.data[dead] = directions[dead]
    self.b_enc.data.masked_fill_(dead, 0.0)
    return dead


@pytest.mark.parametrize(
    "resample",
    [None, make_resample_simple(), resample_simple_all_at_once, after_extra_draws(ToySAE.resample_simple, 7)],
)
def test_resample_simple_accepts_reference_and_rewrites(checks, resample):
    checks.passes(part4.test_resample_simple, ToySAE if resample is None else with_method("resample_simple", resample))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"touch_live": True}, "changed live latents"),
        ({"keep_bias": True}, "non-zero encoder bias"),
        ({"normalise": False}, "unit norm"),
        ({"scale_encoder": False}, "scale them down by resample_scale"),
        ({"return_mask": False}, "return the boolean mask"),
        ({"same_direction": True}, "same direction"),
        ({"draw": "rand"}, "one orthant"),
        ({"draw": "per latent"}, "latent j the same direction in every instance"),
        ({"draw": "per instance"}, "every resampled latent of an instance the same direction"),
        ({"threshold": 1e-5}, "fired, if rarely"),
        ({"float_mask": True}, "needs a bool tensor"),
        ({"replace_parameter": True}, r"replaced `self.W_enc` with a new object"),
        ({"copy_then_write": True}, "kept their old weights"),
        ({"divide_scale": True}, "divided by resample_scale"),
        ({"zero_b_dec": True}, r"changed `self.b_dec` in place"),
        (
            {"tied_unit": True},
            r"^For a tied SAE: each resampled W_enc column should be a unit direction times resample_scale; yours "
            "are unit",
        ),
    ],
)
def test_resample_simple_names_each_mistake(checks, options, message):
    checks.fails(part4.test_resample_simple, with_method("resample_simple", make_resample_simple(**options)), message)


def test_resample_simple_names_a_changed_input(checks):
    def resample(self, frac_active_in_window, resample_scale):
        dead = ToySAE.resample_simple(self, frac_active_in_window, resample_scale)
        frac_active_in_window[dead] = 1.0  # "mark them as revived"
        return dead

    checks.fails(
        part4.test_resample_simple,
        with_method("resample_simple", resample),
        r"changed `frac_active_in_window` in place",
    )


# resample_advanced ------------------------------------------------------------------------


def make_resample_advanced(
    *,
    weighting="squared",
    centre=True,
    normalise=True,
    norm_over="live",
    touch_live=False,
    keep_bias=False,
    replacement=True,
    draws="multinomial",
    no_live_norm=1.0,
    skip_zero=True,
    mark_skipped=False,
    batch_from="sae",
    direction_from="input",
):
    def resample(self, frac_active_in_window, resample_scale, batch_size=4_096):
        dead = frac_active_in_window < 1e-8
        chosen_latents = torch.ones_like(dead) if touch_live else dead
        if batch_from == "sae":
            h = self.generate_batch(batch_size)
        else:  # the model's features times W, written out
            h = torch.einsum("ihf,bif->bih", self.model.W, self.model.generate_batch(batch_size))
        loss_dict, _, _, h_rec = self.forward(h)
        loss, sparsity = loss_dict["L_reconstruction"], loss_dict["L_sparsity"]
        weights = {
            "squared": loss.pow(2),
            "linear": loss,
            "uniform": torch.ones_like(loss),
            "total squared": (loss + self.cfg.sparsity_coeff * sparsity).pow(2),
            "sparsity squared": sparsity.pow(2),
            "shared": loss.pow(2).sum(-1, keepdim=True).expand_as(loss),
            "over instances": loss.pow(2) / loss.pow(2).sum(-1, keepdim=True),
        }[weighting]
        resampled = torch.zeros_like(dead)
        first_draws = None
        for inst in range(self.cfg.n_inst):
            latents = chosen_latents[inst].nonzero().squeeze(-1)
            if len(latents) == 0 or (skip_zero and weights[:, inst].sum() == 0):
                continue
            w = weights[:, inst] + (0.0 if skip_zero else 1e-12)
            if draws == "multinomial":
                picks = torch.multinomial(w, len(latents), replacement=replacement)
            elif draws == "topk":
                picks = w.topk(len(latents)).indices
            elif draws == "one":
                picks = torch.multinomial(w, 1).expand(len(latents))
            elif draws == "same for all":
                first_draws = (
                    torch.multinomial(w, len(latents), replacement=True) if first_draws is None else first_draws
                )
                picks = first_draws
            source = {"input": h, "residual": h - h_rec}[direction_from][picks, inst]
            directions = source - (self.b_dec[inst] if centre and direction_from == "input" else 0)
            if normalise:
                directions = directions / directions.norm(dim=-1, keepdim=True)
            norms = self.W_enc[inst].norm(dim=0)
            live = ~dead[inst]
            live_norm = {
                "live": norms[live].mean() if live.any() else torch.tensor(no_live_norm),
                "all": norms.mean(),
                "none": torch.tensor(1.0),
                "global": self.W_enc.norm(dim=1)[~dead].mean(),
                "decoder": self.W_dec[inst][live].norm(dim=-1).mean() if live.any() else torch.tensor(1.0),
            }[norm_over]
            unit = directions / directions.norm(dim=-1, keepdim=True)
            self.W_enc.data[inst][:, latents] = (unit * live_norm * resample_scale).T
            if self._W_dec is not None:
                self._W_dec.data[inst][latents] = directions
            if not keep_bias:
                self.b_enc.data[inst][latents] = 0.0
            resampled[inst, latents] = True
        return dead if mark_skipped else resampled

    return resample


def resample_advanced_per_latent(self, frac_active_in_window, resample_scale, batch_size=4_096):
    """Correct, drawing differently: one torch.multinomial call per dead latent, latents in reverse order."""
    dead = frac_active_in_window == 0
    h = self.generate_batch(batch_size)
    weights = self.forward(h)[0]["L_reconstruction"].double().pow(2)
    resampled = torch.zeros_like(dead)
    for inst in reversed(range(self.cfg.n_inst)):
        if weights[:, inst].sum() == 0:
            continue
        live = ~dead[inst]
        live_norm = self.W_enc[inst][:, live].norm(dim=0).mean() if live.any() else 1.0
        for latent in reversed(dead[inst].nonzero().flatten().tolist()):
            row = int(torch.multinomial(weights[:, inst], 1))
            direction = F.normalize(h[row, inst] - self.b_dec[inst], dim=0)
            self.W_enc.data[inst, :, latent] = direction * live_norm * resample_scale
            if self._W_dec is not None:
                self._W_dec.data[inst, latent] = direction
            self.b_enc.data[inst, latent] = 0.0
            resampled[inst, latent] = True
    return resampled


def resample_advanced_searchsorted(self, frac_active_in_window, resample_scale, batch_size=4_096):
    """Correct, drawing differently: uniform numbers into the cumulative weights, every instance at once,
    the batch written out as the model's features times W."""
    dead = frac_active_in_window < 1e-8
    h = torch.einsum("ihf,bif->bih", self.model.W, self.model.generate_batch(batch_size))
    loss = self.forward(h)[0]["L_reconstruction"]
    cumulative = loss.pow(2).T.cumsum(-1)  # [inst, batch]
    total = cumulative[:, -1:]
    u = torch.rand(self.cfg.n_inst, self.cfg.d_sae, device=h.device) * total
    rows = torch.searchsorted(cumulative, u).clamp(max=h.shape[0] - 1)  # [inst, d_sae]: a draw for every latent
    chosen_inputs = torch.gather(
        h.transpose(0, 1), 1, rows[..., None].expand(-1, -1, self.cfg.d_in)
    )  # [inst, d_sae, d_in]
    directions = F.normalize(chosen_inputs - self.b_dec[:, None, :], dim=-1)
    live = ~dead
    live_count = live.sum(-1)
    live_norm = torch.where(live_count > 0, (self.W_enc.norm(dim=1) * live).sum(-1) / live_count.clamp(min=1), 1.0)
    resampled = dead & (total > 0)
    self.W_enc.data = torch.where(
        resampled[:, None, :], (directions * live_norm[:, None, None] * resample_scale).transpose(1, 2), self.W_enc.data
    )
    if self._W_dec is not None:
        self._W_dec.data = torch.where(resampled[..., None], directions, self._W_dec.data)
    self.b_enc.data = torch.where(resampled, 0.0, self.b_enc.data)
    return resampled


@pytest.mark.parametrize(
    "resample",
    [
        None,
        make_resample_advanced(),
        make_resample_advanced(batch_from="model"),
        resample_advanced_per_latent,
        resample_advanced_searchsorted,
    ],
)
def test_resample_advanced_accepts_reference_and_rewrites(checks, resample):
    checks.passes(
        part4.test_resample_advanced, ToySAE if resample is None else with_method("resample_advanced", resample)
    )


def test_resample_advanced_verdict_does_not_depend_on_earlier_draws():
    """The reference preceded by 0 to 39 extra random draws passes the statistical case, built and run exactly as
    the check does (the other cases have no statistics: their verdict never depends on the draws)."""
    for extra in range(40):
        with forked_rng(0):
            part4._check_advanced_case(after_extra_draws(ToySAE.resample_advanced, extra), part4._main_advanced_case())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weighting": "uniform"}, "drawn uniformly"),
        ({"weighting": "linear"}, "reconstruction loss itself; square it"),
        ({"weighting": "total squared"}, "squared total loss"),
        ({"weighting": "sparsity squared"}, "drawn by the sparsity term"),
        ({"weighting": "shared"}, "shared across instances"),
        ({"weighting": "over instances"}, "normalised over instances"),
        ({"replacement": False}, "No input was drawn twice"),
        ({"draws": "topk"}, "largest losses were taken"),
        ({"draws": "one"}, "same input: draw one input per dead latent"),
        ({"draws": "same for all"}, "Every instance got the same draws"),
        ({"centre": False}, "not centred"),
        ({"normalise": False}, "not normalised"),
        ({"direction_from": "residual"}, "residual h - h_reconstructed"),
        ({"norm_over": "all"}, "only the live latents"),
        ({"norm_over": "none"}, "not scaled by the mean live encoder norm"),
        ({"norm_over": "global"}, "averages the live encoder norms of all instances"),
        ({"norm_over": "decoder"}, "uses the live latents' decoder norms"),
        (
            {"no_live_norm": float("nan")},
            r"^With an instance whose latents are all dead: the encoder columns .* are NaN",
        ),
        (
            {"skip_zero": False},
            r"^With an instance whose reconstruction losses are all zero: `resample_advanced` resampled",
        ),
        ({"mark_skipped": True}, "marks the dead latents of the instance it skipped"),
        ({"touch_live": True}, "changed live latents"),
        ({"keep_bias": True}, "non-zero encoder bias"),
    ],
)
def test_resample_advanced_names_each_mistake(checks, options, message):
    checks.fails(
        part4.test_resample_advanced, with_method("resample_advanced", make_resample_advanced(**options)), message
    )


def test_resample_advanced_names_a_crash_on_all_zero_losses(checks):
    def resample(self, frac_active_in_window, resample_scale, batch_size=4_096):
        h = self.generate_batch(batch_size)
        torch.multinomial(self.forward(h)[0]["L_reconstruction"].pow(2).T, 2, replacement=True)  # all instances at once
        return ToySAE.resample_advanced(self, frac_active_in_window, resample_scale, batch_size)

    checks.fails(
        part4.test_resample_advanced,
        with_method("resample_advanced", resample),
        "skip an instance whose losses are all zero",
    )


def test_resample_advanced_names_a_tied_crash(checks):
    def resample(self, frac_active_in_window, resample_scale, batch_size=4_096):
        self._W_dec.data  # noqa: B018  (reads the decoder parameter, which a tied SAE does not have)
        return ToySAE.resample_advanced(self, frac_active_in_window, resample_scale, batch_size)

    checks.fails(
        part4.test_resample_advanced,
        with_method("resample_advanced", resample),
        r"^For a tied SAE: `resample_advanced` reads `self._W_dec`",
    )


def _main_case_weightings() -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]], int]:
    """The main advanced-resampling case: the right group probabilities, the wrong ones, and the draws per instance."""
    with forked_rng(0):
        case = part4._main_advanced_case()
    case.recorder.sizes.append(part4.ADVANCED_BATCH)
    parameters = {name: part4._float64(value) for name, value in part4._sae_parameters(case.sae).items()}
    batch = part4.DrawnBatch.of(case, parameters)
    L, S = batch.reconstruction, batch.sparsity
    right = part4._group_probabilities(L.pow(2), batch.groups)
    wrong = [
        (message, part4._group_probabilities(w, batch.groups))
        for message, w in part4._wrong_weightings(L, S, case.sae.cfg.sparsity_coeff)
    ]
    # The dead latents never fire on the designed inputs, so leaving them out of the terms changes nothing.
    full = part4._sae_terms(
        parameters,
        case.recorder.rows(part4.ADVANCED_BATCH),
        coeff=case.sae.cfg.sparsity_coeff,
        eps=case.sae.cfg.weight_normalize_eps,
    )
    assert not full.acts[..., case.dead.any(0)].any()
    torch.testing.assert_close(full.reconstruction.T, L)
    return right, wrong, int(case.dead[0].sum())


def test_resample_advanced_design_separates_every_wrong_weighting_by_far():
    """Each wrong weighting misses some cell by more than twice the sum of both tolerances, and wrong weightings
    with different messages are told apart, so a wrong sampler is failed and named with near certainty."""
    right, wrong, draws = _main_case_weightings()
    tolerance = lambda p: binomial_tolerance(p, draws, false_alarm=part4.FALSE_ALARM / p.numel())  # noqa: E731
    margin = lambda p, q: float(((p - q).abs() / (tolerance(p) + tolerance(q))).max())  # noqa: E731
    assert min(margin(right, p) for _, p in wrong) > 3
    for (message_a, a), (message_b, b) in itertools.combinations(wrong, 2):
        assert message_a == message_b or margin(a, b) > 1.5, (message_a, message_b)
    assert (right[:, 0] * draws > 100).all()  # the spike row is drawn many times when drawing with replacement


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


@pytest.mark.parametrize(("check", "name"), [*METHOD_CHECKS, (part4.test_W_dec_normalized, "W_dec_normalized")])
def test_a_method_never_attached_is_named(checks, check, name):
    class LearnerToySAE(nn.Module):
        pass

    checks.fails(check, LearnerToySAE, "never attached")


@pytest.mark.parametrize(
    ("check", "learner"),
    [(check, ToySAE) for check, _ in METHOD_CHECKS]
    + [(part4.test_W_dec_normalized, ToySAE), (part4.test_max_cosine_similarity, max_cosine_similarity)],
)
def test_checks_leave_every_random_state_and_the_thread_count_untouched(checks, check, learner):
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    threads = torch.get_num_threads()
    checks.passes(check, learner)
    assert (
        states[0] == random.getstate()
        and (states[1] == np.random.get_state()[1]).all()
        and torch.equal(states[2], torch.get_rng_state())
    )
    assert torch.get_num_threads() == threads


# Issue 24: code called twice, shapes with length-1 axes, boundaries and promises the text makes -------------


def init_reseeding(self, cfg, model):
    torch.manual_seed(0)  # "for reproducibility": every SAE then starts from the same weights
    ToySAE.__init__(self, cfg, model)


def init_reseeding_between(self, cfg, model):
    nn.Module.__init__(self)
    self.cfg, self.model = cfg, model.requires_grad_(False)
    device = model.W.device
    torch.manual_seed(1)
    self.W_enc = nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.n_inst, cfg.d_in, cfg.d_sae, device=device)))
    torch.manual_seed(1)  # the same seed again: the decoder gets W_enc's numbers, rearranged
    self._W_dec = (
        None
        if cfg.tied_weights
        else nn.Parameter(nn.init.kaiming_uniform_(torch.empty(cfg.n_inst, cfg.d_sae, cfg.d_in, device=device)))
    )
    self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae, device=device))
    self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in, device=device))


def init_in_place_on_parameters(self, cfg, model):
    """Correct: empty parameters first, then Kaiming-uniform applied to each in place."""
    nn.Module.__init__(self)
    self.cfg = cfg
    self.model = model
    model.requires_grad_(False)
    device = model.W.device
    self.W_enc = nn.Parameter(torch.empty(cfg.n_inst, cfg.d_in, cfg.d_sae, device=device))
    nn.init.kaiming_uniform_(self.W_enc)
    if cfg.tied_weights:
        self._W_dec = None
    else:
        self._W_dec = nn.Parameter(torch.empty(cfg.n_inst, cfg.d_sae, cfg.d_in, device=device))
        nn.init.kaiming_uniform_(self._W_dec)
    self.b_enc = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_sae, device=device))
    self.b_dec = nn.Parameter(torch.zeros(cfg.n_inst, cfg.d_in, device=device))


def test_init_accepts_parameters_initialised_in_place(checks):
    checks.passes(part4.test_init, with_method("__init__", init_in_place_on_parameters))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (init_reseeding, r"Two SAEs built one after the other start from the same `self.W_enc`.*seed"),
        (init_reseeding_between, r"`self._W_dec` holds the numbers of `self.W_enc`, rearranged"),
    ],
)
def test_init_names_state_mistakes(checks, mutant, message):
    checks.fails(part4.test_init, with_method("__init__", mutant), message)


def normalise_cached(self):
    if getattr(self, "_cached_W_dec_normalized", None) is None:
        self._cached_W_dec_normalized = ToySAE.W_dec_normalized.fget(self)
    return self._cached_W_dec_normalized


def normalise_cached_by_pointer(self):
    key = self.W_dec.data_ptr()  # an optimiser step changes W_dec in place: the pointer stays the same
    if self.__dict__.get("_normalised_key") != key:
        self._normalised_key = key
        self._normalised = self.W_dec / (self.W_dec.norm(dim=-1, keepdim=True) + self.cfg.weight_normalize_eps)
    return self._normalised


def normalise_keeping_last(self):
    """Correct: computed afresh on every call, the last result kept as an attribute."""
    W = self.W_dec
    self.last_W_dec_normalized = W / (torch.sqrt((W**2).sum(-1, keepdim=True)) + self.cfg.weight_normalize_eps)
    return self.last_W_dec_normalized


def test_W_dec_normalized_accepts_a_result_kept_but_computed_afresh(checks):
    checks.passes(part4.test_W_dec_normalized, with_property("W_dec_normalized", normalise_keeping_last))


@pytest.mark.parametrize("mutant", [normalise_cached, normalise_cached_by_pointer])
def test_W_dec_normalized_names_a_cached_result(checks, mutant):
    checks.fails(
        part4.test_W_dec_normalized,
        with_property("W_dec_normalized", mutant),
        r"returned its earlier result after W_dec changed",
    )


def generate_reseeding(self, batch_size):
    torch.manual_seed(0)
    return ToySAE.generate_batch(self, batch_size)


def generate_cached(self, batch_size):
    if getattr(self, "_batch", None) is None or len(self._batch) != batch_size:
        self._batch = ToySAE.generate_batch(self, batch_size)
    return self._batch


def generate_squeezed(self, batch_size):
    features = self.model.generate_batch(batch_size)
    return (self.model.W @ features.unsqueeze(-1)).squeeze()


def generate_matmul_squeezing_its_axis(self, batch_size):
    """Correct: a row vector per example times Wᵀ, squeezing only the axis it added."""
    features = self.model.generate_batch(batch_size)
    return (features.unsqueeze(-2) @ self.model.W.transpose(-1, -2)).squeeze(-2)


def test_generate_batch_accepts_a_matmul_squeezing_only_its_axis(checks):
    checks.passes(part4.test_generate_batch, with_method("generate_batch", generate_matmul_squeezing_its_axis))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (generate_reseeding, r"returned the same batch on two calls: don't set a seed"),
        (generate_cached, r"returned the batch of an earlier call again"),
        (generate_squeezed, r"^With one instance, d_in = 1 and a batch of one: .*axes of length 1 were squeezed away"),
    ],
)
def test_generate_batch_names_calls_and_length_one_axes(checks, mutant, message):
    checks.fails(part4.test_generate_batch, with_method("generate_batch", mutant), message)


def pre_activations_squeezed(self, h):
    return ((h - self.b_dec).unsqueeze(-2) @ self.W_enc).squeeze() + self.b_enc


def decode_squeezed(self, acts):
    return (acts.unsqueeze(-2) @ self.W_dec_normalized).squeeze() + self.b_dec


def forward_sum_over_batch_mean_over_instances(self, h):
    loss_dict, _, acts, h_rec = ToySAE.forward(self, h)
    per_input = loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]
    return SAEOutput(loss_dict, per_input.sum(0).mean(), acts, h_rec)


def forward_losses_over_batch(self, h):
    _, loss, acts, h_rec = ToySAE.forward(self, h)
    loss_dict = {"L_reconstruction": (h_rec - h).pow(2).mean(0), "L_sparsity": acts.sum(0)}
    return SAEOutput(loss_dict, loss, acts, h_rec)


def forward_with_library_losses(self, h):
    """Correct: F.mse_loss without reduction, and the L1 norm as torch.linalg.vector_norm."""
    acts = self.encode(h)
    h_rec = self.decode(acts)
    loss_dict = {
        "L_reconstruction": F.mse_loss(h_rec, h, reduction="none").mean(dim=-1),
        "L_sparsity": torch.linalg.vector_norm(acts, ord=1, dim=-1),
    }
    total = loss_dict["L_reconstruction"] + self.cfg.sparsity_coeff * loss_dict["L_sparsity"]
    return SAEOutput(loss_dict=loss_dict, loss=total.mean(0).sum(), acts=acts, h_reconstructed=h_rec)


def pre_activations_ellipsis(self, h):
    """Correct: an einsum with an ellipsis for the batch."""
    return torch.einsum("...id,ids->...is", h - self.b_dec, self.W_enc) + self.b_enc


def test_forward_accepts_library_losses_and_an_ellipsis(checks):
    learner = with_methods(pre_activations=pre_activations_ellipsis, forward=forward_with_library_losses)
    checks.passes(part4.test_forward, learner)


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (
            {"pre_activations": pre_activations_squeezed},
            r"^With one instance, a batch of one and d_in = d_sae = 5: `pre_activations` returned shape \(1, 5\): its "
            "axes of length 1 were squeezed away",
        ),
        ({"decode": decode_squeezed}, r"`decode` returned shape \(1, 5\): its axes of length 1 were squeezed away"),
        (
            {"forward": forward_sum_over_batch_mean_over_instances},
            "summed over the batch and averaged over instances",
        ),
        ({"forward": forward_losses_over_batch}, r'loss_dict\["L_reconstruction"\] is reduced over the batch'),
    ],
)
def test_forward_names_length_one_axes_and_reductions(checks, methods, message):
    checks.fails(part4.test_forward, with_methods(**methods), message)


def cosine_kept_then_squeezed(W, f):
    return unit_cosines(W, f).max(dim=-1, keepdim=True).values.squeeze()


def cosine_from_zero(W, f):
    best = torch.zeros(f.shape[:2], dtype=f.dtype, device=f.device)  # "no match yet": but a best cosine can be negative
    return torch.maximum(best, unit_cosines(W, f).max(-1).values)


def cosine_by_distance(W, f):
    """Correct: for unit vectors, cos = 1 - |a - b|² / 2."""
    return (1 - torch.cdist(F.normalize(f, dim=-1), F.normalize(W, dim=-1)).pow(2) / 2).amax(-1)


def test_max_cosine_similarity_accepts_distances(checks):
    checks.passes(part4.test_max_cosine_similarity, cosine_by_distance)


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (cosine_kept_then_squeezed, r"^With one instance and one feature: .*axes of length 1 were squeezed away"),
        (cosine_from_zero, r"negative cosines became 0"),
        (
            lambda W, f: torch.einsum("ifd,isd->ifs", F.normalize(f, dim=-1), W / W.norm()).max(-1).values,
            r"norm of the whole tensor",
        ),
    ],
)
def test_max_cosine_similarity_names_more_mistakes(checks, mutant, message):
    checks.fails(part4.test_max_cosine_similarity, mutant, message)


def resample_simple_reseeding(self, frac_active_in_window, resample_scale):
    torch.manual_seed(0)
    return ToySAE.resample_simple(self, frac_active_in_window, resample_scale)


def resample_simple_cube(self, frac_active_in_window, resample_scale):
    dead = frac_active_in_window == 0
    directions = F.normalize(torch.rand(int(dead.sum()), self.cfg.d_in, device=dead.device) * 2 - 1, dim=-1)
    inst, latent = dead.nonzero(as_tuple=True)
    self.W_enc.data[inst, :, latent] = directions * resample_scale
    if self._W_dec is not None:
        self._W_dec.data[inst, latent] = directions
    self.b_enc.data[dead] = 0.0
    return dead


def resample_simple_through_a_view(self, frac_active_in_window, resample_scale):
    """Correct: writes the encoder columns through a transposed view, [inst, d_sae, d_in]."""
    dead = frac_active_in_window == 0
    directions = F.normalize(torch.randn(int(dead.sum()), self.cfg.d_in, device=dead.device), dim=-1)
    self.W_enc.data.transpose(1, 2)[dead] = directions * resample_scale
    if self._W_dec is not None:
        self._W_dec.data[dead] = directions
    self.b_enc.data[dead] = 0.0
    return dead


def test_resample_simple_accepts_writes_through_a_view(checks):
    checks.passes(part4.test_resample_simple, with_method("resample_simple", resample_simple_through_a_view))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (resample_simple_reseeding, r"gave the same new directions on two calls: don't set a seed"),
        (resample_simple_cube, r"crowd towards the diagonals"),
        (make_resample_simple(threshold=1e-6), r"fired, if rarely \(frac_active_in_window 5e-08\)"),
    ],
)
def test_resample_simple_names_calls_boundaries_and_spread(checks, mutant, message):
    checks.fails(part4.test_resample_simple, with_method("resample_simple", mutant), message)


def resample_advanced_reseeding(self, frac_active_in_window, resample_scale, batch_size=4_096):
    torch.manual_seed(0)
    return ToySAE.resample_advanced(self, frac_active_in_window, resample_scale, batch_size)


def resample_advanced_default_batch(self, frac_active_in_window, resample_scale, batch_size=4_096):
    return ToySAE.resample_advanced(self, frac_active_in_window, resample_scale)  # batch_size forgotten: 4,096


def resample_advanced_tiny_as_dead(self, frac_active_in_window, resample_scale, batch_size=4_096):
    frac = torch.where(frac_active_in_window < 1e-6, 0.0, frac_active_in_window)  # "below 1e-6 counts as dead"
    return ToySAE.resample_advanced(self, frac, resample_scale, batch_size)


def resample_advanced_categorical(self, frac_active_in_window, resample_scale, batch_size=4_096):
    """Correct: torch.distributions.Categorical draws the inputs, every dead latent's weights written at once."""
    dead = frac_active_in_window == 0
    h = self.generate_batch(batch_size)
    squared = self(h).loss_dict["L_reconstruction"].pow(2)
    resampled = torch.zeros_like(dead)
    for inst in range(self.cfg.n_inst):
        latents = torch.where(dead[inst])[0]
        if len(latents) == 0 or not squared[:, inst].any():
            continue
        rows = torch.distributions.Categorical(probs=squared[:, inst]).sample((len(latents),))
        directions = F.normalize(h[rows, inst] - self.b_dec[inst], dim=-1)
        live = ~dead[inst]
        scale = self.W_enc[inst][:, live].norm(dim=0).mean() if live.any() else 1.0
        self.W_enc.data[inst, :, latents] = (directions * scale * resample_scale).T
        if self._W_dec is not None:
            self._W_dec.data[inst, latents] = directions
        self.b_enc.data[inst, latents] = 0.0
        resampled[inst, latents] = True
    return resampled


def test_resample_advanced_accepts_categorical_draws(checks):
    checks.passes(part4.test_resample_advanced, with_method("resample_advanced", resample_advanced_categorical))


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        (resample_advanced_reseeding, r"chose the same inputs on two calls: don't set a seed"),
        (resample_advanced_default_batch, r"drew a batch of 4096 inputs.*batch_size"),
        (resample_advanced_tiny_as_dead, r"fired, if rarely \(frac_active_in_window 5e-08\)"),
    ],
)
def test_resample_advanced_names_calls_boundaries_and_batch_size(checks, mutant, message):
    checks.fails(part4.test_resample_advanced, with_method("resample_advanced", mutant), message)
