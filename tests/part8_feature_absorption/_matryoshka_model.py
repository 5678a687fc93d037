"""The float64 model that `matryoshka_forward` checks against: the text's `MatryoshkaToySAE.forward` and each
misreading of it, reference SAEs to run it on, and inputs kept clear of every top-k tie."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from part_utils.device import get_device
from part_utils.reference import part5_sae_variants as part5
from part_utils.reference import part8_feature_absorption as reference
from tests.checking import KINK_MARGIN

M_INST, M_D_IN, M_BATCH = 3, 4, 16
M_PARAMETERS = ("W_enc", "_W_dec", "b_enc", "b_dec")


@dataclass
class MatryoshkaCase:
    description: str | None
    sae: Any
    h: Tensor
    training: bool = True
    before: Any = None  # a copy of the SAE as it was before the learner's forward ran (counters, threshold)


@dataclass(frozen=True)
class MatryoshkaVariant:
    """The text's forward (the defaults), or one misreading of it, computed in float64."""

    prefixes: str = "nested"  # nested, groups, all latents, group sizes, one short, aliased
    bias: str = "every"  # every, last, none, per group (once more with every group added)
    reduce: str = "sum"  # sum, mean
    topk: str = "once"  # once, per prefix, per group, none, per input
    empty_prefix: bool = False
    squared: str = "mean"  # mean, sum (over d_in)
    decoder: str = "normalised"  # normalised, raw
    aux_from: str = "full"  # full, first
    dead_after_counting: bool = False
    dead: str = ">="  # >=, > (the comparison with dead_after_steps)
    aux_input: str = "pre_acts"  # pre_acts, acts (what AuxK ranks the dead latents by)
    aux_in_dict: str = "L_aux"  # L_aux, weighted (loss_dict["L_aux"] already multiplied by aux_coeff)
    coefficient_on: str = "aux"  # aux, matryoshka (aux_coeff multiplies L_matryoshka instead of L_aux)
    dict_matryoshka: str = "every prefix"  # every prefix, before last (loss_dict's L_matryoshka without the full one)
    with_aux: bool = True
    aux_coefficient: bool = True
    loss_terms: str = "matryoshka"  # matryoshka, full only, both
    batch: str = "mean"  # mean, sum
    instances: str = "sum"  # sum, mean
    returned: str = "full"  # full, first (the h_reconstructed returned)
    cut: str | None = None  # where the graph is cut: acts, decoder, b_dec (in the prefixes before the last), prefixes


@dataclass
class MatryoshkaTerms:
    acts: Tensor
    h_reconstructed: Tensor
    L_reconstruction: Tensor
    L_matryoshka: Tensor
    L_aux: Tensor
    loss: Tensor
    steps_since_fired: Tensor
    threshold: Tensor


def _matryoshka_sae(
    *,
    n_inst: int = M_INST,
    d_sae: int = 9,
    prefix_sizes: Sequence[int] = (2, 5, 9),
    k: Sequence[float] = (1.5, 2.0, 1.25),
    dead: Sequence[Sequence[int]] = ((0, 7), (1, 3, 6, 8), ()),
    at_the_boundary: Sequence[Sequence[int]] = (),
) -> Any:
    """A reference Matryoshka SAE with random weights, varied decoder norms, non-zero biases, some dead latents and
    a threshold."""
    hierarchy = reference.HierarchyConfig(n_inst=n_inst, n_parents=1, n_children=M_D_IN - 1)
    data = reference.HierarchicalToyData(hierarchy, device=get_device())
    cfg = reference.MatryoshkaToySAEConfig(
        n_inst=n_inst, d_in=M_D_IN, d_sae=d_sae, k=list(k), k_aux=2, prefix_sizes=list(prefix_sizes)
    )
    sae = reference.MatryoshkaToySAE(cfg, data)
    with torch.no_grad():
        sae.W_enc.normal_()
        directions = torch.randn_like(sae._W_dec)  # drawn before the norms
        sae._W_dec.copy_(directions * (torch.rand(n_inst, d_sae, 1, device=sae._W_dec.device) * 2 + 0.3))
        sae.b_enc.normal_(0.0, 0.5)
        sae.b_dec.normal_(0.0, 0.5)
        sae.steps_since_fired.copy_(torch.randint(0, 60, sae.steps_since_fired.shape))
        for inst, latents in enumerate(dead):
            long_dead = sae.cfg.dead_after_steps + torch.randint(0, 50, (len(latents),))
            sae.steps_since_fired[inst, list(latents)] = long_dead
        for inst, latents in enumerate(at_the_boundary):  # dead from exactly dead_after_steps on (>=)
            sae.steps_since_fired[inst, list(latents)] = sae.cfg.dead_after_steps
        sae.threshold.copy_(torch.rand(n_inst) * 0.5 + 0.3)
    return sae


