"""What Part 8's text reads off the comparison's rows: the parent latents' firing, absorption per child,
Matryoshka against BatchTopK at the same k, its first prefix, the choice of each parent's latent, and
every architecture side by side."""

from collections.abc import Mapping, Sequence

from part_utils.experiments.absorption_comparison import AbsorptionComparison, table_columns
from part_utils.hierarchy import feature_labels
from part_utils.plotting.absorption import plot_absorption_by_parent, plot_parent_latent_firing
from part_utils.plotting.pareto import plot_pareto
from part_utils.plotting.tables import html_table, mean_sd, rows_table

SAME_K_COLUMNS = [*table_columns("l0", "absorption", "fvu"), ("dead latents", "dead", ".1f")]
EVERY_ARCHITECTURE_COLUMNS = table_columns(
    *("l0", "fvu", "gamma", "dead", "mmcs", "hungarian", "recall"),
    *("absorption", "absorption_all_inputs", "absorption_fraction"),
)


def show_parent_latent_firing(comparison: AbsorptionComparison, chosen: Mapping[str, float]) -> None:
    """For each chosen (architecture, setting): how often its parents' latents fire, and its absorption per parent."""
    seen = {comparison.label(name, value): comparison.row_of(name, value) for name, value in chosen.items()}
    for label, row in seen.items():
        print(
            f"{label:<16} mean absorption {row['absorption']:.3f}; the parent's latent fires on"
            f" {row['fires_alone'].mean():.2f} of parent-alone inputs and {row['fires_with_child'].mean():.2f}"
            " of inputs with a child"
        )
    plot_parent_latent_firing(
        {label: (row["fires_alone"], row["fires_with_child"]) for label, row in seen.items()},
        title="How often each parent's latent fires: parent alone, and parent with a child",
    ).show()
    by_parent = {label: row["absorption_per_parent"] for label, row in seen.items()}
    plot_absorption_by_parent(by_parent, title="Absorption rate per parent").show()


def show_absorption_per_child(comparison: AbsorptionComparison, name: str, setting: float) -> None:
    """Every child's absorption rate in every seed of one setting, and how many rates are near 0, near 1 or
    in between; records `per_child.*`."""
    per_child = comparison.row_of(name, setting)["absorption_per_child_by_instance"]  # [instances, parents, children]
    instances, n_parents, n_children = per_child.shape
    children = ", ".join(str(child) for child in range(n_children))
    html_table(
        {
            "instance": [str(instance) for instance in range(instances)],
            **{
                f"P{p} (children {children})": [
                    " / ".join(f"{rate:.2f}" for rate in per_child[instance, p]) for instance in range(instances)
                ]
                for p in range(n_parents)
            },
        },
        title=f"{comparison.label(name, setting)}: the absorption rate of each child, per instance",
    ).show()
    results = comparison.results
    low, high = results.record("per_child.low", 0.05), results.record("per_child.high", 0.75)
    counts = {"below": int((per_child < low).sum()), "above": int((per_child > high).sum())}
    counts["between"] = per_child.numel() - counts["below"] - counts["above"]
    for key, count in counts.items():
        results.record(f"per_child.{key}", count)
    results.record("per_child.rates", per_child.numel())
    print(
        f"of the {per_child.numel()} rates, {counts['below']} are below {low}, {counts['above']} above {high}"
        f" and {counts['between']} in between"
    )


