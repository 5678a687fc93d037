"""Reference implementation for 08_feature_absorption, generated from source/08_feature_absorption.py.

Do not edit: change the source and run `python workbook.py build`."""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from part_utils.methods import add_to_class
from part_utils.reference.part5_sae_variants import BatchTopKToySAE, TopKToySAEConfig
from part_utils.sae_interface import SAEOutput


@dataclass
class HierarchyConfig:
    n_inst: int
    n_parents: int = 5
    n_children: int = 3
    """Children per parent."""
    d_hidden: int | None = None
    """None: as many dimensions as features, with orthonormal directions; fewer: superposed."""
    parent_probability: float = 0.15
    child_probability: float = 0.8
    """P(exactly one child is active | its parent is active); which child is uniform."""
    min_magnitude: float = 0.8
    max_magnitude: float = 1.2
    direction_seed: int = 0

    def __post_init__(self) -> None:
        if self.d_hidden is None:
            self.d_hidden = self.n_features

    @property
    def n_features(self) -> int:
        return self.n_parents * (1 + self.n_children)


def feature_embedding(cfg: HierarchyConfig) -> Float[Tensor, "d_hidden feats"]:
    """One unit direction per feature: orthonormal (a random rotation) when there is room, else random."""
    generator = torch.Generator().manual_seed(cfg.direction_seed)
    if cfg.d_hidden >= cfg.n_features:
        rotation, _ = torch.linalg.qr(torch.randn(cfg.d_hidden, cfg.d_hidden, generator=generator))
        return rotation[:, : cfg.n_features]
    return F.normalize(torch.randn(cfg.d_hidden, cfg.n_features, generator=generator), dim=0)