def _float64_parameters(sae: Any) -> dict[str, Tensor]:
    return {name: getattr(sae, name).detach().cpu().double().clone().requires_grad_(True) for name in M_PARAMETERS}


def _batch_topk(pre_acts: Tensor, k: float) -> Tensor:
    """BatchTopK of one instance's [batch, latents], keeping at most every value (a small group may hold fewer than
    k·batch)."""
    flat = F.relu(pre_acts).flatten()
    top = flat.topk(min(round(k * pre_acts.shape[0]), flat.numel()))
    return torch.zeros_like(flat).scatter(0, top.indices, top.values).reshape(pre_acts.shape)


def _per_instance_batch_topk(pre_acts: Tensor, k: Sequence[float]) -> Tensor:
    return torch.stack([_batch_topk(pre_acts[:, i], k_i) for i, k_i in enumerate(k)], dim=1)


def _per_instance_topk(pre_acts: Tensor, k: Sequence[float]) -> Tensor:
    return torch.cat([part5.topk_activation(pre_acts[:, [i]], max(1, int(k_i))) for i, k_i in enumerate(k)], dim=1)


def _k_list(sae: Any) -> list[float]:
    k = sae.cfg.k
    return list(k) if isinstance(k, list) else [k] * sae.cfg.n_inst


def _decode(latents: Tensor, W: Tensor) -> Tensor:
    return torch.einsum("bis,isd->bid", latents, W)


def _auxk(sae: Any, pre_acts: Tensor, residual: Tensor, W: Tensor, dead: Tensor) -> Tensor:
    k_aux = min(sae.cfg.k_aux, pre_acts.shape[-1])
    top = pre_acts.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1)
    aux_acts = torch.zeros_like(pre_acts).scatter(-1, top.indices, F.relu(top.values))
    scale = (dead.sum(dim=-1).double() / sae.cfg.k_aux).clamp(max=1.0)
    return (_decode(aux_acts, W) - residual).pow(2).mean(dim=-1) * scale


def _threshold_after(sae: Any, acts: Tensor) -> Tensor:
    """BatchTopK's running threshold after one update with `acts` (Part 5's rule)."""
    old = sae.threshold.detach().cpu().double()
    smallest = acts.detach().masked_fill(acts.detach() <= 0, torch.inf).amin(dim=(0, 2))
    smallest = torch.where(torch.isinf(smallest), old, smallest)
    momentum = sae.threshold_momentum
    return torch.where(torch.isnan(old), smallest, momentum * old + (1 - momentum) * smallest)


def _prefix_slices(sizes: Sequence[int], how: str) -> list[tuple[int, int]]:
    """(first latent, end) of every prefix's reconstruction, as each reading of `prefix_sizes` builds it."""
    ends = list(sizes)
    if how == "group sizes":
        ends = [min(end, sizes[-1]) for end in torch.tensor(sizes).cumsum(0).tolist()]
    if how == "groups":
        return list(zip([0, *ends[:-1]], ends))
    if how in ("all latents", "aliased"):  # aliased: one tensor updated in place, so every entry is the last
        return [(0, sizes[-1])] * len(sizes)
    if how == "one short":
        return [(0, end - 1) for end in ends]
    return [(0, end) for end in ends]


