"""Part 5's comparison of SAE architectures, summarised: one row per architecture and setting with each
metric's mean and spread over seeds, recorded for the text, shown as a table and a Pareto plot."""

from collections.abc import Mapping, Sequence
from typing import Any

from part_utils.plotting.pareto import plot_pareto
from part_utils.plotting.tables import rows_table
from part_utils.results import Results

SUMMARISED = ("l0", "fvu", "gamma", "dead", "mmcs", "hungarian", "recall")

SettingReport = dict[str, Any]
"""One setting of a sweep: its label ("λ=0.1") and each metric of `variant_report` for its seeds."""

COLUMNS = [
    ("L0", "l0", ".3f"),
    ("FVU", "fvu", ".4f"),
    ("γ", "gamma", ".3f"),
    ("dead", "dead", ".2f"),
    ("MMCS", "mmcs", ".3f"),
    ("Hungarian", "hungarian", ".3f"),
    ("recall", "recall", ".3f"),
]
PARETO_TITLE = (
    "Reconstruction error against sparsity (lower left is better)"
    "<br><sup>each point one setting (λ or k), bars one standard deviation over seeds</sup>"
)


def count_recovered(report: Mapping[str, Any], n_features: int) -> int:
    """Instances that found every feature at cosine ≥ 0.99 and have no dead latent."""
    return int(((report["recovered"] == n_features) & (report["dead"] == 0)).sum())


def summarise(reports: Mapping[str, Sequence[SettingReport]], n_features: int) -> list[dict[str, Any]]:
    """One row per architecture and setting: each metric's mean and standard deviation over the seeds."""
    rows = []
    for name, settings in reports.items():
        for report in settings:
            row = {
                "architecture": name,
                "setting": report["setting"],
                "recovered": count_recovered(report, n_features),
                "seeds": len(report["l0"]),
            }
            for key in SUMMARISED:
                values = report[key].double()
                row[key], row[f"{key}_sd"] = values.mean().item(), (values.std().item() if len(values) > 1 else 0.0)
            rows.append(row)
    return rows


def result_name(row: Mapping[str, Any]) -> str:
    """The row's name in the results file, e.g. `JumpReLU.λ=0.1` → `JumpReLU.lam0.1`."""
    return f"{row['architecture'].split()[0]}.{row['setting'].replace('λ=', 'lam').replace('k=', 'k')}"


def show_summary(
    reports: Mapping[str, Sequence[SettingReport]], n_features: int, results: Results, *, n_per_setting: int, steps: int
) -> list[dict[str, Any]]:
    """Record every setting's per-seed metrics, then show the table and the Pareto plot; returns the rows."""
    summary = summarise(reports, n_features)
    for name, settings in reports.items():
        for report, row in zip(settings, [row for row in summary if row["architecture"] == name]):
            for key in SUMMARISED:
                results.record(f"{result_name(row)}.{key}", report[key])
            results.record(f"{result_name(row)}.recovered", row["recovered"])
    results.record("settings.seeds", n_per_setting)
    results.record("settings.comparison_steps", steps)
    rows_table(
        summary,
        COLUMNS,
        labels=("architecture", "setting"),
        after={"recovered": lambda row: f"{row['recovered']}/{row['seeds']}"},
        title=f"Every architecture on the same toy data (mean ± standard deviation over {n_per_setting} seeds)",
    ).show()
    panels = [("fvu", True, "fraction of variance unexplained")]
    plot_pareto(summary, panels=panels, log_x=True, title=PARETO_TITLE).show()
    return summary