class HierarchicalToyData(nn.Module):
    """Hierarchical features in d_hidden dimensions, for SAEs to read as they read Part 1's toy model.

    `W` holds the true feature directions, the same in every instance; `ToySAE.generate_batch`
    returns h = W x, with x from `generate_batch`.
    """

    W: Float[Tensor, "inst d_hidden feats"]

    def __init__(self, cfg: HierarchyConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("W", feature_embedding(cfg).expand(cfg.n_inst, -1, -1).contiguous().to(device))

    @property
    def feature_directions(self) -> Float[Tensor, "inst feats d_hidden"]:
        return self.W.transpose(1, 2)

    def generate_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
        return self.generate_hierarchical_batch(batch_size)


def family_presence(
    features: Float[Tensor, "batch inst feats"], n_parents: int
) -> tuple[Bool[Tensor, "batch inst parents"], Bool[Tensor, "batch inst parents children"]]:
    """Which parents are active, and which of each parent's children."""
    active = features != 0
    n_children = features.shape[-1] // n_parents - 1
    return active[..., :n_parents], active[..., n_parents:].unflatten(-1, (n_parents, n_children))


@add_to_class(HierarchicalToyData)
def generate_hierarchical_batch(self, batch_size: int) -> Float[Tensor, "batch inst feats"]:
    cfg, device = self.cfg, self.W.device
    families = (batch_size, cfg.n_inst, cfg.n_parents)
    parent_on = torch.rand(families, device=device) < cfg.parent_probability
    has_child = parent_on & (torch.rand(families, device=device) < cfg.child_probability)
    which_child = torch.randint(cfg.n_children, families, device=device)
    child_on = F.one_hot(which_child, cfg.n_children).bool() & has_child[..., None]
    active = torch.cat([parent_on, child_on.flatten(-2)], dim=-1)
    magnitudes = cfg.min_magnitude + (cfg.max_magnitude - cfg.min_magnitude) * torch.rand(active.shape, device=device)
    return torch.where(active, magnitudes, 0.0)


def decoder_cosines(sae: nn.Module) -> Float[Tensor, "inst d_sae feats"]:
    """The cosine of every decoder row with every true feature direction."""
    directions = F.normalize(sae.model.feature_directions, dim=-1)
    return einsum(sae.W_dec_normalized.detach(), directions, "inst d_sae d_in, inst feats d_in -> inst d_sae feats")


@torch.no_grad()
def inference_acts(sae: nn.Module, features: Float[Tensor, "batch inst feats"]) -> Float[Tensor, "batch inst d_sae"]:
    """The SAE's latents for the inputs made of `features`, in inference mode (BatchTopK uses its threshold)."""
    h = einsum(sae.model.W, features, "inst d_in feats, batch inst feats -> batch inst d_in")
    was_training = sae.training
    sae.eval()
    acts = sae.encode(h)
    sae.train(was_training)
    return acts


def evaluation_features(sae: nn.Module, n_samples: int, seed: int = 1001) -> Float[Tensor, "batch inst feats"]:
    """A fixed sample of features, the same for every SAE with as many instances."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    features = sae.model.generate_batch(n_samples)
    torch.random.set_rng_state(generator_state)
    return features


CARRIES_PARENT_AT = 0.5  # τ: the decoder cosine with a parent above which a latent carries it


def parent_latents(
    acts: Float[Tensor, "batch inst d_sae"],
    features: Float[Tensor, "batch inst feats"],
    parent_cosine: Float[Tensor, "inst d_sae parents"],
    threshold: float = CARRIES_PARENT_AT,
) -> Int[Tensor, "inst parents"]:
    parent_on, child_on = family_presence(features, parent_cosine.shape[-1])
    alone = parent_on & ~child_on.any(dim=-1)
    fires = (acts > 0).float()
    fires_alone = einsum(alone.float(), fires, "batch inst parents, batch inst d_sae -> inst d_sae parents")
    fires_with_parent = einsum(parent_on.float(), fires, "batch inst parents, batch inst d_sae -> inst d_sae parents")
    alone_score = torch.where(parent_cosine >= threshold, fires_alone, -1.0)
    best_alone = alone_score == alone_score.amax(dim=1, keepdim=True)
    return torch.where(best_alone, fires_with_parent, -1.0).argmax(dim=1)


def absorption_rate(
    acts: Float[Tensor, "batch inst d_sae"],
    features: Float[Tensor, "batch inst feats"],
    parent_cosine: Float[Tensor, "inst d_sae parents"],
    parent_latent: Int[Tensor, "inst parents"],
    threshold: float = CARRIES_PARENT_AT,
) -> Float[Tensor, "inst parents"]:
    parent_on, child_on = family_presence(features, parent_cosine.shape[-1])
    eligible = parent_on & child_on.any(dim=-1)
    fires = acts > 0
    parent_fires = fires.gather(-1, parent_latent.expand(acts.shape[0], -1, -1))
    latent = torch.arange(acts.shape[-1], device=acts.device)
    carriers = (parent_cosine >= threshold) & (latent[None, :, None] != parent_latent[:, None, :])
    carrier_fires = (
        einsum(fires.float(), carriers.float(), "batch inst d_sae, inst d_sae parents -> batch inst parents") > 0
    )
    absorbed = eligible & ~parent_fires & carrier_fires
    return absorbed.sum(dim=0) / eligible.sum(dim=0).clamp_min(1)


def rate_where(
    event: Bool[Tensor, "batch inst parents"], condition: Bool[Tensor, "batch inst parents"]
) -> Float[Tensor, "inst parents"]:
    return (event & condition).sum(dim=0) / condition.sum(dim=0).clamp_min(1)


def only_child(
    features: Float[Tensor, "batch inst feats"], n_parents: int, child: int
) -> Float[Tensor, "batch inst feats"]:
    """The features with every child but number `child` of each parent set to 0."""
    n_children = features.shape[-1] // n_parents - 1
    keep = torch.ones(n_parents, n_children, dtype=torch.bool, device=features.device)
    keep[:, [c for c in range(n_children) if c != child]] = False
    return features * torch.cat([torch.ones(n_parents, dtype=torch.bool, device=features.device), keep.flatten()])


def carrier_fires(
    acts: Float[Tensor, "batch inst d_sae"],
    parent_cosine: Float[Tensor, "inst d_sae parents"],
    parent_latent: Int[Tensor, "inst parents"],
    threshold: float,
) -> Bool[Tensor, "batch inst parents"]:
    """Whether a latent that carries the parent (cosine ≥ threshold), other than ℓ_p, fires."""
    latent = torch.arange(acts.shape[-1], device=acts.device)
    carriers = (parent_cosine >= threshold) & (latent[None, :, None] != parent_latent[:, None, :])
    return (
        einsum((acts > 0).float(), carriers.float(), "batch inst d_sae, inst d_sae parents -> batch inst parents") > 0
    )


def absorption_fraction(
    acts: Float[Tensor, "batch inst d_sae"],
    parent_on: Bool[Tensor, "batch inst parents"],
    parent_cosine: Float[Tensor, "inst d_sae parents"],
    parent_latent: Int[Tensor, "inst parents"],
) -> Float[Tensor, "inst parents"]:
    """SAEBench's partial-absorption measure with the true direction as the probe: on inputs with the parent
    active, the share of the reconstruction's component along the parent that ℓ_p does not write (0 to 1)."""
    along_parent = einsum(acts, parent_cosine, "batch inst d_sae, inst d_sae parents -> batch inst parents")
    index = parent_latent.expand(acts.shape[0], -1, -1)
    by_main = acts.gather(-1, index) * parent_cosine.gather(1, parent_latent[:, None, :]).squeeze(1)
    counted = parent_on & (along_parent > 0)
    fraction = (1 - by_main / along_parent.clamp_min(1e-12)).clamp(0, 1)
    return (fraction * counted).sum(dim=0) / counted.sum(dim=0).clamp_min(1)


@torch.no_grad()
def absorption_report(
    sae: nn.Module, features: Float[Tensor, "batch inst feats"], threshold: float = CARRIES_PARENT_AT
) -> dict[str, Tensor]:
    """Absorption per instance and parent on the inputs made of `features`, with what explains it."""
    n_parents, n_children = sae.model.cfg.n_parents, sae.model.cfg.n_children
    acts = inference_acts(sae, features)
    cosine = decoder_cosines(sae)
    parent_cosine = cosine[..., :n_parents]
    parent_latent = parent_latents(acts, features, parent_cosine, threshold)
    parent_on, child_on = family_presence(features, n_parents)
    parent_fires = (acts > 0).gather(-1, parent_latent.expand(acts.shape[0], -1, -1))
    per_child = [
        absorption_rate(acts, only_child(features, n_parents, c), parent_cosine, parent_latent, threshold)
        for c in range(n_children)
    ]
    absorbed = ~parent_fires & carrier_fires(acts, parent_cosine, parent_latent, threshold)
    return {
        "absorption": absorption_rate(acts, features, parent_cosine, parent_latent, threshold).cpu(),
        "absorption_all_inputs": rate_where(absorbed, parent_on).cpu(),
        "absorption_fraction": absorption_fraction(acts, parent_on, parent_cosine, parent_latent).cpu(),
        "absorption_per_child": torch.stack(per_child, dim=-1).cpu(),  # [inst, parents, children]
        "fires_alone": rate_where(parent_fires, parent_on & ~child_on.any(dim=-1)).cpu(),
        "fires_with_child": rate_where(parent_fires, parent_on & child_on.any(dim=-1)).cpu(),
        "parent_latent": parent_latent.cpu(),
        "cosine": cosine.cpu(),
        "live": (acts > 0).any(dim=0).cpu(),
    }


@dataclass
class MatryoshkaToySAEConfig(TopKToySAEConfig):
    prefix_sizes: list[int] = field(default_factory=list)
    """Where each nested prefix ends: strictly increasing, the last equal to d_sae (empty: [d_sae], plain BatchTopK)."""

    def __post_init__(self) -> None:
        if not self.prefix_sizes:
            self.prefix_sizes = [self.d_sae]
        sizes = list(self.prefix_sizes)
        if sizes != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != self.d_sae:
            raise ValueError(
                f"prefix_sizes must increase strictly from at least 1 up to d_sae = {self.d_sae}, got {sizes}"
            )


class MatryoshkaToySAE(BatchTopKToySAE):
    """A BatchTopK SAE whose nested prefixes of latents must each reconstruct the input alone."""

    cfg: MatryoshkaToySAEConfig


def doubling_prefixes(first: int, d_sae: int) -> list[int]:
    """first, 2·first, 4·first, ... and finally d_sae."""
    sizes = [min(first, d_sae)]
    while sizes[-1] * 2 < d_sae:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == d_sae else [*sizes, d_sae]


@add_to_class(MatryoshkaToySAE)
def forward(self, h: Float[Tensor, "batch inst d_in"]) -> SAEOutput:
    pre_acts = self.pre_activations(h)
    acts = self.activation(pre_acts)
    W_dec = self.W_dec_normalized
    h_reconstructed = self.b_dec.expand_as(h)
    prefix_losses, start = [], 0
    for end in self.cfg.prefix_sizes:
        group = einsum(
            acts[..., start:end], W_dec[:, start:end], "batch inst group, inst group d_in -> batch inst d_in"
        )
        h_reconstructed = h_reconstructed + group
        prefix_losses.append((h_reconstructed - h).pow(2).mean(dim=-1))
        start = end
    dead = self.steps_since_fired >= self.cfg.dead_after_steps
    loss_dict = {
        "L_reconstruction": prefix_losses[-1],
        "L_matryoshka": torch.stack(prefix_losses).sum(dim=0),
        "L_aux": self.auxk_loss(pre_acts, h, h_reconstructed, dead),
    }
    self.record_firing(acts)
    loss = (loss_dict["L_matryoshka"] + self.cfg.aux_coeff * loss_dict["L_aux"]).mean(dim=0).sum()
    return SAEOutput(loss_dict=loss_dict, loss=loss, acts=acts, h_reconstructed=h_reconstructed)