def _variant_acts(sae: Any, pre_acts: Tensor, training: bool, v: MatryoshkaVariant) -> Tensor:
    """The activations `v` computes: the threshold at inference, else its reading of BatchTopK."""
    sizes, k = list(sae.cfg.prefix_sizes), _k_list(sae)
    if not training:
        threshold = sae.threshold.detach().cpu().double()
        return pre_acts * (pre_acts > threshold[:, None]).double()
    if v.topk == "none":
        return F.relu(pre_acts)
    if v.topk == "per input":
        return _per_instance_topk(pre_acts, k)
    if v.topk == "per group":
        groups = zip([0, *sizes[:-1]], sizes)
        return torch.cat([_per_instance_batch_topk(pre_acts[..., start:end], k) for start, end in groups], dim=-1)
    return _per_instance_batch_topk(pre_acts, k)


def _variant_reconstructions(
    sae: Any, p: Mapping[str, Tensor], W: Tensor, pre_acts: Tensor, acts: Tensor, training: bool, v: MatryoshkaVariant
) -> list[Tensor]:
    """Every prefix's reconstruction as `v` builds it, the full dictionary's last."""
    sizes, k = list(sae.cfg.prefix_sizes), _k_list(sae)
    reconstructions = []
    slices = _prefix_slices(sizes, v.prefixes)
    for index, (start, end) in enumerate(slices):
        last = index == len(slices) - 1
        keep = lambda tensor, place, last=last: tensor.detach() if v.cut == place and not last else tensor  # noqa: E731
        latents = acts[..., start:end]
        if v.topk == "per prefix" and training and not last:
            latents = _per_instance_batch_topk(pre_acts[..., start:end], k)
        bias = p["b_dec"] if v.bias == "every" or (v.bias == "last" and last) else torch.zeros_like(p["b_dec"])
        if v.bias == "per group":
            bias = (index + 1) * p["b_dec"]
        reconstructions.append(_decode(keep(latents, "acts"), keep(W[:, start:end], "decoder")) + keep(bias, "b_dec"))
    return reconstructions


def _matryoshka_terms(
    sae: Any, p: Mapping[str, Tensor], h: Tensor, training: bool, v: MatryoshkaVariant = MatryoshkaVariant()
) -> MatryoshkaTerms:
    """What `v` gives on float64 copies `p` of the SAE's parameters (differentiable in them)."""
    x = h.detach().cpu().double()
    if v.decoder == "raw":
        W = p["_W_dec"]
    else:
        W = p["_W_dec"] / (p["_W_dec"].norm(dim=-1, keepdim=True) + sae.cfg.weight_normalize_eps)
    pre_acts = torch.einsum("bid,ids->bis", x - p["b_dec"], p["W_enc"]) + p["b_enc"]
    acts = _variant_acts(sae, pre_acts, training, v)
    reconstructions = _variant_reconstructions(sae, p, W, pre_acts, acts, training, v)

    def error(rec: Tensor) -> Tensor:
        return (rec - x).pow(2).mean(dim=-1) if v.squared == "mean" else (rec - x).pow(2).sum(dim=-1)

    prefix_losses = [error(rec) for rec in reconstructions]
    if v.cut == "prefixes":
        prefix_losses = [loss.detach() for loss in prefix_losses[:-1]] + prefix_losses[-1:]
    if v.empty_prefix:
        prefix_losses = [error(p["b_dec"].expand_as(x)), *prefix_losses]
    stacked = torch.stack(prefix_losses)
    L_matryoshka = stacked.sum(dim=0) if v.reduce == "sum" else stacked.mean(dim=0)
    full = reconstructions[-1]
    fired = (acts > 0).any(dim=0)
    steps = sae.steps_since_fired.detach().cpu()
    counted = (steps + 1).masked_fill(fired, 0) if training else steps
    read = counted if v.dead_after_counting else steps
    dead = read > sae.cfg.dead_after_steps if v.dead == ">" else read >= sae.cfg.dead_after_steps
    aux_target = reconstructions[0] if v.aux_from == "first" else full
    L_aux = _auxk(sae, acts if v.aux_input == "acts" else pre_acts, (x - aux_target).detach(), W, dead)
    main = {"matryoshka": L_matryoshka, "full only": error(full), "both": L_matryoshka + error(full)}[v.loss_terms]
    coefficient = sae.cfg.aux_coeff if v.aux_coefficient else 1.0
    if v.coefficient_on == "matryoshka":
        main, coefficient = sae.cfg.aux_coeff * main, 1.0
    per_input = main + coefficient * L_aux * float(v.with_aux)
    per_instance = per_input.mean(dim=0) if v.batch == "mean" else per_input.sum(dim=0)
    loss = per_instance.sum() if v.instances == "sum" else per_instance.mean()
    returned = reconstructions[0] if v.returned == "first" else full
    threshold_after = _threshold_after(sae, acts) if training else sae.threshold.detach().cpu().double()
    if v.dict_matryoshka == "before last":
        L_matryoshka = stacked[:-1].sum(dim=0)
    if v.aux_in_dict == "weighted":
        L_aux = sae.cfg.aux_coeff * L_aux
    return MatryoshkaTerms(acts, returned, error(full), L_matryoshka, L_aux, loss, counted, threshold_after)


