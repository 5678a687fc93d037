"""Part 8's wider and superposed SAEs: the same architectures trained with more (or fewer) latents, or on
features squeezed into fewer dimensions, measured like the main ones."""

from collections.abc import Sequence

from torch import nn

from part_utils.experiments.absorption_comparison import AbsorptionComparison, table_columns
from part_utils.plotting.tables import rows_table

WIDTH_COLUMNS = table_columns("l0", "fvu", "dead", "absorption", "latents_per_parent", "mixed_latents")
SUPERPOSED_COLUMNS = WIDTH_COLUMNS[:4]


def widen(
    comparison: AbsorptionComparison, names: Sequence[str], settings: Sequence[float], widths: Sequence[int]
) -> dict[tuple[str, int], nn.Module]:
    """Train each architecture at `settings` with each of `widths` latents, add the rows to the comparison's,
    and show them beside the main SAEs'. Returns every (architecture, width)'s SAE, widths in increasing order."""
    wide = {(name, comparison.d_sae): comparison.trained[name] for name in names}
    for width in widths:
        for name in names:
            wide[(name, width)], _ = comparison.train_sae(name, settings, width)
            comparison.rows[name] += comparison.evaluate_sae(name, wide[(name, width)], settings)
    every_width = sorted({width for _, width in wide})
    n_features = wide[(names[0], every_width[0])].model.cfg.n_features
    rows = [comparison.row_of(name, k, width) for k in settings for name in names for width in every_width]
    listed = f"{', '.join(str(width) for width in every_width[:-1])} and {every_width[-1]}"
    rows_table(rows, WIDTH_COLUMNS, title=f"Widening the SAE: {listed} latents for {n_features} features").show()
    return {(name, width): wide[(name, width)] for name in names for width in every_width}


def in_superposition(
    comparison: AbsorptionComparison, names: Sequence[str], settings: Sequence[float], d_hidden: int
) -> None:
    """Train and measure each architecture on the same features in `d_hidden` dimensions; records the rows
    under `superposed.`."""
    superposed = []
    for name in names:
        sae, _ = comparison.train_sae(name, settings, d_hidden=d_hidden)
        superposed += comparison.evaluate_sae(name, sae, settings, prefix="superposed.")
    n_features = sae.model.cfg.n_features
    title = f"{n_features} features in {d_hidden} dimensions, d_sae {comparison.d_sae}"
    rows_table(superposed, SUPERPOSED_COLUMNS, title=title).show()
