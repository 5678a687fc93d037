"""How much an edge between two latents depends on the prompt.

Divide an edge by its source's activation and what is left is the source's direct effect per unit:
for a transcoder, a product of weights, frozen attention patterns and LayerNorm scales; for an SAE
on an MLP's output, the same times the MLP's Jacobian at that prompt. Collect that per-unit effect
for the same pair of latents over many prompts and compare its spread with its size.
"""

import statistics
from collections import defaultdict

from part_utils.attribution.graph import AttributionGraph

LatentPair = tuple[int, int, int, int, int]
"""(source layer, source latent, target layer, target latent, position)."""


def unit_effects(
    graph: AttributionGraph, into: dict[LatentPair, list[float]] | None = None
) -> dict[LatentPair, list[float]]:
    """Each same-position latent-to-latent edge of `graph` divided by its source's activation, added to `into`."""
    collected = into if into is not None else defaultdict(list)
    latents = [i for i, node in enumerate(graph.nodes) if node.kind == "latent"]
    for target in latents:
        for source in latents:
            weight = graph.adjacency[target, source].item()
            t, s = graph.nodes[target], graph.nodes[source]
            if weight != 0 and s.pos == t.pos and s.layer < t.layer:
                collected[(s.layer, s.index, t.layer, t.index, t.pos)].append(weight / s.activation)
    return collected


def median_relative_spread(effects: dict[LatentPair, list[float]], min_prompts: int = 5) -> float:
    """Median over latent pairs seen on at least `min_prompts` prompts of std / |mean| of the per-unit effect."""
    spreads = [
        statistics.pstdev(values) / abs(statistics.fmean(values))
        for values in effects.values()
        if len(values) >= min_prompts and statistics.fmean(values) != 0
    ]
    return statistics.median(spreads) if spreads else float("nan")