def _kink_distances(sae: Any, h: Tensor, training: bool) -> list[Tensor]:
    """Distances that must all exceed KINK_MARGIN for float32 and float64 to fire and pick the same latents."""
    p = {name: tensor.detach() for name, tensor in _float64_parameters(sae).items()}
    pre_acts = torch.einsum("bid,ids->bis", h.double() - p["b_dec"], p["W_enc"]) + p["b_enc"]
    if not training:
        return [pre_acts - sae.threshold.detach().cpu().double()[:, None]]
    distances = [pre_acts]
    sizes, k = list(sae.cfg.prefix_sizes), _k_list(sae)
    for start, end in [(0, sizes[-1]), *zip([0, *sizes[:-1]], sizes), *[(0, size) for size in sizes]]:
        for inst, k_i in enumerate(k):
            kept = round(k_i * h.shape[0])
            ordered = F.relu(pre_acts[:, inst, start:end]).flatten().sort(descending=True).values
            if kept < len(ordered) and ordered[kept - 1] > 0:  # past the positive values every choice keeps zeros
                distances.append((ordered[kept - 1] - ordered[kept]).reshape(1))
    dead = sae.steps_since_fired.detach().cpu() >= sae.cfg.dead_after_steps
    for inst in range(pre_acts.shape[1]):
        among = pre_acts[:, inst, dead[inst]]
        if among.shape[-1] > sae.cfg.k_aux:
            ordered = among.sort(dim=-1, descending=True).values
            distances.append(ordered[:, sae.cfg.k_aux - 1] - ordered[:, sae.cfg.k_aux])
    return distances


def _clear_inputs(sae: Any, batch: int, training: bool) -> Tensor:
    for _ in range(200):
        h = torch.randn(batch, sae.cfg.n_inst, M_D_IN) * 1.5
        if all(bool((distance.abs() > KINK_MARGIN).all()) for distance in _kink_distances(sae, h, training)):
            return h.to(sae.W_enc.device)
    raise RuntimeError("could not draw Matryoshka inputs clear of top-k ties")


def _matryoshka_cases() -> list[MatryoshkaCase]:
    main = _matryoshka_sae(at_the_boundary=((), (), (4,)))
    evaluation = _matryoshka_sae()
    single = _matryoshka_sae(n_inst=1, d_sae=6, prefix_sizes=(6,), k=(2.0,), dead=((1, 4),))
    first_of_one = _matryoshka_sae(d_sae=7, prefix_sizes=(1, 3, 7), k=(2.0, 1.25, 2.5), dead=((), (2, 5), (0, 1, 6)))
    # The inputs are drawn after every SAE, in this order.
    return [
        MatryoshkaCase(None, main, _clear_inputs(main, M_BATCH, True)),
        MatryoshkaCase(
            "In inference mode (model.eval(), no gradients)",
            evaluation,
            _clear_inputs(evaluation, M_BATCH, False),
            training=False,
        ),
        MatryoshkaCase(
            "With one instance, one prefix (the whole dictionary) and a batch of one",
            single,
            _clear_inputs(single, 1, True),
        ),
        MatryoshkaCase("With prefix sizes [1, 3, 7]", first_of_one, _clear_inputs(first_of_one, 12, True)),
    ]
