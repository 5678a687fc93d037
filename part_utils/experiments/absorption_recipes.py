"""Part 8's recipe check: two architectures retrained at one setting with one piece of the recipe changed."""

from collections.abc import Mapping, Sequence
from typing import Any

from part_utils.experiments.absorption_comparison import AbsorptionComparison, table_columns
from part_utils.plotting.tables import rows_table
from part_utils.sae_registry import setting_label

RECIPE_COLUMNS = table_columns("l0", "fvu", "dead", "absorption", "absorption_fraction")


def compare_recipes(
    comparison: AbsorptionComparison,
    variants: Mapping[str, tuple[str, Mapping[str, Any]]],
    names: Sequence[str],
    setting: float,
    *,
    title: str,
) -> None:
    """`variants`: description → (slug in the results file, changes to `train_sae`'s arguments; none: the main
    SAEs). For each variant, in how many seeds `names[1]` absorbs less than `names[0]`, and a table of both;
    records `recipe.*`."""
    base, other = names
    rows = []
    for variant, (slug, changes) in variants.items():
        for name in names:
            if changes:
                sae, _ = comparison.train_sae(name, [setting], **changes)
                row = comparison.evaluate_sae(name, sae, [setting], prefix=f"recipe.{slug}.")[0]
            else:
                row = comparison.row_of(name, setting)
            rows.append({**row, "setting": f"{setting_label(name, setting)}, {variant}"})
    for variant, (slug, _) in variants.items():
        by_name = {row["architecture"]: row for row in rows if row["setting"].endswith(variant)}
        holding = int((by_name[other]["seeds"]["absorption"] < by_name[base]["seeds"]["absorption"]).sum())
        comparison.results.record(f"recipe.{slug}.seeds_holding", holding)
        print(f"{variant:<38} {other} absorbs less than {base} in {holding} of {comparison.n_per_setting} seeds")
    rows_table(rows, RECIPE_COLUMNS, title=title).show()
