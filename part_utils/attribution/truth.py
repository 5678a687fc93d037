"""Scoring an attribution graph against the algorithm we planted.

At output position p the model must fetch the mirrored letter x from position q and turn it into
f(x). The ground-truth path runs from the token embedding at q, through latents that stand for x
(at p or at q, in either layer), to the logit of f(x) at p. We find "the latent for letter x" by
one-to-one (Hungarian) matching of latents to letters on held-out prompts.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from part_utils.attribution.graph import AttributionGraph, normalized_adjacency, share_through, top_path
from part_utils.matching import hungarian_match

N_LETTERS = 26


def letter_f1(
    fires: Bool[Tensor, "tokens layer d_latent"], letters: Int[Tensor, " tokens"]
) -> Float[Tensor, "layer letter d_latent"]:
    """F1 score of "latent fires" as a detector of "the token's letter is this one", per layer."""
    is_letter = torch.nn.functional.one_hot(letters, N_LETTERS).float()  # [tokens, letter]
    fires = fires.float()
    both = torch.einsum("tl,tnd->nld", is_letter, fires)
    precision = both / fires.sum(dim=0)[:, None, :].clamp_min(1)
    recall = both / is_letter.sum(dim=0)[None, :, None].clamp_min(1)
    return 2 * precision * recall / (precision + recall).clamp_min(1e-12)


@dataclass(frozen=True)
class LetterMatch:
    latent: Int[Tensor, "layer pos letter"]
    """The latent matched to each letter, per layer and position."""
    f1: Float[Tensor, "layer pos letter"]
    """How well that latent detects the letter (1 = fires exactly when the letter is there)."""


def match_letters(
    fires: Bool[Tensor, "prompts pos layer d_latent"], letters: Int[Tensor, "prompts pos"]
) -> LetterMatch:
    """Per layer and position, each letter's latent: the one-to-one matching with the largest total F1."""
    matched = [hungarian_match(letter_f1(fires[:, pos], letters[:, pos])) for pos in range(fires.shape[1])]
    return LetterMatch(
        latent=torch.stack([latent for _, latent in matched], dim=1), f1=torch.stack([f1 for f1, _ in matched], dim=1)
    )


@dataclass(frozen=True)
class TruthScore:
    share: float
    """Share of the logit's influence that flows from the mirrored token through letter-x latents only."""
    top_path_true: bool
    """Whether the graph's strongest path from the logit back to an input is the ground-truth path."""
    top_path_structural: bool
    """Looser: the strongest path runs from the mirrored token through latents at the output or source position."""
    top_path: list[int]


def truth_latents(
    graph: AttributionGraph, match: LetterMatch, letter: int, positions: tuple[int, ...], min_f1: float
) -> list[int]:
    """Graph nodes of latents matched to `letter` (with F1 at least `min_f1`) at the given positions."""
    return [
        i
        for i, node in enumerate(graph.nodes)
        if node.kind == "latent"
        and node.pos in positions
        and match.latent[node.layer, node.pos, letter] == node.index
        and match.f1[node.layer, node.pos, letter] >= min_f1
    ]


def score_position(
    graph: AttributionGraph, match: LetterMatch, output_pos: int, source_pos: int, letter: int, min_f1: float = 0.5
) -> TruthScore:
    """The truth score of the logit node at `output_pos`, whose mirrored letter `letter` sits at `source_pos`."""
    normalized = normalized_adjacency(graph.adjacency)
    logit = next(i for i, node in enumerate(graph.nodes) if node.kind == "logit" and node.pos == output_pos)
    source = next(i for i, node in enumerate(graph.nodes) if node.kind == "embedding" and node.pos == source_pos)
    via = truth_latents(graph, match, letter, (output_pos, source_pos), min_f1)
    share = share_through(normalized, logit, source, torch.tensor(via, dtype=torch.long))
    path = top_path(normalized, logit)
    through_latents = len(path) >= 3 and path[-1] == source
    is_true = through_latents and all(node in via for node in path[1:-1])
    structural = through_latents and all(
        graph.nodes[node].kind == "latent" and graph.nodes[node].pos in (output_pos, source_pos) for node in path[1:-1]
    )
    return TruthScore(share=share, top_path_true=is_true, top_path_structural=structural, top_path=path)