def compare_at_same_k(comparison: AbsorptionComparison, base: str, other: str) -> None:
    """`other` against `base` at each of `other`'s settings, seed by seed (instance i of both SAEs saw the same
    seed, data and initial weights); records `ordering.*`."""
    settings, n = comparison.settings[other], comparison.n_per_setting
    pairs = [(comparison.row_of(base, k), comparison.row_of(other, k)) for k in settings]
    holding = [int((o["seeds"]["absorption"] < b["seeds"]["absorption"]).sum()) for b, o in pairs]
    html_table(
        {
            "k": [f"{k:g}" for k in settings],
            **{
                f"{column} ({base} / {other})": [f"{mean_sd(b, key, fmt)} / {mean_sd(o, key, fmt)}" for b, o in pairs]
                for column, key, fmt in SAME_K_COLUMNS
            },
            f"seeds with less absorption ({other})": [f"{count}/{n}" for count in holding],
        },
        title=(
            f"{base} against {other} at the same k (d_sae {comparison.d_sae}; mean ± standard deviation over {n} seeds)"
        ),
    ).show()
    for k, (b, o), count in zip(settings, pairs, holding):
        comparison.results.record(f"ordering.k{k:g}.seeds_holding", count)
        comparison.results.record(f"ordering.k{k:g}.fvu_ratio", o["fvu"] / b["fvu"])
    by_parent = {
        comparison.label(name, k): comparison.row_of(name, k)["absorption_per_parent"]
        for k in settings
        for name in (base, other)
    }
    plot_absorption_by_parent(by_parent, title=f"Absorption rate per parent, {base} and {other}").show()


def show_first_prefix(comparison: AbsorptionComparison, name: str, setting: float) -> None:
    """For each seed of one setting of a Matryoshka SAE: the feature each first-prefix latent matches best,
    and the absorption rate of each parent."""
    sae = comparison.trained[name]
    report = comparison.definitions["absorption_report"](sae, comparison.features(sae, comparison.eval_samples))
    labels = feature_labels(sae.model.cfg.n_parents, sae.model.cfg.n_children)
    first_prefix = sae.cfg.prefix_sizes[0]
    for instance in comparison.seeds_of(name, setting):
        matches = report["cosine"][instance, :first_prefix].argmax(dim=-1)
        print(
            f"instance {instance}: first prefix matches {', '.join(labels[feature] for feature in matches)};"
            f" absorption per parent {' '.join(f'{rate:.2f}' for rate in report['absorption'][instance])}"
        )


def compare_parent_latent_rules(comparison: AbsorptionComparison, names: Sequence[str]) -> None:
    """Mean absorption with each parent's latent chosen by firing (section 3's rule) and by the highest decoder
    cosine, over every setting and seed; records `rule.*`."""
    definitions, results = comparison.definitions, comparison.results
    for name in names:
        sae = comparison.trained[name]
        n_parents = sae.model.cfg.n_parents
        features = comparison.features(sae, comparison.eval_samples)
        acts = definitions["inference_acts"](sae, features)
        parent_cosine = definitions["decoder_cosines"](sae)[..., :n_parents]
        by_firing, by_cosine = definitions["parent_latents"](acts, features, parent_cosine), parent_cosine.argmax(dim=1)
        never_fires = ~(acts > 0).any(dim=0).gather(-1, by_cosine)  # [inst, parents]
        rates = {
            rule: definitions["absorption_rate"](acts, features, parent_cosine, chosen_latent).mean(dim=-1)
            for rule, chosen_latent in (("firing", by_firing), ("cosine", by_cosine))
        }
        for rule, rate in rates.items():
            results.record(f"rule.{name}.{rule}", rate)
        results.record(f"rule.{name}.never_fires", int(never_fires.sum()))
        results.record("rule.parents", never_fires.numel())
        print(
            f"{name:<10} mean absorption with ℓ_p chosen by firing: {rates['firing'].mean():.3f},"
            f" by highest cosine: {rates['cosine'].mean():.3f}"
            f" (the highest-cosine latent never fires for {int(never_fires.sum())} of {never_fires.numel()} parents)"
        )


def show_every_architecture(comparison: AbsorptionComparison) -> None:
    """The table and the Pareto plot of every architecture's main SAE."""
    rows = comparison.main_rows()
    rows_table(
        rows,
        EVERY_ARCHITECTURE_COLUMNS,
        title=(
            f"Every architecture on the hierarchical data, d_sae {comparison.d_sae}"
            f" (mean ± standard deviation over {comparison.n_per_setting} seeds)"
        ),
    ).show()
    plot_pareto(rows, title="Reconstruction and absorption against sparsity (each point one setting)").show()
